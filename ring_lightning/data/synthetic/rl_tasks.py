"""Built-in verifiable RL prompt sources (no download): what the quickstart's RL stages train on.

Ring-lite (arXiv 2506.14731, §4 "Reinforcement learning data") runs reasoning RL on verifiable math,
code and logic prompts (rule-based 0/1 rewards), then general RL on instruction-following and
preference data. The real corpora cannot be downloaded here, so these generators make tiny prompts
of the same *shape* — validated `PromptRow`s that the reward router scores exactly
like file rows: docs/design.md#data-synthetic-rl-tasks.
"""

from __future__ import annotations

import random
from typing import Any

from ring_lightning.data.synthetic import problems as synthetic
from ring_lightning.rows import PromptRow, parse_row
from ring_lightning.data.synthetic.instruction import INSTRUCTION_KINDS, instruction_prompt
from ring_lightning.data.synthetic.instruction_pairs import ALL_PAIRS, NO_CONSTRAINT, pair_prompt
from ring_lightning.data.synthetic.partition import side_of

RL_TASKS = ("arithmetic", "countdown", "mixed", "arithmetic_steps", "addition", "instruction", "countdown_small",
            "instruction_pairs")
SPLITS = ("all", "train", "heldout", "ood", "control")
OOD_TERMS = 4  # split "ood" of addition: one more operand than any training sum


def _arithmetic_steps(rng: random.Random, min_ops: int, max_ops: int, max_operand: int
                      ) -> tuple[str, str, dict[str, Any]]:
    n_ops = rng.randint(min_ops, max_ops)
    value = rng.randint(1, max_operand)
    expr = str(value)
    for k in range(n_ops):
        op = rng.choice("+-*") if abs(value) <= 200 else rng.choice("+-")
        b = rng.randint(1, min(9, max_operand)) if op == "*" else rng.randint(1, max_operand)
        value = value + b if op == "+" else value - b if op == "-" else value * b
        expr = f"({expr} {op} {b})" if k < n_ops - 1 else f"{expr} {op} {b}"
    return synthetic.ARITHMETIC_PROMPT.format(expr=expr), str(value), {"expression": expr}


def rl_task_rows(
    task: str,
    n: int,
    seed: int = 1,
    *,
    min_ops: int = 1,
    max_ops: int = 2,
    max_operand: int = 20,
    kinds: tuple[str, ...] | list[str] = INSTRUCTION_KINDS,
    split: str | None = None,
) -> list[PromptRow]:
    """`n` validated RL prompt rows of a built-in task, all distinct.

    Args:
        task: one of `RL_TASKS`.
        n: number of rows.
        seed: generator seed (rows are a deterministic function of task, n, seed and knobs).
        min_ops: `arithmetic_steps` only: fewest operations per expression.
        max_ops: `arithmetic_steps` only: most operations per expression.
        max_operand: `arithmetic_steps` only: largest operand / starting value.
        kinds: `instruction` only: the constraint types to draw from (`INSTRUCTION_KINDS`), equally.
        split: which side of the fixed partition by structure (data/synthetic/partition.py) to draw
            from: "train", "heldout" (the evaluation part: no probe question EntropyMonitor samples)
            or "all"; "ood" (addition only): sums of `OOD_TERMS` operands, one more than any trained;
            "control" (instruction_pairs only): the evaluation part's control prompts, which ask nothing
            (domain "general", reward "unscored": the shortcut control group, never trained).
            None = "train" for `addition`, `countdown_small` and `instruction_pairs` (whose SFT data
            never shows held-out problems either), "all" otherwise. `arithmetic` / `countdown` /
            `mixed` / `arithmetic_steps` support only "all".
    """
    if task not in RL_TASKS:
        raise ValueError(f"unknown built-in RL task {task!r}; expected one of {', '.join(RL_TASKS)}")
    if n < 1:
        raise ValueError(f"built-in RL task {task!r}: n must be >= 1, got {n}")
    split = split if split is not None else ("train" if task in _STRUCTURED else "all")
    if split not in SPLITS:
        raise ValueError(f"built-in RL task {task!r}: split must be one of {SPLITS}, got {split!r}")
    if split == "ood" and task != "addition":
        raise ValueError(f"built-in RL task {task!r}: split 'ood' exists for 'addition' only")
    if split == "control" and task != "instruction_pairs":
        raise ValueError(f"built-in RL task {task!r}: split 'control' exists for 'instruction_pairs' only")
    if task in ("arithmetic", "countdown", "mixed"):
        if split != "all":
            raise ValueError(f"built-in RL task {task!r} has no held-out partition; use split 'all' (or the "
                             f"'addition' / 'instruction' tasks)")
        raw = synthetic.prompt_rows(task, "train", n_train=n, n_val=0, seed=seed)
    elif task == "arithmetic_steps":
        if not 1 <= min_ops <= max_ops or max_operand < 1:
            raise ValueError(f"arithmetic_steps needs 1 <= min_ops <= max_ops and max_operand >= 1; "
                             f"got min_ops={min_ops}, max_ops={max_ops}, max_operand={max_operand}")
        raw = _unique(n, task, lambda rng: _arithmetic_steps(rng, min_ops, max_ops, max_operand),
                      seed, lambda q, a, m: {"domain": "math", "prompt": q, "answer": a,
                                             "meta": {"task": "arithmetic", **m}}, _keep(task, split))
    elif task in _STRUCTURED:
        raw = _structured(task, n, seed, split)
    else:
        kinds = tuple(kinds)
        unknown = sorted(set(kinds) - set(INSTRUCTION_KINDS))
        if not kinds or unknown:
            raise ValueError(f"instruction kinds must be a non-empty subset of {INSTRUCTION_KINDS}, got {kinds}")
        keep = _keep("instruction", split)
        raw = _unique(n, task, lambda rng: (*instruction_prompt(rng, kinds)[:2], None), seed,
                      lambda q, ins, _: {"domain": "instruction", "prompt": q, "instructions": ins,
                                         "meta": {"task": "instruction"}}, keep)
    return [parse_row(r, f"built-in RL task {task!r} row {i}") for i, r in enumerate(raw)]


_STRUCTURED = ("addition", "countdown_small", "instruction_pairs")


def _keep(kind: str, split: str):
    """(question, meta) -> bool: the problem is on `split`'s side of the partition."""
    wanted = {"train": "train", "heldout": "eval", "control": "eval"}.get(split)
    return lambda q, m: wanted is None or side_of(kind, q, m) == wanted


def _structured(task: str, n: int, seed: int, split: str) -> list[dict[str, Any]]:
    """Rows of the tasks partitioned by structure (data/synthetic/partition.py). Every `make` returns a
    generator's (question, steps, answer, meta); an instruction pair's prompt needs no SFT answer."""
    if task == "instruction_pairs":
        pairs = (NO_CONSTRAINT,) if split == "control" else ALL_PAIRS

        def make(rng):
            q, ins, wants = pair_prompt(rng, pairs)
            return q, (), "", {"instructions": ins, "families": sorted(wants)}
    elif task == "addition" and split == "ood":
        def make(rng):
            return synthetic.GENERATORS["addition"](rng, OOD_TERMS)
    else:
        make = synthetic.GENERATORS[task]

    def draw(rng):
        q, _, a, m = make(rng)
        return q, a, m

    return _unique(n, task, draw, seed, lambda q, a, m: synthetic.row_dict("", task, q, a, m), _keep(task, split))


def _unique(n: int, task: str, make, seed: int, to_row, keep=lambda q, m: True) -> list[dict[str, Any]]:
    """Draw until `n` distinct kept questions (or give up with a clear error when the space is too small)."""
    rng = random.Random(f"ring-lightning-rl-{task}-{seed}")
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for _ in range(200 * n + 10_000):
        q, a, m = make(rng)
        if q in seen or not keep(q, m):
            continue
        seen.add(q)
        rows.append({**to_row(q, a, m), "id": f"{task}-rl-{seed}-{len(rows)}"})
        if len(rows) == n:
            return rows
    raise ValueError(f"built-in RL task {task!r}: only {len(rows)} distinct prompts exist for these "
                     f"settings, {n} were asked; lower n or widen the task's knobs")
