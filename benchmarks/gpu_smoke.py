"""GPU smoke test and MFU (<= 5 minutes on one GPU): SFT steps and C3PO steps at the Ring-lite-2507 shape
with fewer decoder layers, under FSDP2 (Lightning ModelParallelStrategy, bf16 compute, fp32 master
weights) with the embedded CUDA vLLM engine.

    python benchmarks/gpu_smoke.py                       # 2 layers, both parts
    python benchmarks/gpu_smoke.py --layers 4 --parts sft --peak-tflops 989

Both parts are built from the GPU configs (configs/ring_lite_2507/sft.yaml and rl_reasoning.yaml) by
`python -m ring_lightning fit` overrides: one GPU (data_parallel_size 1), preset `ring-lite-2507`
(hidden 2048, 64 routed experts top-6 + 2 shared, vocabulary 126,464) with `num_hidden_layers`
replaced, sdpa attention (no flash-attn needed), built-in synthetic data (no files), no callbacks,
logger or checkpoints. The RL part uses the config's vLLM engine settings (bf16, CUDA graphs, sleep
mode) with a smaller context, and keeps the engine-vs-trainer parity probe on (a smoke check).
Prompts use the shipped tokenizer (ids < 1105): a random-init policy generates ids over the whole
vocabulary, so responses run to max tokens and rewards are 0 — it measures speed, not learning.

Printed per part: seconds per step (median after the warm-up steps) and MFU = model FLOPs / (step
seconds x peak FLOP/s), model FLOPs = 6 x active parameters (without the input embedding) x tokens
(`benchmarks/flops.py`): SFT counts the non-padding tokens of each step; C3PO counts its Φ loss tokens
(train MFU over the training phase, which also runs the reference model's forward) and, for the
rollout, 2 x active parameters per generated token. Peak FLOP/s: dense bf16 of the GPU by name
(`flops.PEAK_TFLOPS`) or `--peak-tflops`. Without CUDA it stops at once with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.flops import ParamCount, forward_flops, mfu, peak_tflops, preset_params, train_flops  # noqa: E402

PRESET = "ring-lite-2507"


def common_args(layers: int, steps: int) -> list[str]:
    """Overrides shared by both parts: one GPU, FSDP2 over it, the preset with `layers` layers."""
    return [
        f"--model.init_args.model={PRESET}", "--model.init_args.tokenizer=null",
        f"--model.init_args.model_overrides={{num_hidden_layers: {layers}, attn_implementation: sdpa}}",
        "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy.init_args.data_parallel_size=1",
        f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
    ]


def sft_args(layers: int = 2, steps: int = 8, micro_batch_tokens: int = 16384,
             activation_checkpointing: bool = False) -> list[str]:
    """`fit` arguments of the SFT part (configs/ring_lite_2507/sft.yaml + overrides)."""
    return ["-c", str(REPO / "configs/ring_lite_2507/sft.yaml"), *common_args(layers, steps),
            "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0",
            f"--model.init_args.activation_checkpointing={str(activation_checkpointing).lower()}",
            "--data.init_args.train=[synthetic:mixed]", "--data.init_args.val=null", "--data.init_args.tokenizer=null",
            f"--data.init_args.micro_batch_tokens={micro_batch_tokens}",
            f"--data.init_args.max_length={micro_batch_tokens}",
            "--data.init_args.synthetic_train_rows=4000", "--data.init_args.num_workers=0"]


def rl_args(layers: int = 2, steps: int = 5, prompts: int = 32, samples: int = 8, max_tokens: int = 512,
            phi: int = 32768, micro_batch_tokens: int = 16384, activation_checkpointing: bool = False) -> list[str]:
    """`fit` arguments of the C3PO part (configs/ring_lite_2507/rl_reasoning.yaml + overrides)."""
    return ["-c", str(REPO / "configs/ring_lite_2507/rl_reasoning.yaml"), *common_args(layers, steps),
            f"--model.init_args.activation_checkpointing={str(activation_checkpointing).lower()}",
            f"--model.init_args.objective.init_args.token_budget={phi}", f"--model.init_args.micro_batch_tokens={micro_batch_tokens}",
            "--model.init_args.warmup_steps=0",
            "--data.init_args.sources={arithmetic: {task: arithmetic_steps, size: 2000}, "
            "countdown: {task: countdown, size: 1000}}",
            "--data.init_args.stages={reasoning: {arithmetic: 0.8, countdown: 0.2}}",
            "--data.init_args.val_sources=null", "--data.init_args.test_sources=null", "--trainer.limit_val_batches=0",
            f"--data.init_args.prompts_per_step={prompts}", f"--data.init_args.samples_per_prompt={samples}",
            f"--data.init_args.max_response_tokens={max_tokens}", "--data.init_args.max_prompt_tokens=512",
            f"--data.init_args.refill_prompts={prompts}",
            f"--data.init_args.engine.init_args.max_model_len={max_tokens + 512}",
            "--data.init_args.engine.init_args.gpu_memory_utilization=0.3",
            "--data.init_args.reward.init_args.max_workers=8"]


def run_sft(args, params: ParamCount, peak: float) -> dict[str, float]:
    from lightning.pytorch.callbacks import Callback

    from ring_lightning.cli import RingLightningCLI

    steps: list[tuple[float, int]] = []

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            import torch

            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            import torch

            torch.cuda.synchronize()
            steps.append((time.perf_counter() - self.t0, int(batch.num_tokens)))

    cli = RingLightningCLI(args=sft_args(args.layers, args.sft_steps + args.warmup, args.sft_tokens,
                                         args.activation_checkpointing), run=False)
    cli.trainer.callbacks.append(StepTimer())
    cli.trainer.fit(cli.model, cli.datamodule)
    timed = steps[args.warmup:] or steps
    sec = statistics.median(t for t, _ in timed)
    tokens = statistics.median(n for _, n in timed)
    return {"s_step": sec, "tokens": tokens, "tok_s": tokens / sec, "mfu": mfu(train_flops(params, tokens), sec, peak)}


def run_rl(args, params: ParamCount, peak: float) -> dict[str, float]:
    from lightning.pytorch.callbacks import Callback

    from ring_lightning.cli import RingLightningCLI

    rows: list[dict[str, float]] = []

    class Collect(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    cli = RingLightningCLI(args=rl_args(args.layers, args.rl_steps + args.warmup, args.prompts, args.samples,
                                        args.max_tokens, args.phi, args.rl_tokens, args.activation_checkpointing),
                           run=False)
    cli.trainer.callbacks.append(Collect())
    cli.trainer.fit(cli.model, cli.datamodule)
    timed = rows[args.warmup:] or rows
    med = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731
    gen, loss, t_roll, t_train = med("rollout/generated_tokens"), med("train/loss_tokens"), med("time/rollout"), \
        med("time/train")
    return {"s_step": med("time/step"), "s_rollout": t_roll, "s_reward": med("time/reward"), "s_train": t_train,
            "s_sync": med("time/sync"), "gen_tokens": gen, "loss_tokens": loss, "gen_tok_s": gen / t_roll,
            "train_mfu": mfu(train_flops(params, loss), t_train, peak),
            "rollout_mfu": mfu(forward_flops(params, gen), t_roll, peak),
            "step_mfu": mfu(train_flops(params, loss) + forward_flops(params, gen), med("time/step"), peak),
            "parity": max((r[k] for r in rows for k in r if k.endswith("sync_logprob_diff_mean")),
                          default=float("nan"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the Ring-lite-2507 preset (28 in full)")
    ap.add_argument("--parts", nargs="+", default=["sft", "rl"], choices=["sft", "rl"])
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by name)")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    ap.add_argument("--sft-steps", type=int, default=6, help="timed SFT steps")
    ap.add_argument("--sft-tokens", type=int, default=16384, help="packed tokens per SFT step")
    ap.add_argument("--rl-steps", type=int, default=3, help="timed C3PO steps")
    ap.add_argument("--prompts", type=int, default=32, help="L")
    ap.add_argument("--samples", type=int, default=8, help="K")
    ap.add_argument("--max-tokens", type=int, default=512, help="max response tokens")
    ap.add_argument("--phi", type=int, default=32768, help="C3PO token budget Φ")
    ap.add_argument("--rl-tokens", type=int, default=16384, help="padded tokens per C3PO micro-batch")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute layers (not in MFU FLOPs)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_smoke.py needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is "
              "False). Run it on a GPU machine with the `gpu` extra (vllm with CUDA); on CPU use "
              "`python benchmarks/run.py --preset cpu-tiny`.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(name)
    if peak is None:
        print(f"gpu_smoke.py: no peak FLOP/s known for {name!r}; pass --peak-tflops (dense bf16 TFLOP/s)",
              file=sys.stderr)
        return 2
    params = preset_params(PRESET, num_hidden_layers=args.layers)
    t0 = time.perf_counter()
    results = {}
    if "sft" in args.parts:
        results["sft"] = run_sft(args, params, peak)
    if "rl" in args.parts:
        results["rl"] = run_rl(args, params, peak)
    print(f"\n{PRESET} with {args.layers} layers: {params.total / 1e9:.2f}B total, {params.active / 1e9:.2f}B active "
          f"({params.active_matmul / 1e9:.2f}B active matmul) | {name}, peak {peak:.0f} TFLOP/s bf16 | FSDP2 bf16, "
          f"{time.perf_counter() - t0:.0f} s")
    if "sft" in results:
        r = results["sft"]
        print(f"SFT   step {r['s_step']:.3f} s  {r['tokens']:.0f} tokens/step  {r['tok_s']:,.0f} tokens/s  "
              f"MFU {r['mfu']:.1%}")
    if "rl" in results:
        r = results["rl"]
        print(f"C3PO  step {r['s_step']:.3f} s (rollout {r['s_rollout']:.3f} / reward {r['s_reward']:.3f} / train "
              f"{r['s_train']:.3f} / sync {r['s_sync']:.3f})  generated {r['gen_tokens']:.0f} "
              f"({r['gen_tok_s']:,.0f} tokens/s), trained {r['loss_tokens']:.0f}")
        print(f"      MFU: train {r['train_mfu']:.1%} (6N x Φ over the training phase), rollout "
              f"{r['rollout_mfu']:.1%} (2N x generated), whole step {r['step_mfu']:.1%}; "
              f"max parity mean |Δlogprob| {r['parity']:.3g}")
    print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
