"""Data parallelism on CPU (gloo): 2 processes with FSDP2 (ModelParallelStrategy) or DDP follow the
single-process run with gradient accumulation 2 (the same global batch) step for step.

This file is also the worker script: `python test_sft_distributed.py {fsdp2,ddp} OUT.json` runs one
2-process fit (Lightning launches the second rank by re-running the command) and writes rank 0's
per-step metrics to OUT.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.distributed.tensor import DTensor

from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.models.loading import load_policy
from ring_lightning.modules.sft import SFTModule

STEPS = 3
REPO = Path(__file__).resolve().parents[3]
MODEL = {"fsdp2": "bailing-tiny", "ddp": "qwen3-moe-tiny"}


class Recorder(SFTModule):
    def on_fit_start(self):
        self.history = []

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.history.append({k: self.last_step_metrics[k] for k in ("train/loss", "train/loss_tokens",
                                                                      "train/grad_norm", "train/sft_tokens_seen")})


def fit(strategy: str, model: str, export_dir: Path | None = None) -> dict:
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    data = SFTDataModule(train=["synthetic:mixed"], val=["synthetic:mixed"], micro_batch_tokens=128,
                         shuffle_buffer=0, synthetic_train_rows=40, synthetic_val_rows=5)
    # FSDP2 also recomputes activations (activation checkpointing must not change the math)
    module = Recorder(model=model, seed=0, lr=1e-2, activation_checkpointing=strategy == "fsdp2")
    kwargs = dict(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  gradient_clip_val=1.0, val_check_interval=STEPS, check_val_every_n_epoch=None)
    if strategy == "single":
        trainer = L.Trainer(devices=1, accumulate_grad_batches=2, **kwargs)
    else:
        dist = (ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if strategy == "fsdp2"
                else DDPStrategy(process_group_backend="gloo"))
        trainer = L.Trainer(devices=2, strategy=dist, accumulate_grad_batches=1, **kwargs)
    trainer.fit(module, datamodule=data)
    if export_dir is not None:
        module.export_hf(export_dir)  # collective under FSDP2: every rank calls, rank 0 writes
    sharded = all(isinstance(p, DTensor) for p in module.policy.parameters())
    return {"history": module.history, "sharded": sharded, "val_loss": float(trainer.callback_metrics["val/loss"]),
            "sft_tokens_seen": module.sft_tokens_seen, "world_size": trainer.world_size,
            "is_global_zero": trainer.is_global_zero, "module": module}


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_processes_follow_the_single_process_trajectory(strategy, tmp_path):
    out = tmp_path / f"{strategy}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, strategy, str(out), str(tmp_path / "hf")], cwd=REPO, env=env,
                          timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    ref = fit("single", MODEL[strategy])
    assert got["world_size"] == 2 and len(got["history"]) == len(ref["history"]) == STEPS
    assert got["sharded"] == (strategy == "fsdp2") and not ref["sharded"]
    for step, (a, b) in enumerate(zip(got["history"], ref["history"])):
        assert a["train/loss_tokens"] == b["train/loss_tokens"], step
        assert a["train/sft_tokens_seen"] == b["train/sft_tokens_seen"], step
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5), step
        assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4), step
    assert ref["history"][-1]["train/loss"] < ref["history"][0]["train/loss"]  # it trains (lr 1e-2)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    assert got["sft_tokens_seen"] == ref["sft_tokens_seen"]
    # the export gathers the shards (FSDP2) into the single-process run's weights
    exported, _ = load_policy(tmp_path / "hf")
    probe = torch.randint(3, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=probe).logits, ref["module"].policy(input_ids=probe).logits,
                              rtol=0, atol=1e-4)


if __name__ == "__main__":
    strategy, out_path, export_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    result = fit(strategy, MODEL[strategy], export_dir)
    result.pop("module")
    if result["is_global_zero"]:
        out_path.write_text(json.dumps(result))
