"""Logic-game reward (Countdown, Sudoku, mazes, ARC-style grids) and prompt rows from reasoning-gym.

Ring-lite-2507 reports gains on logical tasks beside math and code (its release notes; the RL
recipe is arXiv 2506.14731's); neither names a logic-data generator or verifier. Our choice:
rule-based verification as for math, with reasoning-gym, so rows and verifier come from the same
code and agree: rows are made with `make_logic_rows` and scored with the same task's
``score_answer``. Rewards are binary (1 when reasoning-gym's score is 1, i.e. fully correct);
``partial_credit=True`` passes its partial scores (e.g. the share of right Sudoku cells) through.

Answer extraction: the last ``<answer>…</answer>`` of the response, else its last ``\\boxed{}``.
Nothing is evaluated: Countdown is scored by `countdown.py`'s AST evaluator instead of
reasoning-gym's scorer (which runs sympy's `parse_expr`, i.e. `eval`, on the model's string).

Row schema (domain "logic"; ``answer`` = the reference answer, shown in logs only)::

    meta = {"task": "countdown", "numbers": [25, 5, 3], "target": 60, "use_all": false}
    meta = {"task": "sudoku" | "mini_sudoku" | "maze" | "arc_1d" | "rearc" | "arc_agi",
            "rg_entry": {"question": str, "answer": str, "metadata": {...}},  # the generated entry
            "rg_config": {...}}   # optional: JSON-able config the dataset was generated with

``use_all`` (default false) requires every number to be used exactly once (reasoning-gym's rule);
otherwise each number may be used at most once (`data/synthetic/problems.py`'s rule).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import Any

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.countdown import score_countdown
from ring_lightning.rewards.extraction import last_boxed, last_tagged

TASKS = ("countdown", "sudoku", "mini_sudoku", "maze", "arc_1d", "rearc", "arc_agi")
ANSWER_INSTRUCTION = "\n\nGive your final answer inside <answer></answer> tags."
_TUPLE_GRIDS = {"rearc": ("input", "output"), "arc_agi": ("input", "output")}
_rg_lock = threading.Lock()


class LogicRowError(ValueError):
    """A logic row's ``meta`` does not carry what its task's verifier needs."""


def _config_key(config: dict[str, Any] | None) -> str:
    return json.dumps(config or {}, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _scorer(task: str, config_key: str):
    import reasoning_gym

    with _rg_lock:
        return reasoning_gym.create_dataset(task, size=1, seed=0, **json.loads(config_key))


def _restore_entry(task: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Undo the JSON round trip for scorers that compare tuples (ARC grids are tuples of tuples)."""
    keys = _TUPLE_GRIDS.get(task)
    if not keys:
        return entry
    meta = dict(entry["metadata"])
    for k in keys:
        if isinstance(meta.get(k), list):
            meta[k] = tuple(tuple(r) if isinstance(r, list) else r for r in meta[k])
    return {**entry, "metadata": meta}


def extract_logic_answer(response: str) -> str | None:
    """The last ``<answer>`` content, else the last ``\\boxed{}`` content, stripped."""
    ans = last_tagged(response, "answer")
    if ans is None:
        ans = last_boxed(response)
    return ans.strip() if ans is not None else None


def validate_logic_meta(row: PromptRow, where: str) -> None:
    """Raise LogicRowError naming `where` and the key when `row.meta` cannot be scored."""
    meta = row.meta or {}
    task = meta.get("task")
    if task not in TASKS:
        raise LogicRowError(f"{where}: meta.task must be one of {TASKS}, got {task!r}")
    if task == "countdown":
        nums, target = meta.get("numbers"), meta.get("target")
        ints = isinstance(nums, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in nums)
        if not nums or not ints:
            raise LogicRowError(f"{where}: countdown meta.numbers must be a non-empty list of integers, got {nums!r}")
        if not isinstance(target, int) or isinstance(target, bool):
            raise LogicRowError(f"{where}: countdown meta.target must be an integer, got {target!r}")
        if not isinstance(meta.get("use_all", False), bool):
            raise LogicRowError(f"{where}: countdown meta.use_all must be true or false")
        return
    entry = meta.get("rg_entry")
    if not (isinstance(entry, dict) and isinstance(entry.get("answer"), str)
            and isinstance(entry.get("metadata"), dict)):
        raise LogicRowError(f"{where}: {task} rows need meta.rg_entry = {{'answer': str, 'metadata': {{...}}}} "
                            "(the reasoning-gym entry; see make_logic_rows)")
    if meta.get("rg_config") is not None and not isinstance(meta["rg_config"], dict):
        raise LogicRowError(f"{where}: meta.rg_config must be an object")


class LogicReward:
    """Scores logic games with reasoning-gym's verifiers (Countdown with an AST evaluator).

    Args:
        partial_credit: pass reasoning-gym's partial scores through instead of 1/0.
        max_answer_chars: longer extracted answers score 0 without being parsed.
    """

    binary = True

    def __init__(self, partial_credit: bool = False, max_answer_chars: int = 20_000) -> None:
        self.partial_credit = partial_credit
        self.max_answer_chars = max_answer_chars
        if partial_credit:
            self.binary = False

    def validate(self, row: PromptRow, where: str) -> None:
        validate_logic_meta(row, where)

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        try:
            validate_logic_meta(row, f"row {row.id!r}")
        except LogicRowError as e:
            return RewardResult(0.0, valid=False, info={"error": str(e)})
        meta = row.meta
        task = meta["task"]
        answer = extract_logic_answer(response)
        info: dict[str, Any] = {"task": task, "extracted": None if answer is None else answer[:200]}
        if not answer:
            return RewardResult(0.0, info={**info, "reason": "no <answer> or \\boxed{} answer"})
        if len(answer) > self.max_answer_chars:
            return RewardResult(0.0, info={**info, "reason": "answer too long"})
        if task == "countdown":
            ok, why = score_countdown(answer, meta["numbers"], meta["target"], meta.get("use_all", False))
            return RewardResult(1.0 if ok else 0.0, info={**info, **({"reason": why} if why else {})})
        entry = _restore_entry(task, meta["rg_entry"])
        score = float(_scorer(task, _config_key(meta.get("rg_config"))).score_answer(answer, entry))
        reward = score if self.partial_credit else (1.0 if score >= 1.0 - 1e-9 else 0.0)
        return RewardResult(reward, info={**info, "rg_score": score})

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"LogicReward got {len(rows)} rows but {len(responses)} responses")
        return [self.score_one(r, s) for r, s in zip(rows, responses)]


def make_logic_rows(task: str, n: int, seed: int = 0, answer_instruction: str = ANSWER_INSTRUCTION,
                    **config: Any) -> list[PromptRow]:
    """`n` logic PromptRows of a reasoning-gym task, deterministic in `seed`.

    `config` is passed to ``reasoning_gym.create_dataset`` (JSON-able values only; it is stored in
    ``meta.rg_config`` so scoring rebuilds the same verifier). `answer_instruction` is appended to
    each question. Countdown rows carry numbers/target with ``use_all=True`` (reasoning-gym's rule).
    """
    if task not in TASKS:
        raise ValueError(f"unknown logic task {task!r}; expected one of {', '.join(TASKS)}")
    try:
        json.dumps(config)
    except TypeError as e:
        raise ValueError(f"make_logic_rows config for {task!r} must be JSON-serialisable: {e}") from None
    import reasoning_gym

    ds = reasoning_gym.create_dataset(task, size=n, seed=seed, **config)
    rows = []
    for i in range(n):
        entry = ds[i]
        md = json.loads(json.dumps(entry["metadata"], default=list))
        if task == "countdown":
            meta: dict[str, Any] = {"task": task, "numbers": [int(x) for x in md["numbers"]],
                                    "target": int(md["target"]), "use_all": True}
        else:
            meta = {"task": task, "rg_entry": {"question": entry["question"], "answer": entry["answer"],
                                               "metadata": md}}
            if config:
                meta["rg_config"] = dict(config)
        meta["source"] = "reasoning_gym"
        rows.append(PromptRow(id=f"{task}-{seed}-{i}", domain="logic",
                              messages=({"role": "user", "content": entry["question"] + answer_instruction},),
                              answer=str(entry["answer"]), meta=meta))
    return rows
