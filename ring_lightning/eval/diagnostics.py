"""Skill or shortcut: what the held-out samples did, beyond how often they were right.

Ring-lite (arXiv 2506.14731, §5) reports avg@n pass@1 only. On the quickstart's tiny tasks a pass@1
gain can come from a shortcut (guessing instead of adding; writing every answer short or lowercase
whatever was asked), so each evaluated set also gets: math trace modes (share of guessed /
reasoned / other traces, accuracy per mode) and, for IFEval-style rows, per-constraint compliance
on the prompts that ask for it next to shortcut controls — the same response properties measured
on prompts that ask nothing of them. Pure functions of rows, texts and correctness; the checkers
are the instruction reward's (`rewards/instruction_checks.CHECKS`, answer after the last
``</think>``), so compliance agrees with the reward. Choices: docs/design.md#eval-diagnostics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ring_lightning.data.synthetic.instruction_pairs import END_PHRASES, KEYWORD, LENGTH_WORDS
from ring_lightning.data.synthetic.problems import QUICK_GUESS
from ring_lightning.rewards.extraction import THINK_END, THINK_START, strip_thinking
from ring_lightning.rewards.instruction_checks import CHECKS, check_kwargs, words
from ring_lightning.rewards.unscored import UNSCORED
from ring_lightning.rows import PromptRow

MODES = ("guess", "reasoned", "other")
STEP_LINE = re.compile(r"\d+ \+ \d+ = \d+\.")  # one addition step of a reasoned trace: "3 + 4 = 7."

# constraint kind -> (IFEval id, relation of length_constraints:number_words or None)
KINDS: dict[str, tuple[str, str | None]] = {
    "upper": ("change_case:english_capital", None),
    "lower": ("change_case:english_lowercase", None),
    "at_least": ("length_constraints:number_words", "at least"),
    "fewer_than": ("length_constraints:number_words", "less than"),
    "keyword": ("keywords:existence", None),
    "no_keyword": ("keywords:forbidden_words", None),
    "ending": ("startend:end_checker", None),
}
FAMILIES: dict[str, tuple[str, ...]] = {"case": ("upper", "lower"), "length": ("at_least", "fewer_than"),
                                        "keyword": ("keyword", "no_keyword"),
                                        "ending": ("ending",)}
# A prompt with any number_words instruction asks something of length, whatever its relation.
FAMILY_IDS: dict[str, tuple[str, ...]] = {f: tuple(sorted({KINDS[k][0] for k in ks})) for f, ks in FAMILIES.items()}

LONG_WORDS = LENGTH_WORDS   # "long": at least this many words; "short": fewer, at least one (complements)
CONTROL_FAMILY = {"upper": "case", "lower": "case", "long": "length", "short": "length",
                  f"keyword {KEYWORD}": "keyword",
                  **{f"ending {p}": "ending" for p in END_PHRASES}}
"""Shortcut controls: response properties with fixed references (the length threshold, each of the
synthetic task's KEYWORD, each of its END_PHRASES), each measured only on prompts that ask nothing of its
family. The references are fixed, not the prompt's own (a prompt with no constraint has no target), so
a control is comparable between stages: a real skill raises compliance where it is asked and leaves
the control flat; a style shortcut (answer in lowercase / short / with a stock ending everywhere)
moves the control as much as the compliance."""

_END = CHECKS["startend:end_checker"].fn


def think_part(text: str) -> str:
    """The reasoning trace: before the last ``</think>`` (less an opening ``<think>``), after a
    ``<think>`` that never closes, or the whole text when it has neither tag (a tokenizer that marks
    the tags special loses them in the engines' ``skip_special_tokens=True`` decode; the shipped one
    does not, as Qwen3's)."""
    end = text.rfind(THINK_END)
    head = text[:end] if end >= 0 else text
    start = head.find(THINK_START)
    return head[start + len(THINK_START):] if start >= 0 else head


def trace_mode(text: str) -> str:
    """"guess" (the trace says QUICK_GUESS), "reasoned" (it has an addition step line) or "other"."""
    think = think_part(text)
    if QUICK_GUESS in think:
        return "guess"
    if STEP_LINE.search(think):
        return "reasoned"
    return "other"


def math_modes(texts: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]]) -> dict[str, Any]:
    """Trace modes of per-prompt samples: {"shares": {mode: share of all samples}, "accuracy": {mode:
    share correct among that mode's samples, None without any}, "counts": {mode: samples}}."""
    if len(texts) != len(correct) or any(len(t) != len(c) for t, c in zip(texts, correct)):
        raise ValueError(f"math_modes: texts {[len(t) for t in texts]} and correct {[len(c) for c in correct]} "
                         "must have the same per-prompt lengths")
    counts = dict.fromkeys(MODES, 0)
    right = dict.fromkeys(MODES, 0)
    for ts, cs in zip(texts, correct):
        for t, c in zip(ts, cs):
            m = trace_mode(t)
            counts[m] += 1
            right[m] += bool(c)
    total = sum(counts.values())
    return {"shares": {m: counts[m] / total if total else None for m in MODES},
            "accuracy": {m: right[m] / counts[m] if counts[m] else None for m in MODES},
            "counts": counts}


def _kind(iid: str, kwargs: Mapping[str, Any]) -> str | None:
    for kind, (kid, relation) in KINDS.items():
        if iid == kid and (relation is None or kwargs.get("relation") == relation):
            return kind
    return None


def row_constraints(row: PromptRow) -> tuple[dict[str, list[tuple[str, dict[str, Any]]]], set[str]]:
    """({kind: [(id, kwargs)]}, families the row asks something of) from `row.instructions`;
    unknown ids, kinds outside KINDS and invalid kwargs are left out."""
    kinds: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    families: set[str] = set()
    for inst in row.instructions or ():
        iid = inst.get("id") if isinstance(inst, Mapping) else None
        if iid not in CHECKS:
            continue
        families |= {f for f, ids in FAMILY_IDS.items() if iid in ids}
        try:
            kwargs = check_kwargs(iid, inst.get("kwargs"))
        except ValueError:
            continue
        kind = _kind(iid, kwargs)
        if kind is not None:
            kinds.setdefault(kind, []).append((iid, kwargs))
    return kinds, families


def is_control(row: PromptRow) -> bool:
    """A control prompt of `instruction_pairs` (it asks nothing; every family is unasked)."""
    return row.reward == UNSCORED and row.meta.get("task") == "instruction_pairs"


def follows(answer: str, checks: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
    """Every check holds on a non-empty answer (as `InstructionReward.score_one` decides each one)."""
    return bool(answer.strip()) and all(CHECKS[iid].fn(answer, **kwargs) for iid, kwargs in checks)


def has_property(answer: str, prop: str) -> bool:
    """The control property `prop` (CONTROL_FAMILY's keys) of an answer."""
    if prop == "upper":
        return any(c.isalpha() for c in answer) and not any(c.islower() for c in answer)
    if prop == "lower":
        return any(c.isalpha() for c in answer) and not any(c.isupper() for c in answer)
    if prop == "long":
        return len(words(answer)) >= LONG_WORDS
    if prop == "short":  # an empty answer (a <think> never closed) is no short answer
        return 0 < len(words(answer)) < LONG_WORDS
    if prop == f"keyword {KEYWORD}":
        return CHECKS["keywords:existence"].fn(answer, keywords=[KEYWORD])
    if prop.startswith("ending ") and prop in CONTROL_FAMILY:
        return _END(answer, prop[len("ending "):])
    raise ValueError(f"has_property: unknown property {prop!r}; expected one of {sorted(CONTROL_FAMILY)}")


def rate_stats(rates: Sequence[float]) -> dict[str, Any]:
    """{"mean", "se" (sample sd / sqrt(n), 0 for one prompt), "prompts", "rates"} of per-prompt rates."""
    n = len(rates)
    mean = sum(rates) / n
    var = sum((r - mean) ** 2 for r in rates) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n), "prompts": n, "rates": list(rates)}


def instruction_analysis(rows: Sequence[PromptRow], texts: Sequence[Sequence[str]]) -> dict[str, Any]:
    """{"compliance": {kind: rate_stats}, "control": {property: rate_stats}} of per-prompt samples;
    a kind (property) no prompt asks for (is free of) is left out. Checked on the answer after the
    last ``</think>``."""
    if len(rows) != len(texts):
        raise ValueError(f"instruction_analysis: {len(rows)} rows but {len(texts)} per-prompt sample lists")
    compliance: dict[str, list[float]] = {}
    control: dict[str, list[float]] = {}
    for row, samples in zip(rows, texts):
        if not samples:
            continue
        answers = [strip_thinking(t) for t in samples]
        kinds, families = row_constraints(row)
        for kind, checks in kinds.items():
            compliance.setdefault(kind, []).append(sum(follows(a, checks) for a in answers) / len(answers))
        for prop, family in CONTROL_FAMILY.items():
            if family not in families:
                control.setdefault(prop, []).append(sum(has_property(a, prop) for a in answers) / len(answers))
    return {"compliance": {k: rate_stats(compliance[k]) for k in KINDS if k in compliance},
            "control": {p: rate_stats(control[p]) for p in CONTROL_FAMILY if p in control}}


def paired(before_rates: Sequence[float], after_rates: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of the per-prompt differences after − before (the same prompts in order)."""
    if len(before_rates) != len(after_rates) or not before_rates:
        raise ValueError(f"paired: {len(before_rates)} vs {len(after_rates)} prompts; both must score the same "
                         "non-empty prompt set")
    d = [a - b for a, b in zip(after_rates, before_rates)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0
    return mean, math.sqrt(var / len(d))


def analyze(rows: Sequence[PromptRow], texts: Sequence[Sequence[str]],
            correct: Sequence[Sequence[bool]]) -> dict[str, Any]:
    """{domain: analysis} of one set: "math" → `math_modes`, "instruction" → `instruction_analysis`
    (control prompts too: their every family is unasked); other domains have none."""
    math_i = [i for i, r in enumerate(rows) if r.domain == "math"]
    inst_i = [i for i, r in enumerate(rows) if r.domain == "instruction" or is_control(r)]
    out: dict[str, Any] = {}
    if math_i:
        out["math"] = math_modes([texts[i] for i in math_i], [correct[i] for i in math_i])
    if inst_i:
        out["instruction"] = instruction_analysis([rows[i] for i in inst_i], [texts[i] for i in inst_i])
    return out

def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def examples(rows: Sequence[PromptRow], texts: Sequence[Sequence[str]], prompts: int = 3, responses: int = 2,
             limit: int = 300) -> list[dict[str, Any]]:
    """[{"id", "prompt", "responses"}] of the first `prompts` rows' first `responses` samples, each
    text cut to `limit` characters (the last one "…" when cut)."""
    return [{"id": r.id, "prompt": _clip(r.prompt_text, limit), "responses": [_clip(t, limit) for t in ts[:responses]]}
            for r, ts in zip(rows[:prompts], texts[:prompts])]
