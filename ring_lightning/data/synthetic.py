"""Built-in synthetic tasks: long-CoT style SFT conversations and verifiable RL prompts, no download.

Ring-lite (arXiv 2506.14731, §3 "Long-CoT SFT" and §4 "Reinforcement learning data") trains on
long chain-of-thought answers — a `<think>…</think>` reasoning trace followed by a final answer —
for math, code and logic problems with verifiable answers. The real corpora cannot be downloaded
here, so the quickstart uses two small generated tasks of the same shape:

* ``arithmetic``: a multi-step integer expression such as ``((23 + 17) * 3) - 12``; the response
  reasons one operation per line inside ``<think>…</think>`` and ends with ``\\boxed{108}``.
* ``countdown``: reach a target from a few numbers with + - * (each number used once); the
  response tries the construction step by step and ends with ``\\boxed{(25 - 5) * 3}``.
* ``mixed``: alternates the two.

Everything is deterministic from `seed`. Problems are unique by question text, and the held-out
split ("val") is disjoint from "train" because both are cut from one de-duplicated sequence.
These are deliberately tiny problems: they exercise the recipe on CPU, they are not a benchmark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

TASKS = ("arithmetic", "countdown", "mixed")
Split = Literal["train", "val"]

ARITHMETIC_PROMPT = "Compute {expr}. Think step by step and put the final answer in \\boxed{{}}."
COUNTDOWN_PROMPT = ("Use the numbers {numbers} (each at most once) with + - * to make {target}. "
                    "Put the expression in \\boxed{{}}.")


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem.

    Attributes:
        id: stable id, e.g. "arithmetic-train-17".
        task: "arithmetic" or "countdown".
        question: the user message.
        steps: the reasoning lines of the `<think>` block.
        answer: the gold answer (an integer for arithmetic, an expression for countdown).
        meta: verifier data (countdown: numbers and target).
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


GENERATORS = {"arithmetic": _arithmetic, "countdown": _countdown}


def generate_problems(task: str, n_train: int, n_val: int, seed: int = 0) -> dict[str, list[SyntheticProblem]]:
    """`n_train` + `n_val` unique problems of `task`, split into {"train": [...], "val": [...]}."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    rng = random.Random(f"ring-lightning-synthetic-{task}-{seed}")
    seen: set[str] = set()
    problems: list[tuple[str, tuple[str, ...], str, dict[str, Any], str]] = []
    total, attempts = n_train + n_val, 0
    while len(problems) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise RuntimeError(f"could not generate {total} unique {task} problems (got {len(problems)})")
        kind = task if task != "mixed" else ("arithmetic", "countdown")[len(problems) % 2]
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
    """The long-CoT chat for one problem: user question, assistant `<think>` trace + boxed answer."""
    think = "\n".join(problem.steps)
    final = f"The answer is \\boxed{{{problem.answer}}}."
    return [{"role": "user", "content": problem.question},
            {"role": "assistant", "content": f"<think>\n{think}\n</think>\n{final}"}]


def sft_rows(task: str, split: Split, n_train: int, n_val: int, seed: int = 0) -> list[dict[str, Any]]:
    """SFT rows ({"id", "messages"}) of one split of a synthetic task."""
    return [{"id": p.id, "messages": sft_messages(p)} for p in generate_problems(task, n_train, n_val, seed)[split]]


def prompt_rows(task: str, split: Split, n_train: int, n_val: int, seed: int = 0) -> list[dict[str, Any]]:
    """RL prompt rows (the schema of `data/prompts.py`) of one split of a synthetic task.

    Arithmetic rows are domain "math" with the integer answer; countdown rows are domain "logic"
    with the reference expression as `answer` and `meta = {"task": "countdown", "numbers", "target"}`
    (any expression that uses the numbers at most once and evaluates to the target is correct).
    """
    rows = []
    for p in generate_problems(task, n_train, n_val, seed)[split]:
        domain = "math" if p.task == "arithmetic" else "logic"
        rows.append({"id": p.id, "domain": domain, "prompt": p.question, "answer": p.answer,
                     "meta": {"task": p.task, **p.meta}})
    return rows
