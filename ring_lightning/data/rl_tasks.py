"""Built-in verifiable RL prompt sources (no download): what the quickstart's RL stages train on.

Ring-lite (arXiv 2506.14731, §4 "Reinforcement learning data") runs reasoning RL on verifiable math,
code and logic prompts (rule-based 0/1 rewards), then general RL on instruction-following and
preference data. The real corpora cannot be downloaded here, so these generators make tiny prompts
of the same *shape* — validated `PromptRow`s that the reward router scores exactly like file rows:

* ``arithmetic`` / ``countdown`` / ``mixed``: the RL split of `data/synthetic.py`'s tasks (the
  same problem family and prompt wording the synthetic long-CoT SFT data teaches, so an SFT'd tiny
  model already answers in ``\\boxed{}``). Arithmetic rows are domain "math" (integer answer);
  countdown rows are domain "logic" with ``meta = {"task": "countdown", "numbers", "target"}``.
* ``arithmetic_steps``: arithmetic with explicit difficulty knobs (``min_ops``, ``max_ops``,
  ``max_operand``) and the same prompt wording, for curricula and quick CPU runs (``max_ops=1`` is a
  task a tiny model can learn within minutes of RL).
* ``instruction``: IFEval-style instruction-following prompts, domain "instruction", each carrying
  ``instructions=[{"id", "kwargs"}]`` checked by `rewards/instruction.py` (bullet count, lowercase,
  keyword, word limit, no comma, end phrase; about 4,000 distinct prompts).

Where the report is silent, what we chose: RL prompts of a synthetic task are drawn with their own
seed, so they are different problems from the SFT data of the same task (a prompt may repeat by
chance; these are toy tasks, not a benchmark). Every row goes through `parse_row`, so a generator
bug surfaces as a `PromptRowError` naming the task and row.
"""

from __future__ import annotations

import random
from typing import Any

from ring_lightning.data import synthetic
from ring_lightning.data.prompts import PromptRow, parse_row

RL_TASKS = ("arithmetic", "countdown", "mixed", "arithmetic_steps", "instruction")

# IFEval-style checks (ids as in Google's IFEval; `rewards/instruction.py` verifies them).
_TOPICS = ("the sea", "a small robot", "autumn leaves", "a quiet library", "mountain trains", "honey bees",
           "the night sky", "a lost key", "fresh bread", "a rainy city", "an old bridge", "a paper boat",
           "winter mornings", "a busy market", "desert flowers", "a lighthouse", "city pigeons", "a chess game",
           "a first bicycle", "thunderstorms", "a tea kettle", "the moon", "a school garden", "a red kite",
           "river stones", "a night train", "a village bakery", "snowy owls", "a music box", "summer rain",
           "a broken clock", "forest paths", "a harbour at dawn", "a sleepy cat", "wind turbines",
           "a museum hall", "a campfire", "an empty beach", "a map of stars", "a window garden")
_KEYWORDS = ("blue", "river", "clock", "garden", "light", "stone", "window", "song", "paper", "silver",
             "bread", "shadow", "green", "bridge", "cloud", "quiet", "morning", "glass", "salt", "wheel")
_END_PHRASES = ("Is there anything else?", "That is all.", "The end.", "Thank you.")
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


INSTRUCTION_KINDS = ("bullets", "lowercase", "keyword", "word_limit", "no_comma", "end_phrase")


def _instruction(rng: random.Random, kinds: tuple[str, ...]) -> tuple[str, list[dict[str, Any]]]:
    topic = rng.choice(_TOPICS)
    kind = INSTRUCTION_KINDS.index(rng.choice(kinds))
    if kind == 0:
        n = rng.randint(2, 5)
        return (f"Write exactly {n} bullet points about {topic}. Use markdown bullets such as '* item'.",
                [{"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": n}}])
    if kind == 1:
        what = rng.choice(("one sentence", "two sentences", "a short note", "a title"))
        return (f"Write {what} about {topic}. Your entire response must be in lowercase letters.",
                [{"id": "change_case:english_lowercase", "kwargs": {}}])
    if kind == 2:
        word = rng.choice(_KEYWORDS)
        what = rng.choice(("a short sentence", "one line", "a short description"))
        return (f"Write {what} about {topic} that includes the word '{word}'.",
                [{"id": "keywords:existence", "kwargs": {"keywords": [word]}}])
    if kind == 3:
        n = rng.randint(5, 25)
        return (f"Describe {topic} in fewer than {n} words.",
                [{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": n}}])
    if kind == 4:
        what = rng.choice(("one sentence", "two sentences", "a short note", "a short answer"))
        return (f"Write {what} about {topic} without using any commas.",
                [{"id": "punctuation:no_comma", "kwargs": {}}])
    phrase = rng.choice(_END_PHRASES)
    return (f"Write a short note about {topic}. End your response with the exact phrase '{phrase}'.",
            [{"id": "startend:end_checker", "kwargs": {"end_phrase": phrase}}])


def rl_task_rows(
    task: str,
    n: int,
    seed: int = 1,
    *,
    min_ops: int = 1,
    max_ops: int = 2,
    max_operand: int = 20,
    kinds: tuple[str, ...] | list[str] = INSTRUCTION_KINDS,
) -> list[PromptRow]:
    """`n` validated RL prompt rows of a built-in task.

    Args:
        task: one of `RL_TASKS`.
        n: number of rows.
        seed: generator seed (rows are a deterministic function of task, n, seed and knobs).
        min_ops: `arithmetic_steps` only: fewest operations per expression.
        max_ops: `arithmetic_steps` only: most operations per expression.
        max_operand: `arithmetic_steps` only: largest operand / starting value.
        kinds: `instruction` only: the constraint types to draw from (`INSTRUCTION_KINDS`), equally.
    """
    if task not in RL_TASKS:
        raise ValueError(f"unknown built-in RL task {task!r}; expected one of {', '.join(RL_TASKS)}")
    if n < 1:
        raise ValueError(f"built-in RL task {task!r}: n must be >= 1, got {n}")
    if task in synthetic.TASKS:
        raw = synthetic.prompt_rows(task, "train", n_train=n, n_val=0, seed=seed)
    elif task == "arithmetic_steps":
        if not 1 <= min_ops <= max_ops or max_operand < 1:
            raise ValueError(f"arithmetic_steps needs 1 <= min_ops <= max_ops and max_operand >= 1; "
                             f"got min_ops={min_ops}, max_ops={max_ops}, max_operand={max_operand}")
        raw = _unique(n, task, lambda rng: _arithmetic_steps(rng, min_ops, max_ops, max_operand),
                      seed, lambda q, a, m: {"domain": "math", "prompt": q, "answer": a,
                                             "meta": {"task": "arithmetic", **m}})
    else:
        kinds = tuple(kinds)
        unknown = sorted(set(kinds) - set(INSTRUCTION_KINDS))
        if not kinds or unknown:
            raise ValueError(f"instruction kinds must be a non-empty subset of {INSTRUCTION_KINDS}, got {kinds}")
        raw = _unique(n, task, lambda rng: (*_instruction(rng, kinds), None), seed,
                      lambda q, ins, _: {"domain": "instruction", "prompt": q, "instructions": ins,
                                         "meta": {"task": "instruction"}})
    return [parse_row(r, f"built-in RL task {task!r} row {i}") for i, r in enumerate(raw)]


def _unique(n: int, task: str, make, seed: int, to_row) -> list[dict[str, Any]]:
    """Draw until `n` distinct questions (or give up with a clear error when the space is too small)."""
    rng = random.Random(f"ring-lightning-rl-{task}-{seed}")
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for _ in range(50 * n + 1000):
        q, a, m = make(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"{task}-rl-{seed}-{len(rows)}", **to_row(q, a, m)})
        if len(rows) == n:
            return rows
    raise ValueError(f"built-in RL task {task!r}: only {len(rows)} distinct prompts exist for these "
                     f"settings, {n} were asked; lower n or widen the task's knobs")
