"""Packed SFT training throughput and padding waste (prints figures; asserts nothing).

    python benchmarks/bench_sft.py [--model bailing-tiny] [--micro-batch-tokens 1024] [--steps 20]

Two measurements on the built-in synthetic long-CoT data (data/synthetic/problems.py):

* Packing (`measure_packing`): SFTDataModule's packer over `--rows` conversations; the padding
  fraction over the whole stream and in steady state (without the last `open_bins` rows, which
  flush partially filled), and templating + packing tokens/s.
* Training (`measure_training`): `python -m ring_lightning fit` of configs/quickstart/sft.yaml
  (SFTModule, Lightning's loop, AdamW, gradient clipping) for `steps + warmup` optimizer steps, no
  validation, logger or checkpoints; each step is timed from `on_train_batch_start` to
  `on_train_batch_end` (forward, backward, optimizer), the first `warmup` are left out. Reports
  non-padding training tokens/s (total tokens / total time of the timed steps) and their padding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure_packing(micro_batch_tokens: int = 1024, rows: int = 2000, open_bins: int = 64) -> dict[str, float]:
    """Pack `rows` synthetic conversations; padding fractions and packing speed."""
    from ring_lightning.data.sft.datamodule import SFTDataModule

    dm = SFTDataModule(train=["synthetic:mixed"], micro_batch_tokens=micro_batch_tokens,
                       synthetic_train_rows=rows, shuffle_buffer=1000, open_bins=open_bins)
    t0 = time.perf_counter()
    dm.setup("fit")
    batches = list(dm.train_set)
    prep = time.perf_counter() - t0
    real = sum(int(b.num_tokens) for b in batches)
    pad = sum(int(b.num_padding) for b in batches)
    steady = batches[:-open_bins] if len(batches) > open_bins else batches
    s_real, s_pad = sum(int(b.num_tokens) for b in steady), sum(int(b.num_padding) for b in steady)
    return {"conversations": float(rows), "micro_batches": float(len(batches)), "pack_tok_s": real / prep,
            "pad_frac": pad / max(real + pad, 1), "pad_frac_steady": s_pad / max(s_real + s_pad, 1)}


def measure_training(model: str = "bailing-tiny", micro_batch_tokens: int = 1024, steps: int = 20,
                     warmup: int = 3, rows: int = 2000, extra_args: list[str] | None = None) -> dict[str, float]:
    """Time `steps` SFT optimizer steps (after `warmup`) of the quickstart SFT config; `extra_args` are
    more `fit` arguments (e.g. `--trainer.accelerator=gpu`)."""
    from lightning.pytorch.callbacks import Callback

    from ring_lightning.cli import RingLightningCLI

    timed: list[tuple[float, int, int]] = []  # (seconds, real tokens, padding tokens)

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timed.append((time.perf_counter() - self.t0, int(batch.num_tokens), int(batch.num_padding)))

    cli = RingLightningCLI(args=[
        "-c", str(REPO / "configs/quickstart/sft.yaml"), f"--model.init_args.model={model}",
        f"--data.init_args.micro_batch_tokens={micro_batch_tokens}", f"--data.init_args.synthetic_train_rows={rows}",
        f"--trainer.max_steps={steps + warmup}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", *(extra_args or []),
    ], run=False)
    cli.trainer.callbacks.append(StepTimer())
    cli.trainer.fit(cli.model, cli.datamodule)
    steps_t = timed[warmup:] or timed
    seconds = sum(t for t, _, _ in steps_t)
    real, pad = sum(n for _, n, _ in steps_t), sum(p for _, _, p in steps_t)
    n_params = sum(p.numel() for p in cli.model.policy.parameters())
    return {"params_m": n_params / 1e6, "steps": float(len(steps_t)), "train_tok_s": real / seconds,
            "ms_per_step": 1000 * seconds / len(steps_t), "pad_frac_trained": pad / max(real + pad, 1)}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bailing-tiny")
    parser.add_argument("--micro-batch-tokens", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=2000, help="synthetic conversations to pack")
    parser.add_argument("--open-bins", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pack = measure_packing(args.micro_batch_tokens, args.rows, args.open_bins)
    print(f"data: {args.rows} conversations -> {pack['micro_batches']:.0f} micro-batches of {args.micro_batch_tokens} "
          f"tokens ({pack['pack_tok_s']:,.0f} tokens/s templating + packing)")
    print(f"padding fraction: {pack['pad_frac']:.4f} over the stream, {pack['pad_frac_steady']:.4f} in steady state "
          "(target < 0.02)")
    train = measure_training(args.model, args.micro_batch_tokens, args.steps, args.warmup, args.rows)
    print(f"train: {args.model} ({train['params_m']:.2f}M params), {train['steps']:.0f} steps, "
          f"{train['train_tok_s']:,.0f} non-padding tokens/s ({train['ms_per_step']:.1f} ms per step, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
