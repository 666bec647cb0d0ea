"""Data parallelism is exact: 2 processes × several micro-batches each — DDP (float64) and FSDP2
through ModelParallelStrategy (float32) — take the same optimizer step as one process with one
micro-batch over the same prompts (SGD, CPU/gloo), and report the same held-out pass@k (each rank
evaluates its share of the prompts; torchmetrics sums the counts).

Each rank samples its own half of the step's prompts and trains Φ/2 tokens of them, dividing its
summed token loss by Φ/2; DDP's gradient average then equals the single-batch gradient of Σ/Φ.
The fake engine's samples depend only on the prompt, so both layouts see identical responses, and Φ
is the step's total token count (fixed-length responses), so both select the same tokens."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent('''
    import random, sys
    import lightning as L
    import torch
    from ring_lightning.data.rollouts.stream import PromptSource
    from ring_lightning.data.rollouts.datamodule import RolloutDataModule
    from ring_lightning.modules.rl import RLModule
    from ring_lightning.rl.objectives import C3PO
    from ring_lightning.rollout.engine import Completion
    from unit.rl_fixtures import Float64C3PO, ParityReward

    class PromptOnlyEngine:  # samples depend on the prompt only (not on rank or seed)
        def generate(self, prompts, n, sampling):
            out = []
            for p in prompts:
                group = []
                for j in range(n):
                    rng = random.Random(f"{p}-{j}")
                    toks = tuple(rng.randint(3, 200) for _ in range(10))
                    group.append(Completion(toks, tuple(-5.0 for _ in toks), " ".join(map(str, toks)), "stop"))
                out.append(group)
            return out
        def update_weights(self, named_tensors): list(named_tensors)
        def sleep(self): ...
        def wake(self): ...
        def close(self): ...

    if __name__ == "__main__":
        mode, out, precision = sys.argv[1], sys.argv[2], sys.argv[3]
        cls = Float64C3PO if precision == "64" else RLModule
        strategy = {"single": "auto", "ddp": "ddp_find_unused_parameters_true"}.get(mode)
        if mode == "fsdp2":
            from lightning.pytorch.strategies import ModelParallelStrategy
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        module = cls(model="bailing-tiny", objective=C3PO(token_budget=160, kl_coef=1e-2),
                     micro_batch_tokens=None if mode == "single" else 100,
                     optimizer=lambda params: torch.optim.SGD(params, lr=1.0), grad_clip=None,
                     router_aux_loss_coef=0.0, router_z_loss_coef=0.0, parity=False)
        held_out = {"v1": PromptSource(task="arithmetic_steps", size=3, seed=9),
                    "v2": PromptSource(task="countdown", size=2, seed=9)}
        dm = RolloutDataModule(sources={"a": PromptSource(task="arithmetic_steps", size=32)},
                               engine=PromptOnlyEngine(), reward=ParityReward(), prompts_per_step=4,
                               samples_per_prompt=4, max_response_tokens=10, val_sources=held_out,
                               eval_samples_per_prompt=4, eval_k=[2, 4], eval_batch_size=2)
        trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1 if mode == "single" else 2,
                            strategy=strategy, logger=False, num_sanity_val_steps=0,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            log_every_n_steps=1)
        trainer.fit(module, dm)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        # held-out pass@k: 5 rows over 2 ranks (3 + 2, an uneven number of steps), summed by torchmetrics
        val = {k: float(v) for k, v in trainer.validate(module, dm, verbose=False)[0].items()}
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.policy.parameters()]
        if trainer.global_rank == 0:
            flat = torch.cat([p.detach().double().flatten() for p in params])
            torch.save({"params": flat, "metrics": metrics, "val": val}, out)
''')


def test_two_ranks_with_micro_batches_equal_one_batch_ddp_and_fsdp2(tmp_path):
    script = tmp_path / "c3po_dp_run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), OMP_NUM_THREADS="1")
    results = {}
    # float64 single process vs float64 DDP; FSDP2 (ModelParallelStrategy) runs float32
    for mode, precision in (("single", "64"), ("ddp", "64"), ("fsdp2", "32")):
        out = tmp_path / f"{mode}.pt"
        proc = subprocess.run([sys.executable, str(script), mode, str(out), precision], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{mode}: " + proc.stderr[-4000:]
        results[mode] = torch.load(out)
    single = results["single"]
    for mode in ("ddp", "fsdp2"):
        m = results[mode]["metrics"]
        assert m["train/loss_tokens"] == single["metrics"]["train/loss_tokens"] == 160
        assert single["metrics"]["train/micro_batches"] == 1 and m["train/micro_batches"] >= 2
        assert m["rollout/prompts"] == single["metrics"]["rollout/prompts"] == 4
        assert results[mode]["val"] == single["val"]  # held-out metrics reduced over ranks = one process
    val = single["val"]
    assert val["val/problems"] == 5 and val["val/math/problems"] == 3 and val["val/logic/problems"] == 2
    assert 0.0 < val["val/pass@1"] < val["val/pass@4"] <= 1.0
    from ring_lightning.modules.rl import RLModule

    start_module = RLModule(model="bailing-tiny", parity=False)
    start_module.configure_model()
    start = torch.cat([p.detach().double().flatten() for p in start_module.policy.parameters()])
    update = (single["params"] - start).abs().max()
    assert update > 1e-3  # the step moved the weights
    # DDP, float64: only BailingMoe's fp32 routing rounds differently (see test_rl.py)
    diff = (single["params"] - results["ddp"]["params"]).abs().max()
    assert diff <= 1e-6 * update, float(diff / update)
    # FSDP2, float32 against the float64 reference: float32 rounding only (a wrong normaliser is O(1))
    diff = (single["params"] - results["fsdp2"]["params"]).abs().max()
    assert diff <= 1e-4 * update, float(diff / update)
