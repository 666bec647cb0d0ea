"""The study's report: `study.md` (tables, observations stated from the numbers), `study.json`, PNG curves.

Ring-lite's claims it is held against: §4.3 (RL gain depends on the SFT start; the entropy band
0.3-0.5 nats) and Fig. 7 (C3PO: constant trained tokens per step, a steadier gradient norm than GRPO).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ring_lightning.eval.heldout import paired_difference

REPORT_BAND = (0.3, 0.5)  # Ring-lite §4.3: start RL at SFT entropy 0.3-0.5 nats


def _stats(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, sample variance); variance 0 for fewer than two values, NaN for none."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.variance(xs) if len(xs) > 1 else 0.0


def _series(metrics: Mapping[int, Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of `read_stage_metrics`' output, finite values only, by step."""
    pts = sorted((s, m[key]) for s, m in metrics.items() if key in m and math.isfinite(m[key]))
    return [s for s, _ in pts], [v for _, v in pts]


def _values(run: Mapping[str, Any], key: str) -> list[float]:
    return _series(run["metrics"], key)[1]


def start_row(s: Mapping[str, Any]) -> dict[str, Any]:
    """One start of (a): SFT entropy, held-out before/after, gain, RL entropy first/last, token efficiency."""
    ent = _values(s, "train/entropy")
    trained = _values(s, "tokens/rl_trained")
    rl_tokens = trained[-1] if trained else sum(_values(s, "train/loss_tokens"))
    sft_tokens = s.get("sft_tokens") or 0
    return {"step": s["step"], "sft_tokens": sft_tokens, "entropy": s["entropy"], "probe_pass@1": s.get("accuracy"),
            "before": s["before"]["pass@1"], "after": s["after"]["pass@1"], "gain": s["gain"][0],
            "gain_se": s["gain"][1], "rl_entropy_first": ent[0] if ent else math.nan,
            "rl_entropy_last": ent[-1] if ent else math.nan, "rl_tokens": rl_tokens,
            "token_efficiency": rl_tokens / sft_tokens if sft_tokens else math.nan}


def objective_row(name: str, run: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """One objective of (b): grad-norm mean/variance, loss tokens per step, reward first/last, held-out."""
    g_mean, g_var = _stats(_values(run, "train/grad_norm"))
    t_mean, t_var = _stats(_values(run, "train/loss_tokens"))
    reward = _values(run, "reward/mean")
    head, tail = reward[:5], reward[-5:]
    return {"objective": name, "steps": len(reward), "grad_norm_mean": g_mean, "grad_norm_var": g_var,
            "grad_norm_cv": math.sqrt(g_var) / g_mean if g_mean else math.nan, "loss_tokens_mean": t_mean,
            "loss_tokens_sd": math.sqrt(t_var) if t_var == t_var else math.nan,
            "reward_first5": _stats(head)[0], "reward_last5": _stats(tail)[0], "before": before["pass@1"],
            "after": run["after"]["pass@1"], "gain": run["gain"][0], "gain_se": run["gain"][1]}


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table_a(rows: Sequence[Mapping[str, Any]], chosen: int) -> list[str]:
    out = ["| SFT step | SFT loss tokens | entropy (probe) | probe pass@1 | held-out pass@1 after SFT | after RL "
           "| RL gain (paired ± s.e.) | RL entropy first → last | RL trained tokens | token efficiency (RL/SFT) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (chosen)" if r["step"] == chosen else ""
        out.append(f"| {r['step']}{mark} | {r['sft_tokens']} | {_f(r['entropy'])} | {_f(r['probe_pass@1'])} "
                   f"| {_f(r['before'])} | {_f(r['after'])} | {r['gain']:+.3f} ± {r['gain_se']:.3f} "
                   f"| {_f(r['rl_entropy_first'])} → {_f(r['rl_entropy_last'])} | {int(r['rl_tokens'])} "
                   f"| {_f(r['token_efficiency'], 4)} |")
    return out


def table_b(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["| objective | RL steps | grad-norm mean | grad-norm variance | grad-norm CV | trained tokens / step "
           "(mean ± sd) | reward, first 5 steps | reward, last 5 steps | held-out pass@1 after RL "
           "| gain (paired ± s.e.) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['objective']} | {r['steps']} | {r['grad_norm_mean']:.3g} | {r['grad_norm_var']:.3g} "
                   f"| {_f(r['grad_norm_cv'])} | {_f(r['loss_tokens_mean'], 1)} ± {_f(r['loss_tokens_sd'], 1)} "
                   f"| {_f(r['reward_first5'])} | {_f(r['reward_last5'])} | {_f(r['after'])} "
                   f"| {r['gain']:+.3f} ± {r['gain_se']:.3f} |")
    return out


def observe_a(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What (a) shows, stated from the numbers (including where the report's finding does not transfer)."""
    best = max(rows, key=lambda r: (r["gain"], r["step"]))  # ties: the longer SFT
    longest = max(rows, key=lambda r: r["step"])
    by_step = ", ".join(f"{r['step']}: {r['gain']:+.3f}" for r in sorted(rows, key=lambda r: r["step"]))
    out = [f"- RL gain by SFT step ({by_step}); the largest came from the step {best['step']} start (entropy "
           f"{best['entropy']:.3f}, {best['gain']:+.3f} ± {best['gain_se']:.3f})."]
    gains = [r["gain"] for r in sorted(rows, key=lambda r: r["step"])]
    if len(set(gains)) == 1:
        out.append("- Every start gained the same: this run does not tell SFT lengths apart.")
    elif best["step"] == longest["step"]:
        trend = "RL gains grow with SFT length" if gains == sorted(gains) else "The longest SFT is the best start"
        out.append(f"- {trend} here: at this scale more SFT is the better RL start, and the report's "
                   "finding (an earlier, higher-entropy checkpoint is the better start) does not reproduce.")
    else:
        out.append(f"- A shorter SFT (step {best['step']}) beat the longest (step {longest['step']}, "
                   f"{longest['gain']:+.3f} ± {longest['gain_se']:.3f}) as an RL start, as the report finds.")
    inside = [r for r in rows if REPORT_BAND[0] <= r["entropy"] <= REPORT_BAND[1]]
    if inside:
        mean_in = statistics.fmean(r["gain"] for r in inside)
        others = [r["gain"] for r in rows if r not in inside]
        tail = f" vs {statistics.fmean(others):+.3f} outside" if others else ""
        out.append(f"- {len(inside)} start(s) have entropy inside the report's {REPORT_BAND[0]}-{REPORT_BAND[1]} "
                   f"nats band; their mean gain is {mean_in:+.3f}{tail}; the best start is "
                   + ("inside it, as the report finds." if best in inside else "outside it (not as the report finds)."))
    else:
        out.append(f"- No start has entropy in the report's {REPORT_BAND[0]}-{REPORT_BAND[1]} nats band (range "
                   f"{min(r['entropy'] for r in rows):.3f}-{max(r['entropy'] for r in rows):.3f}): the band's "
                   "absolute values do not transfer to a model this small.")
    eff = max(rows, key=lambda r: r["token_efficiency"] if r["token_efficiency"] == r["token_efficiency"] else -1)
    out.append(f"- Token efficiency (RL / SFT loss tokens) is highest for the shortest SFT by construction (same RL "
               f"tokens, fewer SFT tokens): {_f(eff['token_efficiency'], 4)} at step {eff['step']}.")
    return out


def observe_b(c3po: Mapping[str, Any], grpo: Mapping[str, Any], diff: tuple[float, float]) -> list[str]:
    """What (b) shows against Fig. 7: tokens per step, gradient-norm variance, reward and held-out."""
    def cmp(a: float, b: float, lower: str, same: str, higher: str) -> str:
        return lower if a < b else same if a == b else higher

    c_var, g_var = c3po["grad_norm_var"], grpo["grad_norm_var"]
    ratio = c_var / g_var if g_var else (1.0 if c_var == 0 else math.inf)
    out = [f"- Trained tokens per step: C3PO {c3po['loss_tokens_mean']:.1f} ± {c3po['loss_tokens_sd']:.1f}, GRPO "
           f"{grpo['loss_tokens_mean']:.1f} ± {grpo['loss_tokens_sd']:.1f}: "
           + cmp(c3po["loss_tokens_sd"], grpo["loss_tokens_sd"],
                 "C3PO's is the steadier (exactly Φ by construction), as in Fig. 7.",
                 "equally steady (the responses' lengths barely vary here).",
                 "C3PO's is NOT steadier here, unlike Fig. 7."),
           f"- Gradient-norm variance: C3PO {c3po['grad_norm_var']:.3g}, GRPO {grpo['grad_norm_var']:.3g} (CV "
           f"{c3po['grad_norm_cv']:.3f} vs {grpo['grad_norm_cv']:.3f}): "
           + ("within 10% of each other: the report's steadier C3PO gradient does not reproduce at this scale."
              if abs(ratio - 1) <= 0.1 else "lower for C3PO, as the report finds." if ratio < 1 else
              "HIGHER for C3PO at this scale (the report's finding does not reproduce)."),
           f"- GRPO trains {grpo['loss_tokens_mean'] / max(c3po['loss_tokens_mean'], 1e-9):.2f}× C3PO's tokens per "
           f"step. Reward "
           f"over the last 5 steps: C3PO {c3po['reward_last5']:.3f}, GRPO {grpo['reward_last5']:.3f}; held-out "
           f"pass@1 after RL: C3PO {c3po['after']:.3f}, GRPO {grpo['after']:.3f} (C3PO − GRPO, paired: "
           f"{diff[0]:+.3f} ± {diff[1]:.3f}: "
           + ("within 2 s.e., no measurable difference)." if abs(diff[0]) <= 2 * diff[1] else "beyond 2 s.e.).")]
    return out


def plot(out: Path, runs: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[tuple[str, str]],
         filename: str, title: str) -> Path:
    """One panel per metric key, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for name, run in runs:
            xs, ys = _series(run["metrics"], key)
            ax.plot(xs, ys, lw=1.2, marker="o" if len(xs) < 8 else None, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(out: Path, spec: Any, starts: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
                 grpo: Mapping[str, Any], seconds: float, timings: Mapping[str, float]) -> Path:
    """`<out>/study.md` + `study.json` + rl_entropy.png + c3po_vs_grpo.png; returns the markdown path."""
    rows = [start_row(s) for s in starts]
    obj = [objective_row("C3PO", base, base["before"]), objective_row("GRPO", grpo, base["before"])]
    diff = paired_difference(grpo["after"], base["after"])
    runs_a = [(f"SFT step {s['step']} (H={s['entropy']:.2f})", s) for s in starts]
    plot(out, runs_a, [("train/entropy", "train/entropy"), ("reward/mean", "reward/mean")], "rl_entropy.png",
         "Reasoning RL (C3PO) from each SFT start")
    plot(out, [("C3PO", base), ("GRPO", grpo)], [("train/grad_norm", "train/grad_norm"),
         ("train/loss_tokens", "trained tokens per step"), ("reward/mean", "reward/mean")], "c3po_vs_grpo.png",
         f"C3PO vs GRPO from SFT step {base['step']}")
    lines = ["# Study: Ring-lite's two RL findings at tiny scale", "",
             f"Command: `python -m ring_lightning study` (out_dir {spec.out_dir}); {spec.rl_steps} RL steps per run, "
             f"held-out set `{spec.eval_set}` ({starts[0]['before']['prompts']} prompts × "
             f"{spec.evaluation.samples_per_prompt} samples, temperature {spec.evaluation.temperature}); "
             f"wall time {seconds:.0f} s (this invocation), of which fits {sum(timings.values()):.0f} s over "
             f"{len(timings)} runs (timings.json; runs reused from an earlier invocation keep their time).", "",
             "## (a) RL from SFT checkpoints of several lengths (report §4.3)", "",
             *table_a(rows, base["step"]), "", "![RL entropy and reward](rl_entropy.png)", "", "Observed:",
             *observe_a(rows), "",
             f"## (b) C3PO vs GRPO from the same start (SFT step {base['step']}, the selector's choice; report Fig. 7)",
             "", *table_b(obj), "", "![C3PO vs GRPO](c3po_vs_grpo.png)", "", "Observed:",
             *observe_b(obj[0], obj[1], diff), "",
             "Deterministic on one machine (fixed seeds); entropies and pass@1 differ slightly across machines.", ""]
    (out / "study.json").write_text(json.dumps({"starts": rows, "objectives": obj, "c3po_minus_grpo": diff,
                                                "chosen_step": base["step"], "seconds": seconds,
                                                "fit_seconds": dict(timings)}, indent=2) + "\n")
    path = out / "study.md"
    path.write_text("\n".join(lines))
    return path
