"""End-to-end RL step throughput of the quickstart workload, C3PO vs GRPO.

Builds the model, data module (embedded vLLM engine + reward router) and trainer from
configs/quickstart/rl_reasoning.yaml exactly as `python -m ring_lightning fit` does, runs a few
optimizer steps in each loss mode (one vLLM engine, shared by the runs), and prints per mode:
generated and trained tokens/s, (generated + trained) tokens/s over the whole step, and the time split
rollout / reward / train / sync, as medians over the steps after `--warmup` (the first steps pay for
allocator and kernel warm-up; medians resist load spikes on shared machines). Also prints the mean
reward of the first and last steps.

    python benchmarks/bench_rl_step.py                              # random-init bailing-tiny
    python benchmarks/bench_rl_step.py --model runs/quickstart/sft_export --steps 6
    python benchmarks/bench_rl_step.py --modes c3po --steps 40 --csv /tmp/c3po.csv   # a learning run

Numbers depend on the machine and its load; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parents[1]
SPLIT = ("time/rollout", "time/reward", "time/train", "time/sync", "time/step")


def model_dir(model: str, tmp: Path) -> str:
    """The model as an HF directory (a preset is saved once, so the engine can load it by path)."""
    if Path(model).is_dir():
        return model
    from ring_lightning.models.loading import load_policy

    policy, tok = load_policy(model, seed=0)
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return str(tmp)


def build(args, mode: str):
    from ring_lightning.cli import RingLightningCLI

    overrides = [
        "-c", str(REPO / "configs/quickstart/rl_reasoning.yaml"),
        f"--model.init_args.model={args.model}", f"--model.init_args.loss_mode={mode}",
        f"--model.init_args.token_budget={args.phi}", f"--trainer.max_steps={args.steps}",
        "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
        f"--data.init_args.prompts_per_step={args.prompts}", f"--data.init_args.samples_per_prompt={args.samples}",
        f"--data.init_args.max_response_tokens={args.max_tokens}",
    ]
    return RingLightningCLI(args=overrides, run=False)


def run(args, mode: str, engine):
    from lightning.pytorch.callbacks import Callback

    rows: list[dict[str, float]] = []

    class Collect(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    cli = build(args, mode)
    if engine is None:  # start the configured engine once; every run syncs its policy into it at bind
        engine = cli.datamodule.engine_factory(args.model, None)
    cli.datamodule.engine_factory = engine
    cli.trainer.callbacks.append(Collect())
    cli.trainer.fit(cli.model, cli.datamodule)
    return rows, engine


def summarize(mode: str, rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
    timed = rows[warmup:] or rows
    mean = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731  median: robust to load spikes
    gen, trained = mean("rollout/generated_tokens"), mean("train/loss_tokens")
    step = mean("time/step")
    return {"mode": mode, "steps": len(rows), "gen_tok_s": gen / mean("time/rollout"),
            "train_tok_s": trained / mean("time/train"), "step_tok_s": (gen + trained) / step,
            **{k: mean(k) for k in SPLIT}, "gen_tokens": gen, "loss_tokens": trained,
            "reward_first": rows[0]["reward/mean"], "reward_last": rows[-1]["reward/mean"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bailing-tiny", help="SFT export directory or preset name")
    p.add_argument("--modes", nargs="+", default=["c3po", "grpo"], choices=["c3po", "grpo"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="steps left out of the averages")
    p.add_argument("--phi", type=int, default=2048, help="C3PO token budget Φ")
    p.add_argument("--prompts", type=int, default=16, help="L")
    p.add_argument("--samples", type=int, default=8, help="K")
    p.add_argument("--max-tokens", type=int, default=160, help="max response tokens")
    p.add_argument("--csv", default=None, help="write every step's metrics of the first mode here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="bench_rl_step_")
    args.model = model_dir(args.model, Path(tmp.name))
    results, engine = [], None
    for i, mode in enumerate(args.modes):
        rows, engine = run(args, mode, engine)
        if i == 0 and args.csv:
            keys = sorted({k for r in rows for k in r})
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)
        results.append(summarize(mode, rows, args.warmup))
    engine.close()
    print(f"\nquickstart RL step (L={args.prompts}, K={args.samples}, max {args.max_tokens} tokens, "
          f"Φ={args.phi}, model={args.model}, torch threads={__import__('torch').get_num_threads()})")
    head = ["mode", "steps", "gen_tok_s", "train_tok_s", "step_tok_s", *SPLIT, "gen_tokens", "loss_tokens",
            "reward_first", "reward_last"]
    print(" | ".join(h.replace("time/", "s_") for h in head))
    for r in results:
        print(" | ".join(f"{r[h]:.3g}" if isinstance(r[h], float) else str(r[h]) for h in head))


if __name__ == "__main__":
    main()
