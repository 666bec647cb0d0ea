"""Built-in synthetic tasks: long-CoT style SFT conversations and verifiable RL prompts, no download.

Ring-lite (arXiv 2506.14731, §3 "Long-CoT SFT" and §4 "Reinforcement learning data") trains on
long chain-of-thought answers — a `<think>…</think>` reasoning trace followed by a final answer —
for math, code and logic problems with verifiable answers, then runs general RL (instruction
following among others). The real corpora cannot be downloaded here, so the quickstart uses small
generated tasks of the same shape: docs/design.md#data-synthetic-problems.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from ring_lightning.data.synthetic.instruction import QUICKSTART_KINDS, instruction_answer, instruction_prompt
from ring_lightning.data.synthetic.instruction_pairs import SFT_PAIRS, pair_answer, pair_plan, pair_prompt, pair_sides
from ring_lightning.data.synthetic.partition import side_of
from ring_lightning.rewards.unscored import UNSCORED

TASKS = ("arithmetic", "countdown", "mixed", "addition", "instruction", "countdown_small", "instruction_pairs",
         "quickstart")
# Tasks with a fixed train / probe / eval partition by structure (data/synthetic/partition.py).
PARTITIONED_TASKS = ("addition", "instruction", "countdown_small", "instruction_pairs", "quickstart")
# The quickstart's SFT mix, one period: 5/8 addition, 1/8 countdown_small, 2/8 instruction_pairs (capital
# letters tokenize letter by letter, so instruction answers weigh more tokens than their share of rows).
QUICKSTART_MIX = ("addition", "instruction_pairs", "addition", "countdown_small", "addition", "instruction_pairs",
                  "addition", "addition")
QUICK_GUESS = "Quick guess."
QUICK_GUESS_RATE = 0.3  # share of addition traces that guess instead of reasoning (module docstring)
Split = Literal["train", "val"]

ARITHMETIC_PROMPT = "Compute {expr}. Think step by step and put the final answer in \\boxed{{}}."
ADDITION_PROMPT = "Compute {expr}. Answer in \\boxed{{}}."  # short: most of a tiny model's SFT tokens go to answers
COUNTDOWN_PROMPT = ("Use the numbers {numbers} (each at most once) with + - * to make {target}. "
                    "Put the expression in \\boxed{{}}.")
COUNTDOWN_SMALL_PROMPT = "Use {numbers} once each with + or - to make {target}. Answer in \\boxed{{}}."


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem.

    Attributes:
        id: stable id, e.g. "arithmetic-train-17".
        task: "arithmetic", "countdown", "addition" or "instruction".
        question: the user message.
        steps: the reasoning lines of the `<think>` block (none for instruction).
        answer: the gold answer (an integer for arithmetic / addition, an expression for countdown);
            for instruction the SFT answer text (which follows the instruction only by chance).
        meta: verifier data (countdown: numbers and target; instruction: its `instructions`); an
            addition trace that guesses has the answer it states in `stated_answer`.
    """

    id: str
    task: str
    question: str
    steps: tuple[str, ...]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def _arithmetic(rng: random.Random) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    n_ops = rng.randint(2, 4)
    value = rng.randint(2, 60)
    expr = str(value)
    steps = []
    for _ in range(n_ops):
        op = rng.choice("+-*") if abs(value) <= 200 else rng.choice("+-")
        b = rng.randint(2, 9) if op == "*" else rng.randint(2, 60)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"{value} {op} {b} = {new}.")
        expr = f"({expr} {op} {b})" if len(steps) < n_ops else f"{expr} {op} {b}"
        value = new
    return ARITHMETIC_PROMPT.format(expr=expr), tuple(steps), str(value), {"expression": expr}


def _countdown(rng: random.Random) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    numbers = [rng.randint(1, 25) for _ in range(rng.randint(3, 4))]
    order = numbers[:]
    rng.shuffle(order)
    value, expr = order[0], str(order[0])
    steps = []
    for b in order[1:]:
        # Keep every intermediate value positive and small, as in the usual Countdown game.
        ops = "+" + ("-" if value > b else "") + ("*" if value * b <= 500 else "")
        op = rng.choice(ops)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"Try {value} {op} {b} = {new}.")
        expr = f"({expr}) {op} {b}" if op == "*" and any(c in expr for c in "+-") else f"{expr} {op} {b}"
        value = new
    steps.append(f"That reaches {value}, the target.")
    question = COUNTDOWN_PROMPT.format(numbers=", ".join(map(str, numbers)), target=value)
    return question, tuple(steps), expr, {"numbers": numbers, "target": value}


def _addition(rng: random.Random, terms: int = 3) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    values = [rng.randint(1, 9) for _ in range(terms)]
    expr = " + ".join(map(str, values))
    question, total = ADDITION_PROMPT.format(expr=expr), sum(values)
    if rng.random() < QUICK_GUESS_RATE:  # the teacher guesses instead of reasoning: often wrong
        guess = total + rng.choice((-3, -2, -1, 1, 2, 3))
        return question, (QUICK_GUESS,), str(total), {"expression": expr, "stated_answer": str(guess)}
    running, steps = values[0], []
    for t in values[1:]:
        steps.append(f"{running} + {t} = {running + t}.")
        running += t
    return question, tuple(steps), str(total), {"expression": expr}


def _countdown_small(rng: random.Random) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    """Countdown as in reasoning-gym (reach the target, each number exactly once), at a tiny model's
    size: three numbers 1-9, + and -, every intermediate value positive; the trace is the solution path."""
    numbers = [rng.randint(1, 9) for _ in range(3)]
    value, expr, steps = numbers[0], str(numbers[0]), []
    for b in numbers[1:]:
        op = rng.choice("+-") if value > b else "+"
        new = value + b if op == "+" else value - b
        steps.append(f"{value} {op} {b} = {new}.")
        expr, value = f"{expr} {op} {b}", new
    question = COUNTDOWN_SMALL_PROMPT.format(numbers=", ".join(map(str, numbers)), target=value)
    return question, tuple(steps), expr, {"numbers": numbers, "target": value}


def _instruction_pairs(rng: random.Random) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    question, instructions, wants = pair_prompt(rng, SFT_PAIRS)  # the partition picks the side
    sides = pair_sides(rng, wants)
    meta = {"instructions": instructions, "families": sorted(wants)}
    return question, pair_plan(sides), pair_answer(rng, sides), meta


def _instruction(rng: random.Random) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    question, instructions, topic = instruction_prompt(rng, QUICKSTART_KINDS)
    return question, (), instruction_answer(rng, topic), {"instructions": instructions}


GENERATORS = {"arithmetic": _arithmetic, "countdown": _countdown, "addition": _addition, "instruction": _instruction,
              "countdown_small": _countdown_small, "instruction_pairs": _instruction_pairs}


def _kind(task: str, i: int) -> str:
    if task == "mixed":
        return ("arithmetic", "countdown")[i % 2]
    if task == "quickstart":
        return QUICKSTART_MIX[i % len(QUICKSTART_MIX)]
    return task


def _partitioned(task: str, split: str, n: int, seed: int) -> list[SyntheticProblem]:
    """`n` problems of the train side (repeats allowed) or `n` distinct held-out ones (module docstring)."""
    rng = random.Random(f"ring-lightning-synthetic-{task}-{split}-{seed}")
    want_heldout = split in ("val", "probe")
    wanted = {"train": "train", "val": "eval", "probe": "probe"}[split]
    seen: set[str] = set()
    out: list[SyntheticProblem] = []
    for _ in range(200 * n + 10_000):
        if len(out) == n:
            return out
        kind = _kind(task, len(out))
        question, steps, answer, meta = GENERATORS[kind](rng)
        if side_of(kind, question, meta) != wanted or (want_heldout and question in seen):
            continue
        seen.add(question)
        out.append(SyntheticProblem(id=f"{task}-{split}-{len(out)}", task=kind, question=question, steps=steps,
                                    answer=answer, meta=dict(meta)))
    if len(out) == n:
        return out
    raise ValueError(f"synthetic task {task!r}: only {len(out)} distinct held-out ({split!r}) problems exist, {n} "
                     f"were asked; lower the number of {split} rows (e.g. synthetic_val_rows / synthetic_prompts)")


def generate_problems(task: str, n_train: int, n_val: int, seed: int = 0) -> dict[str, list[SyntheticProblem]]:
    """`n_train` + `n_val` problems of `task`, split into {"train": [...], "val": [...]}.

    Unique and cut from one sequence for the older tasks; for `PARTITIONED_TASKS` "train" draws
    (with repeats) outside the held-out partition and "val" draws distinct held-out problems."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    if task in PARTITIONED_TASKS:
        return {"train": _partitioned(task, "train", n_train, seed), "val": _partitioned(task, "val", n_val, seed)}
    rng = random.Random(f"ring-lightning-synthetic-{task}-{seed}")
    seen: set[str] = set()
    problems: list[tuple[str, tuple[str, ...], str, dict[str, Any], str]] = []
    total, attempts = n_train + n_val, 0
    while len(problems) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise RuntimeError(f"could not generate {total} unique {task} problems (got {len(problems)})")
        kind = _kind(task, len(problems))
        question, steps, answer, meta = GENERATORS[kind](rng)
        if question in seen:
            continue
        seen.add(question)
        problems.append((question, steps, answer, meta, kind))
    out: dict[str, list[SyntheticProblem]] = {"train": [], "val": []}
    for i, (question, steps, answer, meta, kind) in enumerate(problems):
        split = "train" if i < n_train else "val"
        idx = i if split == "train" else i - n_train
        out[split].append(SyntheticProblem(id=f"{task}-{split}-{idx}", task=kind, question=question,
                                           steps=steps, answer=answer, meta=dict(meta)))
    return out


def sft_messages(problem: SyntheticProblem) -> list[dict[str, str]]:
    """The long-CoT chat for one problem: user question, assistant `<think>` trace + boxed answer
    (instruction: an empty `<think>` block + the answer text; instruction_pairs: the plan + the answer)."""
    think = "\n".join(problem.steps)
    stated = problem.meta.get("stated_answer", problem.answer)
    final = problem.answer if problem.task in ("instruction", "instruction_pairs") else f"The answer is \\boxed{{{stated}}}."
    return [{"role": "user", "content": problem.question},
            {"role": "assistant", "content": f"<think>\n{think}\n</think>\n{final}"}]


def sft_rows(task: str, split: Split, n_train: int, n_val: int, seed: int = 0) -> list[dict[str, Any]]:
    """SFT rows ({"id", "messages"}) of one split of a synthetic task."""
    return [{"id": p.id, "messages": sft_messages(p)} for p in generate_problems(task, n_train, n_val, seed)[split]]


def probe_problems(task: str, n: int, seed: int = 0) -> list[SyntheticProblem]:
    """`n` distinct problems of a partitioned task's probe partition (data/synthetic/partition.py)."""
    if task not in PARTITIONED_TASKS:
        raise ValueError(f"synthetic task {task!r} has no probe partition; one of {PARTITIONED_TASKS} has")
    return _partitioned(task, "probe", n, seed)


def prompt_rows(task: str, split: Split | Literal["probe"], n_train: int, n_val: int, seed: int = 0
                ) -> list[dict[str, Any]]:
    """RL prompt rows (the schema of `data/prompts.py`) of one split of a synthetic task.

    Arithmetic and addition rows are domain "math" with the integer answer; countdown rows are
    domain "logic" with the reference expression as `answer` and `meta = {"task": "countdown",
    "numbers", "target"}` (any expression that uses the numbers at most once and evaluates to the
    target is correct; countdown_small: each number exactly once); instruction rows are domain
    "instruction" with their `instructions` (instruction_pairs: and `meta.families`).
    Split "probe": `n_val` problems of the probe partition (partitioned tasks only).
    """
    problems = probe_problems(task, n_val, seed) if split == "probe" else generate_problems(task, n_train, n_val, seed)[split]
    return [row_dict(p.id, p.task, p.question, p.answer, p.meta) for p in problems]


def row_dict(row_id: str, kind: str, question: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The RL prompt row of one generated problem (`prompt_rows`' docstring)."""
    if kind == "instruction_pairs" and not meta["families"]:  # a control prompt: sampled, never scored
        return {"id": row_id, "domain": "general", "prompt": question, "reward": UNSCORED,
                "meta": {"task": kind, "families": []}}
    if kind in ("instruction", "instruction_pairs"):
        extra = {"families": meta["families"]} if "families" in meta else {}
        return {"id": row_id, "domain": "instruction", "prompt": question, "instructions": meta["instructions"],
                "meta": {"task": kind, **extra}}
    if kind == "countdown_small":  # reasoning-gym's rule: every number exactly once
        return {"id": row_id, "domain": "logic", "prompt": question, "answer": answer,
                "meta": {"task": "countdown", "numbers": meta["numbers"], "target": meta["target"],
                         "numbers_rule": "exactly_once"}}
    domain = "math" if kind in ("arithmetic", "addition") else "logic"
    return {"id": row_id, "domain": domain, "prompt": question, "answer": answer,
            "meta": {"task": kind, **{k: v for k, v in meta.items() if k != "stated_answer"}}}
