"""Rollout throughput, VLLMEngine vs HFEngine, and seconds per exact weight sync.

Settings (temperature 1, random prompts of 16 tokens, fp32 random-init policies, no downloads):
  tiny: qwen3-moe-tiny (head_dim 32 for vLLM's CPU attention), 32 prompts x 8 samples x <= 64 tokens
  mid : bailing-mid (8 layers, hidden 512, 32 experts top-2 + 1 shared, ~65M parameters),
        16 prompts x 8 samples x <= 256 tokens
  mid-qwen3: HF Qwen3-MoE of the issue's shape (8 layers, hidden 512, 16 experts top-2, ~60M), same workload

Both engines are built, warmed up (not timed), then timed `--reps` times, alternating, and the medians
are reported: completion tokens per wall second and per CPU second of this process (the latter is less
sensitive to other processes on a shared machine). A sync is timed after perturbing every weight
(median of 3). Prints a table with the vLLM/HF ratios, seconds per sync and the sync's share of one
rollout+sync step.

Run: python benchmarks/bench_rollout.py [--settings tiny mid] [--threads N] [--reps R] [--vllm-kwargs JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # package data of ring_lightning (see bench_rewards)

import torch  # noqa: E402

from ring_lightning.models.loading import load_policy  # noqa: E402
from ring_lightning.rollout.engine import SamplingConfig  # noqa: E402
from ring_lightning.rollout.hf_engine import HFEngine  # noqa: E402
from ring_lightning.rollout.vllm_engine import VLLMEngine  # noqa: E402

SETTINGS = {
    "tiny": dict(preset="qwen3-moe-tiny", overrides=dict(head_dim=32), prompts=32, n=8, max_tokens=64),
    "mid": dict(preset="bailing-mid", overrides={}, prompts=16, n=8, max_tokens=256),
    # The hand-measured shape: HF Qwen3-MoE, 8 layers, hidden 512, 16 experts top-2 (~60M).
    "mid-qwen3": dict(preset="qwen3-moe-tiny", overrides=dict(
        hidden_size=512, intermediate_size=1408, moe_intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=2),
        prompts=16, n=8, max_tokens=256),
}


def timed_generate(engine, prompts, n, sampling) -> tuple[int, float, float]:
    """(completion tokens, wall seconds, CPU seconds of this process) of one generate call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = engine.generate(prompts, n, sampling)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sum(len(c.token_ids) for g in out for c in g), wall, cpu


def run(name: str, spec: dict, hf_batch: int, reps: int) -> dict:
    """Build both engines on `spec` (keys as in SETTINGS; optional "dtype", "device", "engine_kwargs"
    for VLLMEngine) and time them; returns tokens/s (wall and CPU), engine start and sync figures."""
    model, tok = load_policy(spec["preset"], seed=0, dtype=spec.get("dtype", "float32"), **spec["overrides"])
    model = model.to(spec.get("device", "cpu")).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, len(tok), (spec["prompts"], 16), generator=g).tolist()
    sampling = SamplingConfig(temperature=1.0, max_tokens=spec["max_tokens"], seed=1)
    warm = SamplingConfig(temperature=1.0, max_tokens=8, seed=0)
    hf = HFEngine(model, tok, max_batch_size=hf_batch)
    t0 = time.perf_counter()
    engine_kwargs = {"max_model_len": 512, **spec.get("engine_kwargs", {})}
    vllm = VLLMEngine(model, tok, max_num_seqs=spec["prompts"] * spec["n"], seed=0, **engine_kwargs)
    r = {"setting": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
         "vllm_start_s": time.perf_counter() - t0}
    for engine in (hf, vllm):
        engine.generate(prompts[:2], 2, warm)
    runs = {"hf": [], "vllm": []}
    for _ in range(reps):  # alternate, so both engines see the same (shared-machine) load on average
        runs["hf"].append(timed_generate(hf, prompts, spec["n"], sampling))
        runs["vllm"].append(timed_generate(vllm, prompts, spec["n"], sampling))
    for key, rows in runs.items():
        r[f"{key}_wall_tps"] = statistics.median(t / w for t, w, _ in rows)
        r[f"{key}_cpu_tps"] = statistics.median(t / c for t, _, c in rows)
        r[f"{key}_gen_s"] = statistics.median(w for _, w, _ in rows)
    syncs = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        vllm.update_weights(model.named_parameters())
        syncs.append(vllm.last_sync.seconds)
    r["sync_s"], r["sync_mb"] = statistics.median(syncs), vllm.last_sync.bytes / 2**20
    vllm.close()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (trainer side)")
    ap.add_argument("--hf-batch", type=int, default=128, help="HFEngine max_batch_size")
    ap.add_argument("--reps", type=int, default=2, help="timed generate calls per engine (alternating)")
    ap.add_argument("--vllm-kwargs", type=json.loads, default={},
                    help='extra VLLMEngine arguments as JSON, e.g. \'{"enforce_eager": false}\' (torch.compile on CPU)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(name, {**SETTINGS[name], "engine_kwargs": {**SETTINGS[name].get("engine_kwargs", {}), **args.vllm_kwargs}},
                   args.hf_batch, args.reps) for name in args.settings]
    print(f"\nVLLMEngine extra kwargs: {args.vllm_kwargs or 'none'}")
    print(f"torch threads={args.threads}  cpus={os.cpu_count()}  load average={os.getloadavg()[0]:.1f}  "
          f"reps={args.reps} (medians)")
    head = (f"{'setting':9} {'params':>7} {'HF tok/s':>9} {'vLLM tok/s':>10} {'ratio':>6} {'HF tok/cpu-s':>12} "
            f"{'vLLM tok/cpu-s':>14} {'ratio':>6} {'start s':>7} {'sync s':>6} {'sync MB':>7} {'sync/step':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        share = r["sync_s"] / (r["vllm_gen_s"] + r["sync_s"])
        print(f"{r['setting']:9} {r['params_m']:6.1f}M {r['hf_wall_tps']:9.0f} {r['vllm_wall_tps']:10.0f} "
              f"{r['vllm_wall_tps'] / r['hf_wall_tps']:5.2f}x {r['hf_cpu_tps']:12.0f} {r['vllm_cpu_tps']:14.0f} "
              f"{r['vllm_cpu_tps'] / r['hf_cpu_tps']:5.2f}x {r['vllm_start_s']:7.1f} {r['sync_s']:6.2f} "
              f"{r['sync_mb']:7.0f} {share:8.1%}")
    print("tok/s: completion tokens per wall second; tok/cpu-s: per CPU second of this process (less sensitive to\n"
          "other processes on a shared machine); sync/step: one sync's share of one vLLM rollout + sync.")


if __name__ == "__main__":
    main()
