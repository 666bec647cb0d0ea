"""Forward+backward training throughput of MoE expert kernels: BailingMoe (ours) and Qwen3-MoE (transformers).

BailingMoe presets (`bailing-tiny`, `bailing-mid`): `moe_implementation` = grouped, grouped_mm and naive,
and the speed-up of grouped over naive. Qwen3-MoE (by default the cpu-mid RL model of `benchmarks/run.py`):
transformers' `experts_implementation` = eager, batched_mm and grouped_mm (one that cannot dispatch on this
device is reported as such), tokens/s, speed-up vs eager and achieved FLOP/s = 6 N T / step seconds (N =
active params excl. the input embedding, `flops.py`) against the measured fp32 matmul peak; plus the
implementation `load_policy` (ring_lightning's training) picks by default. A step is a forward with labels
(and router losses) and a backward; each figure is the best of `--steps` interleaved steps after one warm-up.

    python benchmarks/bench_moe.py                      # defaults: batch 2 x 256 tokens, 5 timed steps
    python benchmarks/bench_moe.py --seq 512 --steps 5 --dtype bfloat16
    python benchmarks/bench_moe.py --presets --qwen3-layers 2 --steps 1   # Qwen3-MoE only, 2 layers
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ring_lightning.models.loading import load_policy

IMPLEMENTATIONS = ("grouped", "grouped_mm", "naive")
EXPERTS_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")  # transformers' `experts_implementation`
FORMULA = "6 x N x T / step s (N = active params excl. input embedding, routed experts x top_k / num_experts)"


def step_seconds(model, ids: torch.Tensor, device: str, **kwargs) -> float:
    """Wall time of one training step: forward with labels (+ router losses), backward."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids, **kwargs).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _interleaved_best(models: dict[str, Any], ids: torch.Tensor, steps: int, device: str, errors: dict[str, str],
                      **kwargs) -> dict[str, float]:
    """Best-of-`steps` seconds per model after one warm-up step, interleaved so that load from other
    processes hits all alike; a model whose step raises is dropped with its error in `errors`."""
    best = {name: float("inf") for name in models}
    for step in range(steps + 1):  # step 0 warms up
        for name, model in list(models.items()):
            try:
                seconds = step_seconds(model, ids, device, **kwargs)
            except (RuntimeError, NotImplementedError, ValueError) as e:
                errors[name] = f"fails in its training step on {device}: {type(e).__name__}: {str(e)[:160]}"
                del models[name], best[name]
                continue
            if step:
                best[name] = min(best[name], seconds)
    return best


def bench_preset(preset: str, batch: int, seq: int, steps: int, dtype: str, device: str) -> dict[str, float]:
    """BailingMoe: best-of-`steps` tokens/s per `moe_implementation`."""
    models = {}
    for impl in IMPLEMENTATIONS:
        model, _ = load_policy(preset, seed=0, dtype=dtype, moe_implementation=impl)
        models[impl] = model.to(device).train()
    ids = torch.randint(3, 1105, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    best = _interleaved_best(models, ids, steps, device, {})
    return {impl: batch * seq / seconds for impl, seconds in best.items()}


def batched_mm_gib(config, tokens: int, bytes_per: int = 4) -> float:
    """GiB that batched_mm's per-(token, expert) weight gather keeps for backward: layers x tokens x top_k x
    3 x hidden x moe_intermediate (gate_up and down rows of every selected expert)."""
    per = 3 * config.hidden_size * config.moe_intermediate_size * config.num_experts_per_tok
    return config.num_hidden_layers * tokens * per * bytes_per / 2**30


def bench_experts(model: str, overrides: dict[str, Any], batch: int, seq: int, steps: int, dtype: str = "float32",
                  device: str = "cpu", implementations=EXPERTS_IMPLEMENTATIONS,
                  max_gib: float = 4.0) -> dict[str, dict[str, Any]]:
    """Qwen3-MoE (any `@use_experts_implementation` model): {implementation: {"tok_s", "seconds"} or
    {"error"}}; one that cannot be built or run on `device` is reported with its error, not raised, and
    batched_mm is not run when its weight gather would hold more than `max_gib` (`batched_mm_gib`)."""
    from ring_lightning.models.loading import build_config

    models, errors = {}, {}
    gib = batched_mm_gib(build_config(model, **overrides), batch * seq, torch.finfo(getattr(torch, dtype)).bits // 8)
    for impl in implementations:
        if impl == "batched_mm" and gib > max_gib:
            errors[impl] = (f"not run: its per-token expert-weight gather would keep ~{gib:.1f} GiB for backward "
                            f"(> max_gib {max_gib}; layers x tokens x top_k x 3 x hidden x moe_intermediate)")
            continue
        try:
            m, _ = load_policy(model, seed=0, dtype=dtype, experts_implementation=impl, **overrides)
        except (ValueError, ImportError, RuntimeError, KeyError) as e:
            errors[impl] = f"cannot dispatch on {device}: {type(e).__name__}: {str(e)[:160]}"
            continue
        if m.config._experts_implementation != impl:
            errors[impl] = f"transformers chose {m.config._experts_implementation!r} instead on {device}"
            continue
        models[impl] = m.to(device).train()
    ids = torch.randint(3, 1105, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    best = _interleaved_best(models, ids, steps, device, errors, output_router_logits=True)
    out = {impl: {"error": err} for impl, err in errors.items()}
    out.update({impl: {"tok_s": batch * seq / s, "seconds": s} for impl, s in best.items()})
    return {impl: out[impl] for impl in implementations}


def default_implementation(model: str, **overrides) -> str:
    """The experts implementation `load_policy` ends up with when none is asked for (RLModule's path)."""
    m, _ = load_policy(model, seed=0, **overrides)
    return str(m.config._experts_implementation)


def experts_rows(res: dict[str, dict[str, Any]], tokens: int, active_matmul: int, peak: float | None,
                 default: str | None, what: str) -> list[tuple[str, str, str, str]]:
    """Table rows (section, metric, value, detail): tokens/s, speed-up vs eager, FLOP/s and share of `peak`."""
    eager = res.get("eager", {}).get("tok_s")
    rows = [("moe", "training FLOPs formula", "6 x N x T", f"{FORMULA}; N = {active_matmul / 1e6:.2f}M, "
             f"T = {tokens} tokens per step; {what}")]
    for impl, r in res.items():
        if "error" in r:
            rows.append((f"moe {impl}", "fwd+bwd tokens/s", "n/a", r["error"]))
            continue
        flops = 6.0 * active_matmul * tokens / r["seconds"]
        share = f"; {flops / peak:.1%} of peak" if peak else ""
        vs = f"{r['tok_s'] / eager:.2f}x eager" if eager else "no eager run"
        rows.append((f"moe {impl}", "fwd+bwd tokens/s; GFLOP/s", f"{r['tok_s']:,.0f}; {flops / 1e9:,.2f}{share}",
                     f"{vs}; best step {r['seconds']:.3f} s"))
    if peak:
        rows.append(("moe", "fp32 matmul peak", f"{peak / 1e9:,.1f} GFLOP/s", "best of a few 2048 x 2048 torch.matmul"))
    if default is not None:
        rows.append(("moe", "implementation ring_lightning trains with", default,
                     "load_policy without experts_implementation (RLModule / SFTModule): transformers' default"))
    return rows


def section_rows(model: str, overrides: dict[str, Any], batch: int, seq: int, steps: int = 3, device: str = "cpu",
                 trained: str | None = None) -> list[tuple[str, str, str, str]]:
    """`benchmarks/run.py`'s moe section: `bench_experts` at the current torch threads, the fp32 peak at
    the same count (CPU), and the default implementation of `trained` (the saved RL model; else `model`)."""
    from benchmarks.flops import measure_matmul_peak, preset_params

    res = bench_experts(model, overrides, batch, seq, steps, device=device)
    peak = measure_matmul_peak() if device == "cpu" else None
    default = default_implementation(trained) if trained else default_implementation(model, **overrides)
    n = preset_params(model, **overrides).active_matmul
    what = f"best of {steps} steps, {torch.get_num_threads()} torch thread(s), {device}"
    return experts_rows(res, batch * seq, n, peak, default, what)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["bailing-tiny", "bailing-mid"], help="BailingMoe presets")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation (best is kept)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--qwen3-layers", type=int, default=None, help="layers of the Qwen3-MoE model (default: "
                        "the cpu-mid model's 8); 0 skips it")
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} dtype={args.dtype} "
          f"batch={args.batch} seq={args.seq} steps={args.steps}")
    for preset in args.presets:
        speeds = bench_preset(preset, args.batch, args.seq, args.steps, args.dtype, args.device)
        row = "  ".join(f"{impl}={speed:,.0f} tok/s" for impl, speed in speeds.items())
        print(f"{preset:14s} fwd+bwd  {row}  grouped/naive={speeds['grouped'] / speeds['naive']:.2f}x  "
              f"grouped_mm/naive={speeds['grouped_mm'] / speeds['naive']:.2f}x")
    if args.qwen3_layers == 0:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script
    from benchmarks.run import QWEN3_MOE_MID

    spec = dict(QWEN3_MOE_MID.overrides, **({"num_hidden_layers": args.qwen3_layers} if args.qwen3_layers else {}))
    print(f"{QWEN3_MOE_MID.name} ({QWEN3_MOE_MID.base}, {spec['num_hidden_layers']} layers), dtype float32:")
    for row in section_rows(QWEN3_MOE_MID.base, spec, args.batch, args.seq, args.steps, args.device):
        print("  ".join(row))


if __name__ == "__main__":
    main()
