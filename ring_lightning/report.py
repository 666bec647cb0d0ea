"""The pipeline's report: `<run_dir>/report.md` + PNG training curves + the held-out evaluation table.

Ring-lite (arXiv 2506.14731) reports, per stage of its recipe (long-CoT SFT -> reasoning RL ->
general RL), the training dynamics it steers by — reward, policy entropy (the RL start is chosen
by it), response length and the C3PO token budget per step — and held-out pass@1 averaged over
several samples. This file draws those from what a `pipeline` run leaves behind:

* `<run_dir>/pipeline_state.json` (stages in order, their timings, exports and held-out
  evaluations, `eval/heldout.py`);
* each stage's CSV logs, `<run_dir>/<stage>/**/metrics.csv` (Lightning's CSVLogger; a resumed
  stage writes a new `version_N`, later versions override the same steps).

The skill-or-shortcut tables (trace modes, compliance, controls): `report_skills.py`.
Choices and details: docs/design.md#report.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ring_lightning.eval.heldout import paired_difference

STATE_FILE = "pipeline_state.json"
# plot file -> (title, y label, [(metric, label, style)]); style "line" per step or "points" (sparse)
PLOTS: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "reward.png": ("Reward", "mean reward / pass@1", [
        ("reward/mean", "RL reward (all)", "line"), ("reward/math/mean", "RL reward: math", "line"),
        ("reward/logic/mean", "RL reward: logic", "line"),
        ("reward/instruction/mean", "RL reward: instruction", "line"),
        ("sft/pass@1", "SFT held-out pass@1 (EntropyMonitor)", "points")]),
    "entropy.png": ("Policy entropy", "nats / token", [
        ("train/entropy", "RL: entropy of trained tokens", "line"),
        ("sft/entropy", "SFT: entropy on own samples (EntropyMonitor)", "points")]),
    "response_length.png": ("Response length", "tokens", [
        ("rollout/response_length_mean", "RL: mean rollout length", "line"),
        ("sft/response_length", "SFT: mean sample length (EntropyMonitor)", "points")]),
    "tokens_per_step.png": ("Loss tokens per optimizer step", "tokens", [
        ("train/loss_tokens", "train/loss_tokens", "line")]),
    "loss.png": ("Training loss", "loss", [("train/loss", "train/loss", "line")]),
}


def _version(path: Path) -> tuple[int, str]:
    m = re.search(r"version_(\d+)", str(path))
    return (int(m.group(1)) if m else -1, str(path))


def read_stage_metrics(stage_dir: str | Path) -> dict[int, dict[str, float]]:
    """step -> {metric: value} from every `metrics.csv` under `stage_dir` (older versions first)."""
    merged: dict[int, dict[str, float]] = {}
    for path in sorted(Path(stage_dir).rglob("metrics.csv"), key=_version):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    try:
                        merged.setdefault(step, {})[key] = float(value)
                    except ValueError:
                        continue
    return merged


def _series(metrics: Mapping[int, Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    pts = sorted((s, m[key]) for s, m in metrics.items() if key in m and math.isfinite(m[key]))
    return [s for s, _ in pts], [v for _, v in pts]


def plot_curves(stages: Sequence[tuple[str, Mapping[int, Mapping[str, float]]]], out_dir: str | Path) -> list[Path]:
    """One PNG per `PLOTS` entry with data: one panel per stage, in order, on a shared y axis (the
    panel borders mark the stage boundaries; each x axis counts that stage's optimizer steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, ylabel, curves) in PLOTS.items():
        present = [(m, label, style) for m, label, style in curves
                   if any(_series(metrics, m)[0] for _, metrics in stages)]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages) + 1, 3.8), sharey=True, squeeze=False)
        colors = {m: f"C{i}" for i, (m, _, _) in enumerate(present)}
        handles = {}
        for ax, (name, metrics) in zip(axes[0], stages):
            for metric, label, style in present:
                xs, ys = _series(metrics, metric)
                if not xs:
                    continue
                fmt = dict(marker="o", ms=4, ls="--", lw=0.8) if style == "points" else dict(lw=1.2)
                (line,) = ax.plot(xs, ys, color=colors[metric], label=label, **fmt)
                handles.setdefault(label, line)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle(title)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 3), fontsize=8,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.1 if len(handles) <= 3 else 0.16, 1, 1))
        path = out_dir / filename
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def readiness_section(run_dir: Path, state: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """The SFT checkpoint choice: the band, every candidate's entropy (the curve over SFT steps, also
    plotted to sft_entropy.png) and the pick, from the SFT stage's rl_readiness.json."""
    lines: list[str] = []
    for name in order:
        path = ((state["stages"].get(name) or {}).get("outputs") or {}).get("readiness")
        if not path or not Path(path).is_file():
            continue
        d = json.loads(Path(path).read_text())
        if "band" not in d or not d.get("candidates"):
            continue  # a selector file without the table (written by something else)
        lo, hi = d["band"]
        chosen = (d.get("chosen") or {}).get("step")
        lines += [f"## SFT checkpoint for RL ({name})", "", f"Entropy band [{lo}, {hi}] nats, rule {d['rule']!r}: "
                  f"{d['reason']}", "", "| SFT step | entropy | probe pass@1 | in band | chosen |", "|---|---|---|---|---|"]
        for c in d["candidates"]:
            lines.append(f"| {c['step']} | {_fmt(c['entropy'])} | {_fmt(c.get('accuracy'))} | "
                         f"{'yes' if c.get('in_band') else 'no'} | {'**yes**' if c['step'] == chosen else ''} |")
        plot = _entropy_plot(d, run_dir / "sft_entropy.png")
        lines += ["", f"![sft entropy]({plot.name})", ""]
    return lines


def _entropy_plot(decision: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = decision["candidates"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.axhspan(*decision["band"], color="C2", alpha=0.2, label="band")
    ax.plot([c["step"] for c in cands], [c["entropy"] for c in cands], "o-", label="entropy (probe)")
    chosen = decision.get("chosen") or {}
    if chosen.get("step") is not None:
        ax.plot([chosen["step"]], [chosen["entropy"]], "r*", ms=14, label="chosen")
    ax.set_xlabel("SFT optimizer step")
    ax.set_ylabel("nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def heldout_table(evals: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """Markdown lines: one row per (set or set/domain, metric), one column per evaluated stage,
    then the change between consecutive stages with its paired standard error."""
    evals = [(n, e) for n, e in evals if e]
    if not evals:
        return ["No held-out evaluation was run (configure the pipeline's `evaluation`)."]
    names = [n for n, _ in evals]
    keys: list[tuple[str, str | None]] = []  # (set, domain or None)
    for _, e in evals:
        for s in e["sets"]:
            if (s, None) not in keys:
                keys.append((s, None))
            for d in e.get("domains", {}).get(s, {}):
                if (s, d) not in keys:
                    keys.append((s, d))

    def get(e: Mapping[str, Any], s: str, d: str | None) -> Mapping[str, Any] | None:
        return e["sets"].get(s) if d is None else e.get("domains", {}).get(s, {}).get(d)

    pairs = list(zip(names, names[1:]))
    head = ["held-out set", "metric", *[f"after {n}" for n in names], *[f"{a} → {b}" for a, b in pairs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, d in keys:
        label = s if d is None else f"{s} / {d}"
        sums = [get(e, s, d) for _, e in evals]
        first = next(x for x in sums if x)
        if not first.get("scored", True):  # control prompts: nothing to score (see "Skill or shortcut")
            continue
        lines.append(f"| {label} ({first['prompts']} prompts × {first['samples'] // first['prompts']}) | pass@1 | "
                     + " | ".join("–" if x is None else f"{x['pass@1']:.3f} ± {x['pass@1_se']:.3f}" for x in sums)
                     + "".join(f" | {_delta(sums[i], sums[i + 1])}" for i in range(len(pairs))) + " |")
        for k in sorted({int(key[5:]) for x in sums if x for key in x if re.fullmatch(r"pass@\d+", key)} - {1}):
            lines.append(f"| {label} | pass@{k} | " + " | ".join(_fmt(x.get(f"pass@{k}") if x else None) for x in sums)
                         + " |" * (len(pairs) + 1))
    return lines


def _delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    if not before or not after:
        return "–"
    try:
        mean, se = paired_difference(before, after)
    except ValueError:
        return f"{after['pass@1'] - before['pass@1']:+.3f}"
    return f"{mean:+.3f} ± {se:.3f}"


def _stage_rows(state: Mapping[str, Any], order: Sequence[str], metrics: Mapping[str, Mapping[int, Any]]) -> list[str]:
    lines = ["| stage | status | attempts | optimizer steps | wall time | held-out eval | output |",
             "|---|---|---|---|---|---|---|"]
    for name in order:
        rec = state["stages"].get(name, {})
        wall = (rec["finished_at"] - rec["started_at"]) if rec.get("finished_at") and rec.get("started_at") else None
        ev = rec.get("eval") or {}
        out = rec.get("outputs") or {}
        note = out.get("model", "–")
        if out.get("chosen_step") is not None:
            note += f" (SFT checkpoint of step {out['chosen_step']}, entropy {_fmt(out.get('entropy'))}"
            note += ", fallback: outside the band)" if out.get("fallback") else ")"
        steps = max(metrics[name]) + 1 if metrics.get(name) else "–"  # CSVLogger steps count from 0
        lines.append(f"| {name} | {rec.get('status', 'pending')} | {rec.get('attempts', 0)} | {steps} | "
                     f"{_fmt(wall, 0) + ' s' if wall is not None else '–'} | "
                     f"{_fmt(ev.get('seconds'), 0) + ' s' if ev.get('seconds') is not None else '–'} | {note} |")
    return lines


def build_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.md` and its PNGs from the run's state and logs; returns the report path."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"report: {state_path} not found; run `python -m ring_lightning pipeline -c ...` first")
    state = json.loads(state_path.read_text())
    order = state.get("stage_order") or list(state.get("stages", {}))
    metrics = {name: read_stage_metrics(run_dir / name) for name in order}
    plots = plot_curves([(n, metrics[n]) for n in order], run_dir)
    evals = [(n, (state["stages"].get(n) or {}).get("eval")) for n in order]
    first_eval = next((e for _, e in evals if e), None)
    lines = [f"# Pipeline report: {run_dir}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{STATE_FILE}` and the stages' CSV logs.", ""]
    if state.get("started_at") and state.get("finished_at"):
        lines += [f"Pipeline wall time: {state['finished_at'] - state['started_at']:.0f} s "
                  "(this invocation, including held-out evaluations).", ""]
    lines += ["## Stages", "", *_stage_rows(state, order, metrics), ""]
    lines += readiness_section(run_dir, state, order)
    moves = [(n, ((state["stages"].get(n) or {}).get("outputs") or {}).get("transition")) for n in order]
    if any(m for _, m in moves):
        from ring_lightning.callbacks.stage_transition import describe_record

        lines += ["## Stage moves", "", "Decided by each stage's StageTransition callback on logged signals "
                  "(`stage_transition.json` in the stage directory); `max_steps` is only a cap.", ""]
        lines += [f"- **{n}**: {describe_record(m)}" for n, m in moves if m] + [""]
    lines += ["## Held-out evaluation", ""]
    if first_eval:
        spec = first_eval.get("spec", {})
        lines += [f"Prompts never seen in training, {spec.get('samples_per_prompt', '?')} samples per prompt at "
                  f"temperature {spec.get('temperature', '?')} (max {spec.get('max_tokens', '?')} tokens, seed "
                  f"{spec.get('seed', '?')}). pass@1 = mean over prompts of the fraction of correct samples "
                  "(instruction prompts: every instruction followed), ± its standard error over prompts; "
                  "pass@k unbiased (Chen et al. 2021); changes are paired (same prompts and seeds), ± standard "
                  "error.", ""]
    lines += heldout_table(evals) + [""]
    from ring_lightning.report_skills import skills_section  # it imports this module's formatting

    lines += skills_section(evals) + ["## Training curves", ""]
    if not plots:
        lines.append("No metrics.csv found under the stage directories (stages without a CSVLogger).")
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ring_lightning.report <run_dir>", file=sys.stderr)
        return 2
    try:
        print(build_report(args[0]))
    except FileNotFoundError as e:
        print(f"ring_lightning report: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
