"""Answer verification of RL prompts: every kept row must be gradable by its RL verifier.

Ring-lite (arXiv 2506.14731, RL data curation) keeps a problem only if its reference answer is
usable by the verifier that grades the policy during RL; for code it drops malformed test cases and
keeps a problem only if a reference solution passes all of its tests in the sandbox. The report
also re-solves problems with a model to catch wrong answers; here that check is the difficulty stage
(a problem the policy never solves is dropped), because it needs the same samples.

Choices and details: docs/design.md#prepare-verify.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ring_lightning.prepare.rows import (
    Removal, StageRunner, get_meta, is_kept, mark, rebatch, set_meta, to_prompt_row, unbatch,
)
from ring_lightning.rows import PromptRow
from ring_lightning.rewards.code.reward import PYTHON, CodeReward, validate_tests
from ring_lightning.rewards.math import MathReward

_PARSE_LOCK = threading.Lock()


def gold_has_math_object(gold: str) -> bool:
    """Does the math reward's parse of `gold` hold a math object (not only a string)?

    math-verify falls back to the raw string when LaTeX does not parse (`\\frac{3}{` gives only
    the string `{\\frac{3}{}`); `MathReward.validate` accepts that, but the reward could then only
    compare answers as strings, so the strict check rejects it.
    """
    from ring_lightning.rewards.math import _parse_gold  # the reward's own parse (same wrapping, cache)

    with _PARSE_LOCK:  # the LaTeX parser is not known to be thread-safe
        return any(not isinstance(p, str) for p in _parse_gold(gold))


class MathGoldCheck:
    """`(row, where) -> None`, raising when the math reward could not grade against `row.answer`.

    Args:
        timeout_s: limit of one gold-answer parse, in seconds (its worker is killed after it).
        num_workers: math-verify worker processes.
        strict: also require the parse to be a math object, not math-verify's raw-string fallback
            (see `gold_has_math_object`); False = exactly `MathReward.validate`.
    """

    def __init__(self, timeout_s: float = 5.0, num_workers: int = 2, strict: bool = True):
        self.reward = MathReward(timeout_s=timeout_s, num_workers=num_workers)
        self.strict = strict

    def __call__(self, row: PromptRow, where: str) -> None:
        self.reward.validate(row, where)  # in a worker with a timeout: a hanging parse fails here
        # The same parse just finished within the timeout in the worker, so repeating it here is safe.
        if self.strict and not gold_has_math_object(row.answer):
            raise ValueError(f"{where}: gold answer {row.answer[:80]!r} is not valid LaTeX math "
                             "(math-verify only returns the raw string)")

    def close(self) -> None:
        self.reward.close()


class CodeSolutionRunner:
    """`(row, solution) -> bool`: does the reference solution pass every test of `row` in the sandbox?

    The solution is graded by `CodeReward` as if it were a policy response (the last fenced block
    for the row's language is the program, else the whole text).

    Args:
        timeout_s: per stdio case (or whole assert suite) limit, in seconds, unless the row sets one.
        memory_mb: address-space limit of the program, in MiB.
        isolation: sandbox isolation: "auto", "namespaces" or "process" (see rewards/code/sandbox.py).
    """

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 1024, isolation: str = "auto"):
        self.reward = CodeReward(timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation, max_workers=1)

    def __call__(self, row: PromptRow, solution: str) -> bool:
        return self.reward.score_one(row, solution).reward == 1.0


def sanitize_tests(tests: Mapping[str, Any], drop_empty_outputs: bool = True) -> tuple[dict[str, Any], int]:
    """Drop malformed cases of a stdio test spec; returns (cleaned spec, cases dropped).

    Non-stdio specs (e.g. `assert`) are returned unchanged: they have no separable cases.
    """
    tests = dict(tests)
    if tests.get("type") != "stdio" or not isinstance(tests.get("cases"), list):
        return tests, 0
    good = [c for c in tests["cases"]
            if isinstance(c, Mapping) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
            and not (drop_empty_outputs and not c["output"].strip())]
    dropped = len(tests["cases"]) - len(good)
    tests["cases"] = [dict(c) for c in good]
    return tests, dropped


def count_tests(tests: Mapping[str, Any]) -> int:
    """Test cases of a spec (an assert suite counts as one)."""
    if tests.get("type") == "stdio":
        return len(tests.get("cases") or [])
    return 1 if tests.get("type") == "assert" and str(tests.get("code", "")).strip() else 0


class AnswerVerifier:
    """The answer-verification stage.

    Args:
        enabled: run this stage.
        answer_domains: domains whose gold `answer` is checked with `answer_validator`.
        answer_validator: callable `(row: PromptRow, where: str) -> None` that raises when the row's
            gold answer cannot be graded. Default: `MathGoldCheck()`.
        validate_domains: domains checked with `domain_validator`.
        domain_validator: callable `(row: PromptRow, where: str) -> None` that raises when the row's
            verifier fields are unusable. Default: `RewardRouter().validate`.
        code_domains: domains whose tests and reference solutions are checked.
        solution_runner: callable `(row: PromptRow, solution: str) -> bool`, True when the solution
            passes every test of the row. Default: `CodeSolutionRunner()`.
        solutions_key: key in `meta` holding the reference solution(s) (a string or a list).
        max_solutions: at most this many reference solutions are tried per row.
        min_tests: code rows with fewer well-formed test cases are dropped ("no_valid_tests").
        drop_empty_outputs: a stdio case whose expected output is empty counts as malformed.
        workers: rows checked concurrently (threads; the work runs in reward workers / sandboxes).
    """

    name = "verify"

    def __init__(self, enabled: bool = True, answer_domains: list[str] = ["math", "science"],  # noqa: B006
                 answer_validator: Callable[[PromptRow, str], None] | None = None,
                 validate_domains: list[str] = ["logic", "instruction"],  # noqa: B006
                 domain_validator: Callable[[PromptRow, str], None] | None = None,
                 code_domains: list[str] = ["code"],  # noqa: B006
                 solution_runner: Callable[[PromptRow, str], bool] | None = None,
                 solutions_key: str = "solutions", max_solutions: int = 3, min_tests: int = 1,
                 drop_empty_outputs: bool = True, workers: int = 4):
        if max_solutions < 1 or min_tests < 1 or workers < 1:
            raise ValueError(f"verify.max_solutions, verify.min_tests and verify.workers must be >= 1, "
                             f"got {max_solutions}, {min_tests}, {workers}")
        self.enabled = enabled
        self.answer_domains = set(answer_domains)
        self.answer_validator = answer_validator
        self.validate_domains = set(validate_domains)
        self.domain_validator = domain_validator
        self.code_domains = set(code_domains)
        self.solution_runner = solution_runner
        self.solutions_key = solutions_key
        self.max_solutions = max_solutions
        self.min_tests = min_tests
        self.drop_empty_outputs = drop_empty_outputs
        self.workers = workers
        self._owned: list[Any] = []

    def apply(self, ds, runner: StageRunner):
        """Mark rows whose answer / tests cannot be verified (threads in the main process)."""
        if self.answer_validator is None and self.answer_domains:
            self.answer_validator = MathGoldCheck()
            self._owned.append(self.answer_validator)
        if self.domain_validator is None and self.validate_domains:
            from ring_lightning.rewards.router import RewardRouter

            self.domain_validator = RewardRouter().validate
        if self.solution_runner is None and self.code_domains:
            self.solution_runner = CodeSolutionRunner()
        return runner.map(ds, self._batch, desc=self.name, parallel=False)

    def report(self) -> dict[str, Any]:
        return {"answer_domains": sorted(self.answer_domains), "validate_domains": sorted(self.validate_domains),
                "code_domains": sorted(self.code_domains)}

    def close(self) -> None:
        """Stop the worker processes of the default checks this stage made."""
        for owned in self._owned:
            owned.close()

    def _batch(self, batch: Mapping[str, list]) -> dict[str, list]:
        rows = unbatch(batch)
        todo = [r for r in rows if is_kept(r)]
        with ThreadPoolExecutor(max_workers=min(self.workers, max(len(todo), 1))) as pool:
            removals = list(pool.map(self, todo))
        for row, removal in zip(todo, removals):
            if removal is not None:
                mark(row, self.name, removal)
        return rebatch(rows, list(batch))

    def __call__(self, row: dict[str, Any]) -> Removal | None:
        """Check one row (edits its tests / meta when malformed cases are dropped)."""
        if row["domain"] in self.answer_domains:
            try:
                self.answer_validator(to_prompt_row(row), row["_where"])
            except Exception as e:  # noqa: BLE001 (any validator failure means the answer cannot be graded)
                return Removal("unparseable_answer", {"answer": row["answer"], "error": str(e)[:300]})
            return None
        if row["domain"] in self.validate_domains:
            try:
                self.domain_validator(to_prompt_row(row), row["_where"])
            except Exception as e:  # noqa: BLE001
                return Removal("invalid_verifier_fields", {"error": str(e)[:300]})
            return None
        if row["domain"] in self.code_domains:
            return self._check_code(row)
        return None

    def _check_code(self, row: dict[str, Any]) -> Removal | None:
        tests, dropped = sanitize_tests(json.loads(row["tests"]) if row["tests"] else {}, self.drop_empty_outputs)
        if dropped:
            row["tests"] = json.dumps(tests, ensure_ascii=False)
            meta = get_meta(row)
            meta["malformed_tests_dropped"] = meta.get("malformed_tests_dropped", 0) + dropped
            set_meta(row, meta)
        n_tests = count_tests(tests)
        if n_tests < self.min_tests:
            return Removal("no_valid_tests", {"valid_tests": n_tests, "malformed_dropped": dropped})
        try:
            validate_tests(tests, {PYTHON.name: PYTHON, **_languages(self.solution_runner)}, row["_where"])
        except ValueError as e:  # CodeTestsError: the spec breaks the code reward's schema
            return Removal("invalid_tests", {"error": str(e)[:300]})
        solutions = get_meta(row).get(self.solutions_key)
        if isinstance(solutions, str):
            solutions = [solutions]
        if not solutions or not all(isinstance(s, str) for s in solutions):
            return Removal("no_reference_solution", {"key": f"meta.{self.solutions_key}"})
        prompt_row = to_prompt_row(row)
        tried = solutions[: self.max_solutions]
        for solution in tried:
            if self.solution_runner(prompt_row, solution):
                return None
        return Removal("reference_solution_fails", {"tried": len(tried), "tests": n_tests})


def _languages(runner: Any) -> dict[str, Any]:
    """Languages configured on the runner's code reward (Python only when unknown)."""
    reward = getattr(runner, "reward", None)
    return dict(getattr(reward, "languages", {}) or {})
