"""One-call GPU check (<= 4 minutes on one H100): SFT under FSDP2, C3PO steps, weight-sync parity, peak
memory and MFU in one table, each against a threshold; exit 1 when one fails, 2 when it cannot run.

    python benchmarks/gpu_check.py                    # on one CUDA GPU
    python benchmarks/gpu_check.py --dry-run          # on CPU: shapes, the FLOP formula on a tiny model, the table

sft: configs/ring_lite_2507/sft.yaml, FSDP2 on one GPU, Ring-lite-2507 width with `--layers` layers, bf16
compute, activation checkpointing. c3po: rl_reasoning.yaml with CUDA vLLM when `import vllm` works, else
HFEngine on a private copy of the policy (one GPU, no FSDP2: HFEngine refuses sharded parameters,
bf16-mixed). Parity: the run's SyncParityProbe, its own raise off so that `--max-parity-*` decide.
MFU = 6 N T / (seconds x peak), N = active params without the input embedding (`flops.py`); recomputation
is not counted. A random policy gets reward 0: this measures speed. Rows, thresholds and what must travel
to a lent machine (`benchmarks/gpu_wheels.sh`): docs/gpu.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.flops import ParamCount, count_params, forward_flops, mfu, peak_tflops, preset_params, train_flops  # noqa: E402,E501

PRESET = "ring-lite-2507"
TINY = "bailing-tiny"  # the dry run's formula check
COLUMNS = ("check", "value", "threshold", "result", "detail")
NO_RAISE_PROBE = ('{"class_path": "ring_lightning.rollout.parity.SyncParityProbe", '
                  '"init_args": {"mean_threshold": 1.0e30, "max_threshold": 1.0e30}}')


@dataclass
class Check:
    """One row: `value` against `limit` ("min": value >= limit passes, "max": value <= limit); None = not measured."""

    name: str
    value: float | None
    limit: float | None
    kind: str = "max"
    fmt: str = "{:.3g}"
    detail: str = ""

    @property
    def result(self) -> str:
        if self.value is None:
            return "-"
        if self.limit is None:
            return "info"
        ok = self.value >= self.limit if self.kind == "min" else self.value <= self.limit
        return "pass" if ok else "FAIL"  # NaN fails both ways


def render(checks: list[Check]) -> str:
    rows = [COLUMNS] + [(c.name, "-" if c.value is None else c.fmt.format(c.value),
                         "" if c.limit is None else f"{'>=' if c.kind == 'min' else '<='} {c.fmt.format(c.limit)}",
                         c.result, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]), r[3].ljust(widths[3]),
                        r[4]]).rstrip() for r in rows]
    return "\n".join([lines[0], "-" * max(len(ln) for ln in lines), *lines[1:]])


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if c.result == "FAIL"]


def detect_engine() -> str:
    """"vllm" when CUDA vLLM can be imported, else "hf"."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        return "hf"
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken vllm install: use the HF engine and say so in the table
        return "hf"
    return "vllm"


def common_args(layers: int, steps: int, fsdp: bool) -> list[str]:
    """Overrides of both parts: one GPU, the preset with `layers` layers, no logger / callbacks / checkpoints."""
    strategy = ["--trainer.strategy.init_args.data_parallel_size=1"] if fsdp else ["--trainer.strategy=auto"]
    return [
        f"--model.init_args.model={PRESET}", "--model.init_args.tokenizer=null",
        f"--model.init_args.model_overrides={{num_hidden_layers: {layers}, attn_implementation: sdpa}}",
        "--trainer.devices=1", "--trainer.num_nodes=1", *strategy,
        f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
    ]


def sft_args(layers: int = 2, steps: int = 6, micro_batch_tokens: int = 16384, checkpointing: bool = True) -> list[str]:
    """`fit` arguments of the SFT part (configs/ring_lite_2507/sft.yaml + overrides)."""
    return ["-c", str(REPO / "configs/ring_lite_2507/sft.yaml"), *common_args(layers, steps, fsdp=True),
            "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0",
            f"--model.init_args.activation_checkpointing={str(checkpointing).lower()}",
            "--data.init_args.train=[synthetic:mixed]", "--data.init_args.val=null", "--data.init_args.tokenizer=null",
            f"--data.init_args.micro_batch_tokens={micro_batch_tokens}", f"--data.init_args.max_length={micro_batch_tokens}",
            "--data.init_args.synthetic_train_rows=4000", "--data.init_args.num_workers=0"]


def engine_args(engine: str, rows: int, max_tokens: int) -> list[str]:
    """The rollout engine's overrides: the config's vLLM engine (CUDA) or HFEngine on a private copy."""
    if engine == "vllm":
        return [f"--data.init_args.engine.init_args.max_model_len={max_tokens + 512}",
                "--data.init_args.engine.init_args.gpu_memory_utilization=0.3"]
    if engine == "hf":
        return ['--data.init_args.engine={"class_path": "ring_lightning.rollout.hf_engine.HFEngine", '
                f'"init_args": {{"max_batch_size": {rows}, "copy_model": true}}}}',
                "--trainer.precision=bf16-mixed", "--model.init_args.mixed_precision=none"]
    raise ValueError(f"engine must be 'vllm' or 'hf', got {engine!r}")


def rl_args(layers: int = 2, steps: int = 3, prompts: int = 16, samples: int = 4, max_tokens: int = 256,
            phi: int = 8192, micro_batch_tokens: int = 8192, engine: str = "hf", checkpointing: bool = True) -> list[str]:
    """`fit` arguments of the C3PO part (configs/ring_lite_2507/rl_reasoning.yaml + overrides)."""
    return ["-c", str(REPO / "configs/ring_lite_2507/rl_reasoning.yaml"),
            *common_args(layers, steps, fsdp=engine == "vllm"), *engine_args(engine, prompts * samples, max_tokens),
            f"--model.init_args.activation_checkpointing={str(checkpointing).lower()}",
            f"--model.init_args.objective.init_args.token_budget={phi}",
            f"--model.init_args.micro_batch_tokens={micro_batch_tokens}", "--model.init_args.warmup_steps=0",
            f"--model.init_args.parity={NO_RAISE_PROBE}",
            "--data.init_args.sources={arithmetic: {task: arithmetic_steps, size: 500}, "
            "countdown: {task: countdown, size: 250}}",
            "--data.init_args.stages={reasoning: {arithmetic: 0.8, countdown: 0.2}}",
            "--data.init_args.val_sources=null", "--data.init_args.test_sources=null", "--trainer.limit_val_batches=0",
            f"--data.init_args.prompts_per_step={prompts}", f"--data.init_args.samples_per_prompt={samples}",
            f"--data.init_args.max_response_tokens={max_tokens}", "--data.init_args.max_prompt_tokens=512",
            f"--data.init_args.refill_prompts={prompts}", "--data.init_args.reward.init_args.max_workers=8"]


def _fit(args: list[str], callback) -> None:
    from ring_lightning.cli import RingLightningCLI

    cli = RingLightningCLI(args=args, run=False)
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, cli.datamodule)


def _release() -> float:
    """Free the part's CUDA memory and process group; returns the peak allocated GiB since the last call."""
    import torch

    gc.collect()
    peak = float("nan")
    if torch.cuda.is_available():  # (a CPU rehearsal with `extra` overrides has no CUDA memory)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return peak


def _sync_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_sft(a, params: ParamCount, peak: float, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """SFT steps (`extra`: more `fit` overrides, e.g. a CPU rehearsal with a tiny model)."""
    from lightning.pytorch.callbacks import Callback

    steps: list[tuple[float, int]] = []

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync_cuda()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync_cuda()
            steps.append((time.perf_counter() - self.t0, int(batch.num_tokens)))

    _fit([*sft_args(a.layers, a.sft_steps + a.warmup, a.sft_tokens, a.checkpointing), *extra], StepTimer())
    timed = steps[a.warmup:] or steps
    sec, tokens = statistics.median(t for t, _ in timed), statistics.median(n for _, n in timed)
    return {"s_step": sec, "tokens": tokens, "mfu": mfu(train_flops(params, tokens), sec, peak), "mem": _release()}


def run_c3po(a, params: ParamCount, peak: float, engine: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """C3PO steps with `engine` ("vllm" | "hf"); `extra` as in `run_sft`."""
    from lightning.pytorch.callbacks import Callback

    rows: list[dict[str, float]] = []

    class Collect(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    _fit([*rl_args(a.layers, a.rl_steps + a.warmup, a.prompts, a.samples, a.max_tokens, a.phi, a.rl_tokens, engine,
                   a.checkpointing), *extra], Collect())
    timed = rows[a.warmup:] or rows
    med = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731
    gen, loss, t_roll, t_train = (med(k) for k in ("rollout/generated_tokens", "train/loss_tokens", "time/rollout",
                                                   "time/train"))
    parity = lambda end: max((r[k] for r in rows for k in r if k.endswith(end)), default=float("nan"))  # noqa: E731
    return {"s_step": med("time/step"), "s_rollout": t_roll, "s_train": t_train, "s_sync": med("time/sync"),
            "gen_tok_s": gen / t_roll, "loss_tokens": loss, "gen_tokens": gen,
            "train_mfu": mfu(train_flops(params, loss), t_train, peak),
            "rollout_mfu": mfu(forward_flops(params, gen), t_roll, peak),
            "parity_mean": parity("sync_logprob_diff_mean"), "parity_max": parity("sync_logprob_diff_max"),
            "mem": _release()}


def checks(a, sft: dict | None, rl: dict | None, engine: str, wall: float | None, gpu_gib: float | None) -> list[Check]:
    """The table's rows (values None where a part did not run, e.g. the dry run)."""
    g = lambda d, k: None if d is None else d[k]  # noqa: E731
    rl_what = (f"{engine} engine, L={a.prompts} K={a.samples} <= {a.max_tokens} tokens, Φ={a.phi}; median of "
               f"{a.rl_steps} steps after {a.warmup}")
    return [
        Check("sft seconds per step", g(sft, "s_step"), None, detail=f"{a.sft_tokens} packed tokens/step, FSDP2 bf16, "
              f"activation checkpointing {'on' if a.checkpointing else 'off'}"),
        Check("sft MFU (6 N T / s / peak)", g(sft, "mfu"), a.min_sft_mfu, "min", "{:.1%}",
              "" if sft is None else f"T = {sft['tokens']:.0f} non-padding tokens/step"),
        Check("sft peak CUDA memory GiB", g(sft, "mem"), a.max_memory_gib, "max", "{:.1f}"),
        Check("c3po seconds per step", g(rl, "s_step"), None, detail=rl_what + (
            "" if rl is None else f"; rollout {rl['s_rollout']:.2f} / train {rl['s_train']:.2f} / sync {rl['s_sync']:.2f}")),
        Check("c3po generated tokens/s", g(rl, "gen_tok_s"), a.min_gen_tok_s, "min", "{:,.0f}",
              "" if rl is None else f"{rl['gen_tokens']:.0f} generated, rollout MFU {rl['rollout_mfu']:.1%} (2 N / token)"),
        Check("c3po train MFU (6 N Φ / train s / peak)", g(rl, "train_mfu"), a.min_rl_train_mfu, "min", "{:.1%}",
              "train phase includes the reference-model forward (not counted)"),
        Check("weight-sync parity: max mean |Δlogprob|", g(rl, "parity_mean"), a.max_parity_mean, "max", "{:.3g}",
              "SyncParityProbe on the first syncs (bf16 engine/trainer)"),
        Check("weight-sync parity: max |Δlogprob|", g(rl, "parity_max"), a.max_parity_max, "max", "{:.3g}"),
        Check("c3po peak CUDA memory GiB", g(rl, "mem"), a.max_memory_gib, "max", "{:.1f}",
              "" if gpu_gib is None else f"device memory in use at the end {gpu_gib:.1f} GiB (vLLM's pool included)"),
        Check("wall seconds", wall, a.max_seconds, "max", "{:.0f}", "imports, model builds and both parts"),
    ]


def formula_lines(a) -> list[str]:
    """The shapes (meta device) and the FLOP formula, on the check's model and on a real tiny one."""
    from ring_lightning.models.loading import load_policy

    big = preset_params(PRESET, num_hidden_layers=a.layers)
    tiny = count_params(load_policy(TINY, seed=0)[0])
    lines = []
    for name, c in ((f"{PRESET} x {a.layers} layers", big), (TINY, tiny)):
        lines.append(f"{name}: total {c.total:,} / active {c.active:,} / active excl. input embedding "
                     f"{c.active_matmul:,} params; 6 x N x {a.sft_tokens} tokens = {train_flops(c, a.sft_tokens):.6g} "
                     f"FLOPs per SFT step; 2 x N = {forward_flops(c, 1):.6g} FLOPs per generated token")
    return lines


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: shapes, the FLOP formula and the table; no training")
    ap.add_argument("--parts", nargs="+", default=["sft", "c3po"], choices=["sft", "c3po"])
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"], help="auto: vllm when importable")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the Ring-lite-2507 preset (28 in full)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by name)")
    ap.add_argument("--warmup", type=int, default=1, help="steps of each part left out of the medians")
    ap.add_argument("--sft-steps", type=int, default=4, help="timed SFT steps")
    ap.add_argument("--sft-tokens", type=int, default=16384, help="packed tokens per SFT step")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false", help="activation checkpointing off")
    ap.add_argument("--rl-steps", type=int, default=2, help="timed C3PO steps")
    ap.add_argument("--prompts", type=int, default=16, help="L")
    ap.add_argument("--samples", type=int, default=4, help="K")
    ap.add_argument("--max-tokens", type=int, default=256, help="max response tokens")
    ap.add_argument("--phi", type=int, default=8192, help="C3PO token budget Φ")
    ap.add_argument("--rl-tokens", type=int, default=8192, help="padded tokens per C3PO micro-batch")
    ap.add_argument("--min-sft-mfu", type=float, default=0.05, help="fail below this SFT MFU (fraction)")
    ap.add_argument("--min-rl-train-mfu", type=float, default=0.01, help="fail below this C3PO train MFU (fraction)")
    ap.add_argument("--min-gen-tok-s", type=float, default=500.0, help="fail below these generated tokens/s")
    ap.add_argument("--max-parity-mean", type=float, default=0.05, help="fail above this mean |Δlogprob| (bf16)")
    ap.add_argument("--max-parity-max", type=float, default=1.5, help="fail above this max |Δlogprob| (bf16)")
    ap.add_argument("--max-memory-gib", type=float, default=75.0, help="fail above this peak CUDA memory per part")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="fail above this wall time")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.perf_counter()
    import torch

    if a.dry_run:
        engine = a.engine if a.engine != "auto" else detect_engine()
        sft_args(a.layers, a.sft_steps + a.warmup, a.sft_tokens, a.checkpointing)
        rl_args(a.layers, a.rl_steps + a.warmup, a.prompts, a.samples, a.max_tokens, a.phi, a.rl_tokens, engine)
        print("\n".join([f"gpu_check dry run (engine {engine}; nothing trained):", *formula_lines(a)]))
        print(render(checks(a, None, None, engine, None, None)))
        return 0
    if not torch.cuda.is_available():
        print(f"gpu_check.py needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is "
              "False); on CPU run `python benchmarks/gpu_check.py --dry-run`", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = a.peak_tflops or peak_tflops(name)
    if peak is None:
        print(f"gpu_check.py: no peak FLOP/s known for {name!r}; pass --peak-tflops (dense bf16 TFLOP/s)",
              file=sys.stderr)
        return 2
    engine = a.engine if a.engine != "auto" else detect_engine()
    params = preset_params(PRESET, num_hidden_layers=a.layers)
    sft = run_sft(a, params, peak) if "sft" in a.parts else None
    rl = run_c3po(a, params, peak, engine) if "c3po" in a.parts else None
    free, total = torch.cuda.mem_get_info()
    table = checks(a, sft, rl, engine, time.perf_counter() - t0, (total - free) / 2**30)
    print(f"\n{PRESET} x {a.layers} layers: {params.total / 1e9:.2f}B total, {params.active / 1e9:.2f}B active, "
          f"N = {params.active_matmul / 1e9:.3f}B (active excl. input embedding) | {name}, peak {peak:.0f} TFLOP/s "
          f"dense bf16 | MFU = 6 x N x tokens / seconds / peak | torch {torch.__version__}")
    print(render(table))
    bad = failed(table)
    if bad:
        print(f"gpu_check: FAILED {', '.join(bad)} (thresholds are the --min-* / --max-* options)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
