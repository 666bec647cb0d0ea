"""The report's "skill or shortcut" section: math trace modes, per-constraint compliance next to its
shortcut controls, and a few stored samples, per held-out set and stage.

A pass@1 gain alone does not say whether a stage taught the skill or a shortcut (guessing instead
of adding; one style for every answer whatever was asked). These tables come from each stage's
`summary["analysis"]` and `summary["examples"]` (`eval/diagnostics.py`, stored by
`eval/heldout.evaluate_model`); a stage evaluated before diagnostics existed shows "–". Changes
between consecutive stages are paired over the same prompts (same set and seed); "n/a" when the
two stages scored different numbers of prompts. Details: docs/design.md#eval-diagnostics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ring_lightning.eval.diagnostics import CONTROL_FAMILY, KINDS, LONG_WORDS, MODES, paired
from ring_lightning.report import _fmt

Evals = Sequence[tuple[str, Mapping[str, Any]]]


def _analysis(e: Mapping[str, Any], s: str, domain: str) -> Mapping[str, Any] | None:
    return ((e["sets"].get(s) or {}).get("analysis") or {}).get(domain)


def _domain_summary(e: Mapping[str, Any], s: str, domain: str) -> Mapping[str, Any] | None:
    """The set's summary restricted to `domain` (mixed sets), else the set's own."""
    return (e.get("domains", {}).get(s) or {}).get(domain) or e["sets"].get(s)


def math_modes_table(evals: Evals, s: str) -> list[str]:
    """One row per stage: guess / reasoned / other shares, accuracy when reasoned, pass@1 ± SE, pass@k."""
    sums = [_domain_summary(e, s, "math") for _, e in evals]
    ks = sorted({int(k[5:]) for x in sums if x for k in x if re.fullmatch(r"pass@\d+", k)} - {1})
    head = ["stage", *[f"{m} share" for m in MODES], "accuracy when reasoned", "pass@1", *[f"pass@{k}" for k in ks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, e), x in zip(evals, sums):
        a = _analysis(e, s, "math")
        modes = [_fmt(a["shares"].get(m)) if a else "–" for m in MODES]
        reasoned = _fmt(a["accuracy"].get("reasoned")) if a else "–"
        p1 = f"{x['pass@1']:.3f} ± {x['pass@1_se']:.3f}" if x else "–"
        lines.append(f"| {name} | " + " | ".join([*modes, reasoned, p1, *[_fmt(x.get(f"pass@{k}") if x else None)
                                                                       for k in ks]]) + " |")
    return lines


def _paired_cell(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    if not before or not after:
        return "–"
    if len(before["rates"]) != len(after["rates"]):
        return "n/a"
    mean, se = paired(before["rates"], after["rates"])
    return f"{mean:+.3f} ± {se:.3f}"


def rate_table(evals: Evals, s: str, part: str, keys: Sequence[str], label: str) -> list[str]:
    """Rows = `keys` present in some stage's `analysis.instruction[part]`; columns = stages (mean over
    prompts (prompts)), then the paired change between consecutive stages."""
    stats = [((_analysis(e, s, "instruction") or {}).get(part) or {}) for _, e in evals]
    names = [n for n, _ in evals]
    pairs = list(zip(names, names[1:]))
    head = [label, *[f"after {n}" for n in names], *[f"Δ {a}→{b}" for a, b in pairs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in [k for k in keys if any(k in st for st in stats)]:
        cells = [f"{st[key]['mean']:.3f} ({st[key]['prompts']})" if key in st else "–" for st in stats]
        deltas = [_paired_cell(stats[i].get(key), stats[i + 1].get(key)) for i in range(len(pairs))]
        lines.append(f"| {key} | " + " | ".join(cells + deltas) + " |")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def samples_section(evals: Evals, s: str) -> list[str]:
    """The stored examples of the last stage that has them."""
    last = next(((n, e["sets"][s]["examples"]) for n, e in reversed(evals)
                 if (e["sets"].get(s) or {}).get("examples")), None)
    if last is None:
        return []
    name, exs = last
    lines = [f"#### Samples: {s}, after {name}", ""]
    for ex in exs:
        lines += [f"**{ex.get('id', '?')}**: {_one_line(ex['prompt'])}", ""]
        for text in ex["responses"]:
            lines += ["```text", text.replace("```", "'''"), "```", ""]
    return lines


INTRO = ("Does a pass@1 change come from the skill or from a shortcut? Math: each sample's `<think>` trace "
         "is a *guess* (it says \"Quick guess.\"), *reasoned* (it has addition steps \"a + b = c.\") or "
         "*other*; shares over all samples, accuracy among the reasoned ones. Instructions: *compliance* "
         "is, among the prompts that ask for a constraint, the mean per-prompt share of samples meeting it "
         "(number of prompts in brackets). A *shortcut control* measures a fixed response property "
         f"(upper / lower case, long = at least {LONG_WORDS} words, short = 1 to {LONG_WORDS - 1} words, "
         "each of the task's keywords, each of its end phrases) on a control set of prompts that ask "
         "nothing (never trained by RL): a learned skill raises compliance and leaves the control flat; a "
         "style shortcut moves the control too. The same properties on the *unasked families* of prompts "
         "that ask two others show how well the policy tells asked from unasked: there, a policy that "
         "reads better also moves. Changes are paired over the same prompts, ± standard error.")


def _has(evals: Evals, s: str, part: str) -> bool:
    return any(((_analysis(e, s, "instruction") or {}).get(part)) for _, e in evals)


def _is_control_set(evals: Evals, s: str) -> bool:
    return any(not (e["sets"].get(s) or {}).get("scored", True) for _, e in evals)


def skills_section(evals: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """Markdown lines of the whole section; [] when no stage stored an analysis."""
    evals = [(n, e) for n, e in evals if e]
    sets: list[str] = []
    for _, e in evals:
        sets += [s for s in e["sets"] if s not in sets]
    have = [s for s in sets if any((e["sets"].get(s) or {}).get("analysis") for _, e in evals)]
    if not have:
        return []
    lines = ["## Skill or shortcut", "", INTRO, ""]
    for s in have:
        if any(_analysis(e, s, "math") for _, e in evals):
            lines += [f"### {s}: math trace modes", "", *math_modes_table(evals, s), ""]
        if _has(evals, s, "compliance"):
            lines += [f"### {s}: per-constraint compliance", "",
                      *rate_table(evals, s, "compliance", list(KINDS), "constraint"), ""]
        if _has(evals, s, "control"):
            title = ("shortcut control (prompts that ask nothing)" if _is_control_set(evals, s)
                     else "unasked families (each property where its family is not asked)")
            lines += [f"### {s}: {title}", "", *rate_table(evals, s, "control", list(CONTROL_FAMILY), "property"), ""]
        lines += samples_section(evals, s)
    return lines
