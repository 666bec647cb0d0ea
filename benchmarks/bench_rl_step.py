"""End-to-end RL step throughput: ring_lightning C3PO vs GRPO (issue 4), and vs TRL's GRPOTrainer.

ring_lightning runs are built from an RL config (default benchmarks/rl_workload.yaml: built-in
arithmetic + countdown prompts, rule rewards, the embedded vLLM engine with CPU settings) exactly as
`python -m ring_lightning fit` builds them, with the workload's sizes and learning knobs as overrides,
the parity probe off (a correctness check that runs after the first syncs, then every 50 steps: not
steady-state cost) and one embedded vLLM engine shared by all runs (`shared_engine.py`; it is
loaded with each run's starting policy). TRL runs (`bench_trl.py`) get the same model directory,
prompts, sizes and rewards.

Systems: `c3po` and `grpo` (the loss modes, issue 4) with the config's vLLM engine, on-policy;
`c3po-hf` (C3PO with `HFEngine`: transformers `generate` on the trainer's own model, no weight
transfer); `c3po-async` (C3PO with `max_staleness=1`: the next rollout overlaps this step's training,
one step off-policy); `c3po-async-hf` / `grpo-async-hf` (the same overlap with `HFEngine(copy_model=True)`:
`generate` on a private copy of the policy, synced by an in-memory copy); lever probes, each `c3po` with one
knob changed: `c3po-oldpass` (RLModule's `recompute_old_logprobs=True`: the separate no-grad π_old forward
that one epoch skips) and `c3po-nokl` (β = kl_coef 0: no reference model, no reference forward; the
workload's β is the report's 1e-3); `trl` (TRL's GRPOTrainer, skipped with a message when TRL is not installed).
Any system takes `@N` (torch threads) and `:precision` (`PRECISIONS`: fp32 by default, `bf16` = bf16 compute over
fp32 master weights with a bf16 vLLM engine, `bf16w` = bf16 weights), e.g. `c3po@2:bf16`, `trl@2:bf16w`.

The systems are measured in *rounds*, alternating (c3po, grpo, ..., trl, c3po, grpo, ...), so that
load from other processes on a shared machine hits all of them alike; each run is a fresh
`fit` of `steps` optimizer steps from the same starting model, its first `warmup` steps are left out
(allocator / kernel warm-up), and every figure is the median over the remaining steps of all rounds.
Per system: generated and trained tokens per step, generation tokens/s, training tokens/s,
end-to-end (generated + trained) tokens/s over the whole step, seconds per step and the time split
rollout / reward / train / sync / other (other = step - the four: budget, collation, bookkeeping; rest =
step - rollout - train, its own median),
and the CPU seconds of this process per step (`time.process_time`, from the start to the end of the
optimizer step) with end-to-end tokens per CPU second: on a shared, oversubscribed machine wall
times swing with other processes' load, CPU time much less (reward worker processes are not in it).

    python benchmarks/bench_rl_step.py                                  # c3po, grpo (+ trl if installed)
    python benchmarks/bench_rl_step.py --systems c3po grpo --rounds 3
    python benchmarks/bench_rl_step.py --systems grpo-async-hf trl trl@2   # TRL also with 2 torch threads
    python benchmarks/bench_rl_step.py --model runs/quickstart/sft_export --prompts 16 --samples 8 --max-tokens 160
    python benchmarks/bench_rl_step.py --systems c3po --rounds 1 --steps 40 --csv /tmp/c3po.csv   # a learning run
    python benchmarks/bench_rl_step.py --systems c3po@2 trl@2 --vllm-kwargs '{"enforce_eager": false}'   # compiled vLLM
    python benchmarks/bench_rl_step.py --systems c3po@2:bf16 trl@2 trl@2:bf16 trl@2:bf16w   # bf16 (AMX CPUs)

Numbers depend on the machine and its load; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks.*` (the class_path of the shared engine) and package data
from benchmarks.rl_systems import (DEFAULT_SYSTEMS, OURS, PRECISIONS, SYSTEMS, parse_variant,  # noqa: E402
                                   precision_overrides, system_arg)
SPLIT = ("time/rollout", "time/reward", "time/train", "time/sync")
@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with `n` torch intra-op threads (None: unchanged), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is not None:  # torch._C's: vLLM's CPU worker replaces torch.set_num_threads by a no-op
        torch._C.set_num_threads(n)
    try:
        yield
    finally:
        torch._C.set_num_threads(before)


@dataclass
class RLWorkload:
    """One RL benchmark workload (the same for every system).

    Args:
        model: preset name or HF model directory.
        model_overrides: config overrides of a preset (e.g. head_dim for vLLM's CPU attention).
        config: ring_lightning RL config the runs are built from.
        prompts: L, prompts per optimizer step.
        samples: K, samples per prompt.
        max_tokens: maximum response tokens.
        phi: C3PO token budget Φ per step (c3po mode).
        micro_batch_tokens: padded tokens per micro-batch (ours and TRL's).
        source_sizes: rows generated per built-in prompt source of the config (None = the config's);
            small sizes only shorten each run's set-up (every row's answer is validated).
        steps: optimizer steps per run.
        warmup: steps of each run left out of the medians.
        rounds: runs per system (alternating with the other systems).
        temperature: sampling temperature.
        lr: learning rate.
        warmup_lr_steps: linear learning-rate warm-up steps.
        kl_coef: β of the KL penalty (both systems then run a reference model).
        entropy_coef: entropy bonus coefficient.
        router_aux_loss_coef: MoE load-balance coefficient.
        clip_eps: PPO clip ε.
        grad_clip: gradient-norm clip.
        extra_overrides: more `fit` arguments of the ring_lightning runs (e.g. `--trainer.accelerator=gpu`).
        vllm_kwargs: `VLLMEngine` arguments of the systems on the vLLM engine (e.g. `{"enforce_eager": False}`),
            over the config's; the HF-engine systems do not take them.
    """

    model: str = "qwen3-moe-tiny"
    model_overrides: dict[str, Any] = field(default_factory=lambda: {"output_router_logits": False})
    config: str = str(REPO / "benchmarks/rl_workload.yaml")
    prompts: int = 8
    samples: int = 4
    max_tokens: int = 64
    phi: int = 1024
    micro_batch_tokens: int = 4096
    source_sizes: dict[str, int] | None = None
    steps: int = 3
    warmup: int = 1
    rounds: int = 3
    temperature: float = 1.0
    lr: float = 2e-4
    warmup_lr_steps: int = 2
    kl_coef: float = 1e-3
    entropy_coef: float = 5e-4
    router_aux_loss_coef: float = 1e-5
    clip_eps: float = 0.2
    grad_clip: float = 1.0
    extra_overrides: list[str] = field(default_factory=list)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)


def model_dir(model: str, tmp: Path, **overrides) -> str:
    """The model as an HF directory (a preset is saved once, so every system loads the same weights).

    `output_router_logits=False` in the saved config is what transformers' Qwen3-MoE needs inside
    `generate` (its aux loss fails there); the trainers ask for router logits explicitly."""
    if Path(model).is_dir():
        return model
    from ring_lightning.models.loading import load_policy

    policy, tok = load_policy(model, seed=0, **overrides)
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return str(tmp)


def build(w: RLWorkload, mode: str, model: str, engine: str = "vllm", staleness: int = 0,
          kl_coef: float | None = None, recompute_old: bool = False, precision: str = "fp32"):
    """The ring_lightning CLI objects (trainer, model, datamodule) of one run, not started; `kl_coef`
    replaces the workload's β, `recompute_old` sets RLModule's `recompute_old_logprobs`, `precision` is
    one of `PRECISIONS`."""
    from ring_lightning.cli import RingLightningCLI

    if engine == "vllm":
        engine_arg = "--data.init_args.engine.class_path=benchmarks.shared_engine.SharedEngine"
        engine_args = [f"--data.init_args.engine.init_args.{k}={v if isinstance(v, str) else json.dumps(v)}"
                       for k, v in w.vllm_kwargs.items()]  # a JSON string would keep its quotes
    elif engine in ("hf", "hf-copy"):
        copy = "true" if engine == "hf-copy" else "false"
        engine_arg = ('--data.init_args.engine={"class_path": "ring_lightning.rollout.hf_engine.HFEngine", '
                      f'"init_args": {{"max_batch_size": {w.prompts * w.samples}, "copy_model": {copy}}}}}')
        engine_args = []
    else:
        raise ValueError(f"unknown engine {engine!r}; expected 'vllm', 'hf' or 'hf-copy'")
    sizes = [f"--data.init_args.sources.{k}.size={v}" for k, v in (w.source_sizes or {}).items()]
    knobs = {"kl_coef": w.kl_coef if kl_coef is None else kl_coef, "entropy_coef": w.entropy_coef,
             "clip_eps_low": w.clip_eps, "clip_eps_high": w.clip_eps}
    if mode == "c3po":
        knobs["token_budget"] = w.phi
    objective = {"class_path": f"ring_lightning.rl.objectives.{mode.upper()}", "init_args": knobs}
    overrides = [
        "-c", w.config, f"--model.init_args.model={model}", f"--model.init_args.objective={json.dumps(objective)}",
        "--model.init_args.parity=false", f"--model.init_args.recompute_old_logprobs={str(recompute_old).lower()}",
        f"--model.init_args.micro_batch_tokens={w.micro_batch_tokens}", f"--model.init_args.lr={w.lr}",
        f"--model.init_args.warmup_steps={w.warmup_lr_steps}",
        f"--model.init_args.router_aux_loss_coef={w.router_aux_loss_coef}",
        f"--model.init_args.grad_clip={w.grad_clip}", "--model.init_args.activation_checkpointing=false",
        f"--trainer.max_steps={w.steps}", "--trainer.logger=false", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        f"--data.init_args.prompts_per_step={w.prompts}", f"--data.init_args.samples_per_prompt={w.samples}",
        f"--data.init_args.max_response_tokens={w.max_tokens}", f"--data.init_args.temperature={w.temperature}",
        "--data.init_args.top_p=1.0", f"--data.init_args.max_staleness={staleness}", engine_arg, *engine_args, *sizes,
        *precision_overrides(precision, engine), *w.extra_overrides,
    ]
    return RingLightningCLI(args=overrides, run=False)


def run_ours(w: RLWorkload, system: str, model: str, precision: str = "fp32") -> list[dict[str, float]]:
    """One ring_lightning run of `system` (a key of `OURS`) in `precision`; every step's logged metrics."""
    from lightning.pytorch.callbacks import Callback

    rows: list[dict[str, float]] = []

    class Collect(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.c0 = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            cpu = time.process_time() - self.c0
            rows.append({**{k: float(v) for k, v in trainer.callback_metrics.items()}, "cpu/step": cpu})

    cli = build(w, model=model, precision=precision, **OURS[system])
    cli.trainer.callbacks.append(Collect())
    cli.trainer.fit(cli.model, cli.datamodule)
    return rows


def trl_prompt_rows(w: RLWorkload, model: str):
    """The prompts ring_lightning draws in one run (steps x L, in order) and the config's reward router."""
    from ring_lightning.data.rollouts.stream import PromptStream

    dm = build(w, "c3po", model).datamodule
    stream = PromptStream({n: s.load(n) for n, s in dm.sources.items()}, dm.stages, dm.initial_stage, seed=dm.knobs.seed)
    return stream.draw(w.prompts * w.steps), dm.reward


def run_trl_round(w: RLWorkload, model: str, rows, router, precision: str = "fp32") -> list[dict[str, float]]:
    from benchmarks.bench_trl import run_trl

    return run_trl(model, rows, router, precision=precision, samples=w.samples, max_tokens=w.max_tokens,
                   temperature=w.temperature, steps=w.steps, lr=w.lr, warmup_steps=w.warmup_lr_steps, kl_coef=w.kl_coef,
                   entropy_coef=w.entropy_coef, router_aux_loss_coef=w.router_aux_loss_coef, clip_eps=w.clip_eps,
                   grad_clip=w.grad_clip, micro_batch_tokens=w.micro_batch_tokens)


def summarize(runs: list[list[dict[str, float]]], warmup: int) -> dict[str, float]:
    """Medians over the steps after `warmup` of every run (all steps of a run shorter than that)."""
    timed = [r for run in runs for r in (run[warmup:] or run)]
    if not timed:
        raise ValueError("summarize: no steps were recorded")
    med = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731  median: robust to load spikes
    gen, trained, step = med("rollout/generated_tokens"), med("train/loss_tokens"), med("time/step")
    split = {k: med(k) for k in SPLIT}
    return {"steps": float(len(timed)), "gen_tokens": gen, "loss_tokens": trained, "s_step": step,
            "gen_tok_s": statistics.median(r["rollout/generated_tokens"] / r["time/rollout"] for r in timed),
            "train_tok_s": statistics.median(r["train/loss_tokens"] / r["time/train"] for r in timed),
            "e2e_tok_s": statistics.median((r["rollout/generated_tokens"] + r["train/loss_tokens"]) / r["time/step"]
                                           for r in timed),
            "cpu_s_step": med("cpu/step"),
            "e2e_tok_cpu_s": statistics.median((r["rollout/generated_tokens"] + r["train/loss_tokens"]) / r["cpu/step"]
                                               for r in timed),
            **{k.replace("time/", "s_"): v for k, v in split.items()},
            "s_other": max(step - sum(split.values()), 0.0),
            "s_rest": statistics.median(r["time/step"] - r["time/rollout"] - r["time/train"] for r in timed),
            "reward_mean": statistics.mean(r["reward/mean"] for r in timed),
            "reward_first": runs[0][0]["reward/mean"], "reward_last": runs[-1][-1]["reward/mean"]}


def compare(w: RLWorkload, systems: tuple[str, ...] = DEFAULT_SYSTEMS, log=print) -> dict[str, Any]:
    """Run the systems in alternating rounds; returns {system: summary}, the TRL version (or None)
    and the shared engine's starts ((dtype, seconds) each)."""
    from benchmarks.bench_trl import trl_version
    from benchmarks.shared_engine import SharedEngine

    base, threads, precision = {}, {}, {}
    for s in systems:
        base[s], threads[s], precision[s] = parse_variant(s)
    has_trl = "trl" in base.values()
    version = trl_version() if has_trl else None
    if has_trl and version is None:
        log("TRL is not installed: the TRL column is skipped (install the `bench` extra: pip install 'trl>=0.20')")
        systems = tuple(s for s in systems if base[s] != "trl")
        has_trl = False
    tmp = tempfile.TemporaryDirectory(prefix="bench_rl_step_")
    model = model_dir(w.model, Path(tmp.name), **w.model_overrides)
    rows = router = None
    if has_trl:
        rows, router = trl_prompt_rows(w, model)
    # vLLM systems first: starting vLLM in this process changes its CPU threading state (HF generate ran
    # ~2x faster after it in one measurement here), so every run of every system must come after it. Those
    # of one engine dtype run together: the shared engine restarts when the dtype changes.
    vllm = lambda s: base[s] in OURS and OURS[base[s]]["engine"] == "vllm"  # noqa: E731
    systems = tuple(sorted(systems, key=lambda s: (not vllm(s), precision[s] != "fp32" if vllm(s) else 0)))
    runs: dict[str, list[list[dict[str, float]]]] = {s: [] for s in systems}
    SharedEngine.starts = []
    try:
        for r in range(w.rounds):  # every other round in reverse order: a load trend hits all systems alike
            for s in (systems if r % 2 == 0 else systems[::-1]):
                log(f"[rl] round {r + 1}/{w.rounds}: {s} ({w.steps} steps)")
                with torch_threads(threads[s]):
                    runs[s].append(run_trl_round(w, model, rows, router, precision[s]) if base[s] == "trl"
                                   else run_ours(w, base[s], model, precision[s]))
    finally:
        SharedEngine.close_shared()
        tmp.cleanup()
    return {"systems": {s: summarize(v, w.warmup) for s, v in runs.items()}, "trl_version": version,
            "engine_starts": list(SharedEngine.starts), "workload": asdict(w), "runs": runs}


def write_csv(path: str, runs: dict[str, list[list[dict[str, float]]]]) -> None:
    """Every recorded step of every run, with its system, round and step (e.g. reward curves)."""
    import csv

    flat = [{"system": s, "round": i, "step": j, **row} for s, rs in runs.items() for i, run in enumerate(rs)
            for j, row in enumerate(run)]
    keys = ["system", "round", "step"] + sorted({k for r in flat for k in r} - {"system", "round", "step"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)


COLUMNS = ("steps", "gen_tokens", "loss_tokens", "gen_tok_s", "train_tok_s", "e2e_tok_s", "e2e_tok_cpu_s",
           "cpu_s_step", "s_step", "s_rollout",
           "s_reward", "s_train", "s_sync", "s_other", "reward_first", "reward_last")


def format_table(result: dict[str, Any]) -> str:
    lines = [" | ".join([f"{'system':>13}"] + [f"{c:>11}" for c in COLUMNS])]
    for name, s in result["systems"].items():
        lines.append(" | ".join([f"{name:>13}"] + [f"{s[c]:11.4g}" for c in COLUMNS]))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = RLWorkload()
    p.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), type=system_arg,
                   help=f"any of {', '.join(SYSTEMS)}, optionally with @<torch threads> and :<precision> "
                        f"({', '.join(PRECISIONS)}), e.g. trl@2 or c3po@2:bf16")
    p.add_argument("--model", default=d.model, help="preset name or HF model directory")
    for name in ("prompts", "samples", "max_tokens", "phi", "micro_batch_tokens", "steps", "warmup", "rounds"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--vllm-kwargs", type=json.loads, default={}, metavar="JSON",
                   help='VLLMEngine arguments of the vLLM systems, e.g. \'{"enforce_eager": false}\' (torch.compile)')
    p.add_argument("--csv", default=None, help="write every step's metrics of every run here")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: no oversubscription on a "
                   "shared machine)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    w = RLWorkload(model=args.model, **{k: getattr(args, k) for k in ("prompts", "samples", "max_tokens", "phi",
                                                                       "micro_batch_tokens", "steps", "warmup",
                                                                       "rounds")},
                   vllm_kwargs=args.vllm_kwargs)
    result = compare(w, tuple(args.systems))
    print(f"\nRL step: model={w.model} L={w.prompts} K={w.samples} max_tokens={w.max_tokens} Φ={w.phi} "
          f"steps/run={w.steps} (warm-up {w.warmup}) rounds={w.rounds} torch threads={torch.get_num_threads()} "
          f"load average={os.getloadavg()[0]:.1f} trl={result['trl_version']}")
    print(format_table(result))
    if args.csv:
        write_csv(args.csv, result["runs"])
        print(f"every step's metrics: {args.csv}")


if __name__ == "__main__":
    main()
