"""Math / science reward: the last ``\\boxed{…}`` of the response, checked with math-verify; 1 or 0.

What the Ring-lite report says (arXiv 2506.14731, reinforcement-learning data: math and science
problems are kept only when their answers are verifiable; the rule-based reward is correctness of
the final answer): a binary correctness reward, no format reward. The report does not say how the
final answer is located; we take the last ``\\boxed{}`` (the SFT data's answer format), and grade it
with math-verify (symbolic / numeric equivalence: ``\\dfrac12`` = ``0.5`` = ``1/2``) against
``row.answer``.

Decisions the report leaves open:

* Answers are rewritten by `math_normalize` first (forms math-verify misreads). A gold that is
  not a gradable answer (unbalanced braces or environments, prose, no parse) fails `validate`
  and, if scored anyway, gets ``valid=False`` and ``info["bad_gold"]`` (counted, not a 0).
* Exact golds are compared exactly; a decimal gold is an approximation (`decimal_tolerance`).
* Timeouts: math-verify's own timeouts use ``signal.alarm``, which fails outside the main thread
  and cannot interrupt a C-level computation (a tower ``2^{2^{2^{…}}}`` becomes a huge integer
  power). Every parse+verify therefore runs in a `TimeoutPool` worker process that is killed after
  `timeout_s`; the sample then gets reward 0 with ``info["timeout"] = True``. The gold is checked
  (once, cached) before grading, so a timeout needs no re-check and a replacement worker starts in
  the background (`TimeoutPool`): a call returns within `timeout_s` + a little.
* The answer is searched in the whole response (a box in the reasoning counts only if no later box
  exists); an unterminated last box (truncated response) gives no answer.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.extraction import last_boxed
from ring_lightning.rewards.math_normalize import (decimal_places, exact_decimals, gold_problem, normalize_answer,
                                                   split_choice)
from ring_lightning.rewards.timeout_pool import CallTimeout, TimeoutPool, WorkerDied


EXACT_ROUNDING = 12  # decimal places math-verify rounds to when the gold is exact (non-scalar answers)


def _as_boxed(answer: str) -> str:
    """Wrap a gold / predicted answer as ``\\boxed{…}`` (what math-verify parses most reliably)."""
    a = answer.strip()
    if "\\boxed" in a:
        return a
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if a.startswith(left) and a.endswith(right) and len(a) >= len(left) + len(right):
            a = a[len(left):len(a) - len(right)].strip()
            break
    return "\\boxed{" + a + "}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    from math_verify import parse

    return tuple(parse(_as_boxed(normalize_answer(gold)), parsing_timeout=None))


def _quiet_math_verify() -> None:
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def warm_up() -> None:
    """Worker initializer: import math-verify (and sympy) before the first timed call."""
    _quiet_math_verify()
    from math_verify import parse, verify

    verify(parse("\\boxed{1}", parsing_timeout=None), parse("\\boxed{1}", parsing_timeout=None), timeout_seconds=None)


def gold_parses(gold: str) -> bool:
    """Worker function: does the gold answer parse to a mathematical object (not only a string)?"""
    _quiet_math_verify()
    parsed = _parse_gold(gold)
    return bool(parsed) and not isinstance(parsed[0], str)


def _scalar(x: Any) -> bool:
    import sympy

    return isinstance(x, sympy.Expr) and bool(x.is_number) and not x.has(sympy.oo, sympy.zoo, sympy.nan)


def _exact_equal(g: Any, p: Any, gold: str, pred: str) -> bool:
    """Exact equality of two numbers (to 45 digits); a percent sign on one side only is allowed."""
    import sympy

    cands = [p]
    if "%" in gold and "%" not in pred:
        cands.append(p / 100)
    if "%" in pred and "%" not in gold:
        cands.append(p * 100)
    for c in cands:
        try:
            if abs(complex(sympy.N((g - c).doit(), 60))) < 1e-40:
                return True
        except (TypeError, ValueError):  # not a number after all
            continue
    return False


def grade(gold: str, predicted: str, float_rounding: int, numeric_precision: int,
          decimal_tolerance: float = 0.5) -> dict[str, Any]:
    """Worker function: {"status": "gold_unparsed" | "pred_unparsed" | "ok", "correct": bool, ...}."""
    from math_verify import parse, verify

    _quiet_math_verify()
    gold_choice, pred_choice = split_choice(gold), split_choice(predicted)
    if gold_choice and not gold_choice[1] and pred_choice:  # a bare letter: the letter decides
        return {"status": "ok", "correct": gold_choice[0] == pred_choice[0], "parsed": pred_choice[0]}
    if pred_choice and pred_choice[1]:
        predicted = pred_choice[1]  # "(B) 5" against a value: the value decides
    gold_parsed = _parse_gold(gold)
    if not gold_parsed or isinstance(gold_parsed[0], str):
        return {"status": "gold_unparsed", "correct": False}
    gold_n, pred_n = normalize_answer(gold), normalize_answer(predicted)
    places = decimal_places(gold_n)
    if places is None:  # an exact gold: the prediction's decimals are taken at face value
        pred_n = exact_decimals(pred_n)
    pred_parsed = parse(_as_boxed(pred_n), parsing_timeout=None)
    if not pred_parsed:
        return {"status": "pred_unparsed", "correct": False}
    g, p = gold_parsed[0], pred_parsed[0]
    if _scalar(g) and _scalar(p):
        if places is None:
            ok = _exact_equal(g, p, gold, predicted)
        else:  # the gold is an approximation: within `decimal_tolerance` units of its last place
            ok = abs(float(g) - float(p)) <= decimal_tolerance * 10.0 ** -places * (1 + 1e-9)
    else:
        ok = verify(list(gold_parsed), pred_parsed, float_rounding=float_rounding if places else EXACT_ROUNDING,
                    numeric_precision=numeric_precision, timeout_seconds=None)
    return {"status": "ok", "correct": bool(ok), "parsed": str(p)[:200]}


class MathReward:
    """1.0 when the last ``\\boxed{}`` of the response equals ``row.answer`` (math-verify), else 0.0.

    Args:
        timeout_s: wall-clock limit of one parse+verify, in seconds (its worker is killed after it).
        num_workers: worker processes grading in parallel.
        float_rounding: math-verify: decimal places numbers are rounded to before comparing, for
            non-scalar answers (tuples, sets, matrices) whose gold contains a decimal number.
            Exact golds are compared exactly (a prediction's decimals are taken as exact
            fractions: ``0.3333333`` is not ``1/3``).
        decimal_tolerance: a scalar gold written as a decimal (``3.14``) is an approximation: a
            prediction within this many units of the gold's last decimal place scores 1
            (0.5: the prediction rounds to the gold; 0: exact).
        numeric_precision: math-verify: significant digits of numeric evaluation.
        start_method: multiprocessing start method of the workers ("spawn" is safe everywhere).
    """

    binary = True

    def __init__(self, timeout_s: float = 5.0, num_workers: int = 2, float_rounding: int = 6,
                 numeric_precision: int = 15, start_method: str = "spawn", decimal_tolerance: float = 0.5) -> None:
        if timeout_s <= 0:
            raise ValueError(f"MathReward timeout_s must be > 0, got {timeout_s}")
        if not decimal_tolerance >= 0:
            raise ValueError(f"MathReward decimal_tolerance must be >= 0, got {decimal_tolerance}")
        self.decimal_tolerance = float(decimal_tolerance)
        self._gold_ok: dict[str, str | None] = {}  # gold -> None (fine) or why it is not gradable
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self.float_rounding = float_rounding
        self.numeric_precision = numeric_precision
        self.start_method = start_method
        self._pool: TimeoutPool | None = None
        self._pool_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None
        state["_pool_lock"] = None
        state["_gold_ok"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    @property
    def pool(self) -> TimeoutPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = TimeoutPool(self.num_workers, self.start_method, initializer=warm_up)
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (they restart on the next call)."""
        if self._pool is not None:
            self._pool.close()

    def gold_error(self, gold: str) -> str | None:
        """Why `gold` is not a gradable answer, or None (cached per gold)."""
        if gold in self._gold_ok:
            return self._gold_ok[gold]
        why = gold_problem(gold)
        if why is None:
            try:
                if not self.pool.call(gold_parses, (gold,), self.timeout_s):
                    why = "does not parse with math-verify"
            except (CallTimeout, WorkerDied, RuntimeError) as e:
                why = f"could not be parsed: {e}"
        self._gold_ok[gold] = why
        return why

    def validate(self, row: PromptRow, where: str) -> None:
        """Load-time check: the row's gold answer is a gradable answer (raises ValueError naming `where`)."""
        if not row.answer or not row.answer.strip():
            raise ValueError(f"{where}: domain {row.domain!r} needs a non-empty 'answer' for MathReward")
        why = self.gold_error(row.answer)
        if why:
            raise ValueError(f"{where}: gold answer {row.answer[:80]!r}: {why}; fix or drop the row")

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        gold = row.answer
        if not gold or not gold.strip():
            return RewardResult(0.0, valid=False, info={"error": "row has no gold answer"})
        why = self.gold_error(gold)
        if why:  # bad data: excluded from the loss and counted, never scored as a wrong answer
            return RewardResult(0.0, valid=False, info={"error": f"gold answer {gold[:80]!r}: {why}",
                                                        "bad_gold": True})
        boxed = last_boxed(response)
        if boxed is None or not boxed.strip():
            return RewardResult(0.0, info={"extracted": None, "reason": "no \\boxed{} answer"})
        info: dict[str, Any] = {"extracted": boxed[:200]}
        args = (gold, boxed, self.float_rounding, self.numeric_precision, self.decimal_tolerance)
        try:
            out = self.pool.call(grade, args, self.timeout_s)
        except CallTimeout:  # the gold was checked above: the answer is what hung
            return RewardResult(0.0, info={**info, "timeout": True,
                                           "reason": f"verification took over {self.timeout_s:g} s"})
        except (WorkerDied, RuntimeError) as e:
            return RewardResult(0.0, info={**info, "reason": f"verifier failed: {e}"})
        if out["status"] == "gold_unparsed":
            return RewardResult(0.0, valid=False, info={**info, "error": f"gold answer {gold[:80]!r} does not parse"})
        if out["status"] == "pred_unparsed":
            return RewardResult(0.0, info={**info, "reason": "answer does not parse"})
        return RewardResult(1.0 if out["correct"] else 0.0, info={**info, "parsed": out.get("parsed")})

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"MathReward got {len(rows)} rows but {len(responses)} responses")
        if len(rows) <= 1:
            return [self.score_one(r, s) for r, s in zip(rows, responses)]
        with ThreadPoolExecutor(max_workers=self.num_workers) as ex:
            return list(ex.map(self.score_one, rows, responses))
