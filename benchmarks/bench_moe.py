"""Forward+backward training throughput of BailingMoe: grouped expert compute vs the naive dense loop.

Prints tokens/s of a full training step (forward with labels and router losses, backward) for the
`bailing-tiny` and `bailing-mid` presets with `moe_implementation` = grouped, grouped_mm and naive,
and the speed-up of grouped over naive. Each figure is the best of `--steps` interleaved steps (the
development machines are shared, so the best step is the least disturbed one).

    python benchmarks/bench_moe.py                      # defaults: batch 2 x 256 tokens, 5 timed steps
    python benchmarks/bench_moe.py --seq 512 --steps 5 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from ring_lightning.models.loading import load_policy

IMPLEMENTATIONS = ("grouped", "grouped_mm", "naive")


def step_seconds(model, ids: torch.Tensor, device: str) -> float:
    """Wall time of one training step: forward with labels (+ router losses), backward."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_preset(preset: str, batch: int, seq: int, steps: int, dtype: str, device: str) -> dict[str, float]:
    """Best-of-`steps` tokens/s per implementation; steps are interleaved across implementations so
    that load from other processes hits all of them alike."""
    models = {}
    for impl in IMPLEMENTATIONS:
        model, _ = load_policy(preset, seed=0, dtype=dtype, moe_implementation=impl)
        models[impl] = model.to(device).train()
    ids = torch.randint(3, 1105, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    best = {impl: float("inf") for impl in IMPLEMENTATIONS}
    for step in range(steps + 1):  # step 0 warms up
        for impl, model in models.items():
            seconds = step_seconds(model, ids, device)
            if step:
                best[impl] = min(best[impl], seconds)
    return {impl: batch * seq / seconds for impl, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["bailing-tiny", "bailing-mid"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation (best is kept)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} dtype={args.dtype} "
          f"batch={args.batch} seq={args.seq} steps={args.steps}")
    for preset in args.presets:
        speeds = bench_preset(preset, args.batch, args.seq, args.steps, args.dtype, args.device)
        row = "  ".join(f"{impl}={speed:,.0f} tok/s" for impl, speed in speeds.items())
        print(f"{preset:14s} fwd+bwd  {row}  grouped/naive={speeds['grouped'] / speeds['naive']:.2f}x  "
              f"grouped_mm/naive={speeds['grouped_mm'] / speeds['naive']:.2f}x")


if __name__ == "__main__":
    main()
