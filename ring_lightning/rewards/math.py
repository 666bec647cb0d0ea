"""Math / science reward: the last ``\\boxed{…}`` of the response, checked with math-verify; 1 or 0.

What the Ring-lite report says (arXiv 2506.14731, reinforcement-learning data: math and science
problems are kept only when their answers are verifiable; the rule-based reward is correctness of
the final answer): a binary correctness reward, no format reward. The report does not say how the
final answer is located; we take the last ``\\boxed{}`` (the SFT data's answer format), and grade it
with math-verify (symbolic / numeric equivalence: ``\\dfrac12`` = ``0.5`` = ``1/2``) against
``row.answer``.

Decisions the report leaves open:

* A gold answer that math-verify cannot parse is a data error: the sample gets ``valid=False``
  (excluded from the loss, never rewarded) and ``info["error"]`` says why.
* Timeouts: math-verify's own timeouts use ``signal.alarm``, which fails outside the main thread
  and cannot interrupt a C-level computation (a tower ``2^{2^{2^{…}}}`` becomes a huge integer
  power). Every parse+verify therefore runs in a `TimeoutPool` worker process that is killed after
  `timeout_s`; the sample then gets reward 0 with ``info["timeout"] = True`` (or ``valid=False``
  when it was the gold answer that hung). Workers cache parsed gold answers.
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
from ring_lightning.rewards.timeout_pool import CallTimeout, TimeoutPool, WorkerDied


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

    return tuple(parse(_as_boxed(gold), parsing_timeout=None))


def _quiet_math_verify() -> None:
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def warm_up() -> None:
    """Worker initializer: import math-verify (and sympy) before the first timed call."""
    _quiet_math_verify()
    from math_verify import parse, verify

    verify(parse("\\boxed{1}", parsing_timeout=None), parse("\\boxed{1}", parsing_timeout=None), timeout_seconds=None)


def gold_parses(gold: str) -> bool:
    """Worker function: does the gold answer parse?"""
    _quiet_math_verify()
    return bool(_parse_gold(gold))


def grade(gold: str, predicted: str, float_rounding: int, numeric_precision: int) -> dict[str, Any]:
    """Worker function: {"status": "gold_unparsed" | "pred_unparsed" | "ok", "correct": bool, ...}."""
    from math_verify import parse, verify

    _quiet_math_verify()
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return {"status": "gold_unparsed", "correct": False}
    pred_parsed = parse(_as_boxed(predicted), parsing_timeout=None)
    if not pred_parsed:
        return {"status": "pred_unparsed", "correct": False}
    ok = verify(list(gold_parsed), pred_parsed, float_rounding=float_rounding,
                numeric_precision=numeric_precision, timeout_seconds=None)
    return {"status": "ok", "correct": bool(ok), "parsed": str(pred_parsed[-1])[:200]}


class MathReward:
    """1.0 when the last ``\\boxed{}`` of the response equals ``row.answer`` (math-verify), else 0.0.

    Args:
        timeout_s: wall-clock limit of one parse+verify, in seconds (its worker is killed after it).
        num_workers: worker processes grading in parallel.
        float_rounding: math-verify: decimal places numbers are rounded to before comparing.
        numeric_precision: math-verify: significant digits of numeric evaluation.
        start_method: multiprocessing start method of the workers ("spawn" is safe everywhere).
    """

    binary = True

    def __init__(self, timeout_s: float = 5.0, num_workers: int = 2, float_rounding: int = 6,
                 numeric_precision: int = 15, start_method: str = "spawn") -> None:
        if timeout_s <= 0:
            raise ValueError(f"MathReward timeout_s must be > 0, got {timeout_s}")
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

    def validate(self, row: PromptRow, where: str) -> None:
        """Load-time check: the row has a gold answer that math-verify parses."""
        if not row.answer or not row.answer.strip():
            raise ValueError(f"{where}: domain {row.domain!r} needs a non-empty 'answer' for MathReward")
        try:
            ok = self.pool.call(gold_parses, (row.answer,), self.timeout_s)
        except (CallTimeout, WorkerDied, RuntimeError) as e:
            raise ValueError(f"{where}: gold answer {row.answer[:80]!r} could not be parsed: {e}") from None
        if not ok:
            raise ValueError(f"{where}: gold answer {row.answer[:80]!r} does not parse with math-verify; "
                             "fix or drop the row")

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        gold = row.answer
        if not gold or not gold.strip():
            return RewardResult(0.0, valid=False, info={"error": "row has no gold answer"})
        boxed = last_boxed(response)
        if boxed is None or not boxed.strip():
            return RewardResult(0.0, info={"extracted": None, "reason": "no \\boxed{} answer"})
        info: dict[str, Any] = {"extracted": boxed[:200]}
        try:
            out = self.pool.call(grade, (gold, boxed, self.float_rounding, self.numeric_precision), self.timeout_s)
        except CallTimeout:
            return self._timed_out(gold, info)
        except (WorkerDied, RuntimeError) as e:
            return RewardResult(0.0, info={**info, "reason": f"verifier failed: {e}"})
        if out["status"] == "gold_unparsed":
            return RewardResult(0.0, valid=False, info={**info, "error": f"gold answer {gold[:80]!r} does not parse"})
        if out["status"] == "pred_unparsed":
            return RewardResult(0.0, info={**info, "reason": "answer does not parse"})
        return RewardResult(1.0 if out["correct"] else 0.0, info={**info, "parsed": out.get("parsed")})

    def _timed_out(self, gold: str, info: dict[str, Any]) -> RewardResult:
        """Tell a hanging answer (reward 0) from a hanging gold (invalid sample)."""
        try:
            gold_ok = self.pool.call(gold_parses, (gold,), self.timeout_s)
        except (CallTimeout, WorkerDied, RuntimeError):
            gold_ok = False
        if not gold_ok:
            return RewardResult(0.0, valid=False, info={**info, "timeout": True,
                                                         "error": f"gold answer {gold[:80]!r} does not parse in time"})
        return RewardResult(0.0, info={**info, "timeout": True,
                                       "reason": f"verification took over {self.timeout_s:g} s"})

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"MathReward got {len(rows)} rows but {len(responses)} responses")
        if len(rows) <= 1:
            return [self.score_one(r, s) for r, s in zip(rows, responses)]
        with ThreadPoolExecutor(max_workers=self.num_workers) as ex:
            return list(ex.map(self.score_one, rows, responses))
