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

Built-in verifiers (rule-based: `countdown.py`, `sudoku.py`, `logic_rules.py`) for the row formats
in docs/rewards.md: countdown (``numbers``, ``target``, ``division`` exact|real, ``numbers_rule``
exactly_once|at_most_once), sudoku / mini_sudoku (``puzzle``: valid by the rules, givens kept),
maze_path (``grid``, moves U/D/L/R), arc (``output``: exact grid). Other reasoning-gym tasks
(``rg_entry``) use its scorer; ``answer`` is never used for scoring.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import Any

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.countdown import DIVISION, NUMBERS_RULES, score_countdown
from ring_lightning.rewards.extraction import last_boxed, last_tagged
from ring_lightning.rewards.logic_rules import maze_cells, verify_grid, verify_maze_path
from ring_lightning.rewards.sudoku import check_puzzle, sudoku_for

RULE_TASKS = ("countdown", "sudoku", "mini_sudoku", "maze_path", "arc")
TASKS = RULE_TASKS + ("maze", "arc_1d", "rearc", "arc_agi")
SUDOKU_TASKS = ("sudoku", "mini_sudoku")
RG_TASKS = ("countdown", "sudoku", "mini_sudoku", "maze", "arc_1d", "rearc", "arc_agi")  # make_logic_rows
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


def _validate_countdown(meta: dict[str, Any], where: str) -> None:
    nums, target = meta.get("numbers"), meta.get("target")
    ints = isinstance(nums, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in nums)
    if not nums or not ints:
        raise LogicRowError(f"{where}: countdown meta.numbers must be a non-empty list of integers, got {nums!r}")
    if not isinstance(target, int) or isinstance(target, bool):
        raise LogicRowError(f"{where}: countdown meta.target must be an integer, got {target!r}")
    if not isinstance(meta.get("use_all", False), bool):
        raise LogicRowError(f"{where}: countdown meta.use_all must be true or false")
    if meta.get("division", "exact") not in DIVISION:
        raise LogicRowError(f"{where}: countdown meta.division must be one of {DIVISION}, got {meta['division']!r}")
    rule = meta.get("numbers_rule")
    if rule is not None and rule not in NUMBERS_RULES:
        raise LogicRowError(f"{where}: countdown meta.numbers_rule must be one of {NUMBERS_RULES}, got {rule!r}")
    if rule is not None and "use_all" in meta and meta["use_all"] != (rule == "exactly_once"):
        raise LogicRowError(f"{where}: countdown meta.use_all contradicts meta.numbers_rule; give one")


def _validate_rule_task(task: str, meta: dict[str, Any], where: str) -> None:
    if task in SUDOKU_TASKS:
        why = check_puzzle(meta.get("puzzle"), where)
        if why:
            raise LogicRowError(why)
    elif task == "maze_path":
        grid = meta.get("grid")
        if not (isinstance(grid, list) and grid and all(isinstance(r, str) and r for r in grid)):
            raise LogicRowError(f"{where}: maze_path meta.grid must be a list of strings (one per row)")
        try:
            maze_cells(grid, meta.get("start"), meta.get("end"), meta.get("wall", "#"))
        except (ValueError, TypeError) as e:
            raise LogicRowError(f"{where}: maze_path: {e}") from None
        if not isinstance(meta.get("shortest", False), bool):
            raise LogicRowError(f"{where}: maze_path meta.shortest must be true or false")
    elif task == "arc":
        out = meta.get("output")
        if not (isinstance(out, list) and out and all(isinstance(r, list) and r and all(type(v) is int for v in r)
                                                      for r in out)):
            raise LogicRowError(f"{where}: arc meta.output must be the expected grid (a list of rows of integers)")


def _puzzle(meta: dict[str, Any]) -> Any:
    """A Sudoku row's puzzle: ``meta.puzzle``, or the one inside a reasoning-gym entry."""
    if "puzzle" in meta:
        return meta["puzzle"]
    md = (meta.get("rg_entry") or {}).get("metadata") or {}
    return md.get("puzzle")


def validate_logic_meta(row: PromptRow, where: str) -> None:
    """Raise LogicRowError naming `where` and the key when `row.meta` cannot be scored."""
    meta = row.meta or {}
    task = meta.get("task")
    if task not in TASKS:
        raise LogicRowError(f"{where}: meta.task must be one of {TASKS}, got {task!r}")
    if task == "countdown":
        return _validate_countdown(meta, where)
    if task in SUDOKU_TASKS and "puzzle" not in meta and _puzzle(meta) is not None:
        return _validate_rule_task(task, {"puzzle": _puzzle(meta)}, where)
    if task in RULE_TASKS:
        return _validate_rule_task(task, meta, where)
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
        partial_credit: pass reasoning-gym's partial scores through instead of 1/0 (tasks scored
            by reasoning-gym only; rule-based verifiers are 1/0).
        max_answer_chars: longer extracted answers score 0 without being parsed.
        countdown_division: a countdown row's ``division`` when it gives none: "exact" (every
            division leaves no remainder) or "real".
        countdown_numbers: a countdown row's ``numbers_rule`` when it gives none (nor ``use_all``):
            "exactly_once" or "at_most_once".
    """

    binary = True

    def __init__(self, partial_credit: bool = False, max_answer_chars: int = 20_000,
                 countdown_division: str = "exact", countdown_numbers: str = "at_most_once") -> None:
        if countdown_division not in DIVISION:
            raise ValueError(f"LogicReward countdown_division must be one of {DIVISION}, got {countdown_division!r}")
        if countdown_numbers not in NUMBERS_RULES:
            raise ValueError(f"LogicReward countdown_numbers must be one of {NUMBERS_RULES}, got {countdown_numbers!r}")
        self.countdown_division = countdown_division
        self.countdown_numbers = countdown_numbers
        self.partial_credit = partial_credit
        self.max_answer_chars = max_answer_chars
        if partial_credit:
            self.binary = False

    def validate(self, row: PromptRow, where: str) -> None:
        validate_logic_meta(row, where)

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        meta = row.meta or {}
        task = meta.get("task")
        sudoku = sudoku_for(_puzzle(meta)) if task in SUDOKU_TASKS else None  # compiled once per puzzle
        if sudoku is None:
            try:
                validate_logic_meta(row, f"row {row.id!r}")
            except LogicRowError as e:
                return RewardResult(0.0, valid=False, info={"error": str(e)})
        answer = extract_logic_answer(response)
        info: dict[str, Any] = {"task": task, "extracted": None if answer is None else answer[:200]}
        if not answer:
            return RewardResult(0.0, info={**info, "reason": "no <answer> or \\boxed{} answer"})
        if len(answer) > self.max_answer_chars:
            return RewardResult(0.0, info={**info, "reason": "answer too long"})
        if sudoku is not None or task in RULE_TASKS:  # (a valid Sudoku row always compiles)
            ok, why = sudoku.verify(answer) if sudoku is not None else self._rule_verdict(task, meta, answer)
            return RewardResult(1.0 if ok else 0.0, info={**info, **({"reason": why} if why else {})})
        entry = _restore_entry(task, meta["rg_entry"])
        score = float(_scorer(task, _config_key(meta.get("rg_config"))).score_answer(answer, entry))
        reward = score if self.partial_credit else (1.0 if score >= 1.0 - 1e-9 else 0.0)
        return RewardResult(reward, info={**info, "rg_score": score})

    def _rule_verdict(self, task: str, meta: dict[str, Any], answer: str) -> tuple[bool, str]:
        if task == "countdown":
            rule = meta.get("numbers_rule") or ("exactly_once" if meta.get("use_all", self.countdown_numbers
                                                                            == "exactly_once") else "at_most_once")
            return score_countdown(answer, meta["numbers"], meta["target"], rule == "exactly_once",
                                   meta.get("division", self.countdown_division))
        if task == "maze_path":
            wall = meta.get("wall", "#")
            start, end = maze_cells(meta["grid"], meta.get("start"), meta.get("end"), wall)
            return verify_maze_path(answer, meta["grid"], start, end, wall, meta.get("shortest", False))
        return verify_grid(answer, meta["output"])

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"LogicReward got {len(rows)} rows but {len(responses)} responses")
        return [self.score_one(r, s) for r, s in zip(rows, responses)]


def make_logic_rows(task: str, n: int, seed: int = 0, answer_instruction: str = ANSWER_INSTRUCTION,
                    **config: Any) -> list[PromptRow]:
    """`n` logic PromptRows of a reasoning-gym task, deterministic in `seed`.

    `config` is passed to ``reasoning_gym.create_dataset`` (JSON-able values only; it is stored in
    ``meta.rg_config`` so scoring rebuilds the same verifier). `answer_instruction` is appended to
    each question. Countdown rows carry numbers/target with reasoning-gym's rules (each number
    exactly once, real division); Sudoku rows carry the puzzle (checked by the rules).
    """
    if task not in RG_TASKS:
        raise ValueError(f"unknown logic task {task!r}; expected one of {', '.join(RG_TASKS)}")
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
                                    "target": int(md["target"]), "numbers_rule": "exactly_once",
                                    "division": "real"}  # reasoning-gym's rules
        elif task in ("sudoku", "mini_sudoku"):
            meta = {"task": task, "puzzle": [[int(v) for v in r] for r in md["puzzle"]]}
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
