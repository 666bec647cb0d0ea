"""Verify stage: gold answers parse with the math reward; code needs a reference solution passing its
(sanitised) tests in the real sandbox. Injected callables replace both checks."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from ring_lightning.prepare.rows import FEATURES, StageRunner, to_internal
from ring_lightning.prepare.verify import AnswerVerifier, CodeSolutionRunner, MathGoldCheck, sanitize_tests
from ring_lightning.data.prompts import iter_raw_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "prepare"
MATH = [
    {"id": "m-ok", "domain": "math", "prompt": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}"},
    {"id": "m-ok-dollars", "domain": "math", "prompt": "What is 2+3?", "answer": "$5$"},
    {"id": "m-broken-latex", "domain": "math", "prompt": "Simplify 6/8.", "answer": "\\frac{3}{"},
    {"id": "science-letter", "domain": "science", "prompt": "Which gas do plants absorb? (A) O2 (B) CO2", "answer": "B"},
    {"id": "general-unchecked", "domain": "general", "prompt": "Write a haiku about rain."},
]


def internal(raws: list[dict], path: str = "t.jsonl") -> list[dict]:
    return [to_internal(r, f"{path} row {i}", source=None, default_source="t") for i, r in enumerate(raws)]


def run(verifier: AnswerVerifier, rows: list[dict]) -> dict[str, dict]:
    out = verifier.apply(datasets.Dataset.from_list(rows, features=FEATURES), StageRunner(batch_size=8))
    verifier.close()
    return {r["id"]: r for r in out}


@pytest.fixture(scope="module")
def verified() -> dict[str, dict]:
    """One run with the real defaults: MathReward (math-verify workers) and CodeReward (sandbox)."""
    code = [raw for _, raw in iter_raw_rows(FIXTURES / "raw_code.jsonl")]
    rows = internal(MATH) + internal(code, str(FIXTURES / "raw_code.jsonl"))
    verifier = AnswerVerifier(answer_validator=MathGoldCheck(num_workers=1), solution_runner=CodeSolutionRunner(),
                              validate_domains=[])
    verifier._owned.append(verifier.answer_validator)
    return run(verifier, rows)


def test_math_gold_answers(verified):
    assert verified["m-ok"]["_stage"] == "" and verified["m-ok-dollars"]["_stage"] == ""
    broken = verified["m-broken-latex"]
    assert (broken["_stage"], broken["_reason"]) == ("verify", "unparseable_answer")
    assert "t.jsonl row 2" in json.loads(broken["_detail"])["error"]
    assert verified["science-letter"]["_stage"] == ""
    assert verified["general-unchecked"]["_stage"] == ""


def test_code_rows_in_the_sandbox(verified):
    reasons = {k: v["_reason"] for k, v in verified.items() if k.startswith("code-")}
    assert reasons == {"code-ok": "", "code-second-solution": "", "code-assert": "",
                       "code-wrong-solution": "reference_solution_fails", "code-no-valid-tests": "no_valid_tests",
                       "code-no-solution": "no_reference_solution"}


def test_malformed_cases_are_dropped_and_counted(verified):
    ok = verified["code-ok"]
    assert json.loads(ok["tests"])["cases"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}]
    assert json.loads(ok["meta"])["malformed_tests_dropped"] == 2
    assert json.loads(verified["code-no-valid-tests"]["_detail"]) == {"valid_tests": 0, "malformed_dropped": 2}


def test_injected_callables_decide():
    calls = []

    def answer_validator(row, where):
        calls.append(("answer", row.id, where))
        if row.answer == "bad":
            raise ValueError("nope")

    def solution_runner(row, solution):
        calls.append(("code", row.id, solution))
        return solution == "good"

    tests = {"type": "stdio", "cases": [{"input": "", "output": "1"}]}
    rows = internal([
        {"id": "a1", "domain": "math", "prompt": "q1", "answer": "fine"},
        {"id": "a2", "domain": "math", "prompt": "q2", "answer": "bad"},
        {"id": "c1", "domain": "code", "prompt": "q3", "tests": tests, "meta": {"solutions": ["bad", "good"]}},
        {"id": "c2", "domain": "code", "prompt": "q4", "tests": tests, "meta": {"solutions": ["bad", "good"]}},
        {"id": "c3", "domain": "code", "prompt": "q5", "tests": {"type": "weird"}, "meta": {"solutions": ["good"]}},
    ])
    out = run(AnswerVerifier(answer_validator=answer_validator, solution_runner=solution_runner, max_solutions=2,
                             workers=1), rows[:3] + rows[4:])
    assert {k: v["_reason"] for k, v in out.items()} == {"a1": "", "a2": "unparseable_answer", "c1": "",
                                                          "c3": "no_valid_tests"}
    assert ("code", "c1", "good") in calls and ("answer", "a1", "t.jsonl row 0") in calls
    out = run(AnswerVerifier(answer_validator=answer_validator, solution_runner=solution_runner, max_solutions=1),
              rows[3:4])
    assert out["c2"]["_reason"] == "reference_solution_fails"


def test_invalid_spec_rejected_by_the_code_reward():
    rows = internal([{"id": "c", "domain": "code", "prompt": "q", "meta": {"solutions": ["x"]},
                      "tests": {"type": "stdio", "cases": [{"input": "", "output": "1"}], "timeout_s": -1}}])
    out = run(AnswerVerifier(answer_domains=[], solution_runner=lambda row, s: True), rows)
    assert out["c"]["_reason"] == "invalid_tests"
    assert "timeout_s" in json.loads(out["c"]["_detail"])["error"]


def test_sanitize_tests():
    spec = {"type": "stdio", "timeout_s": 2, "cases": [{"input": "1", "output": "1"}, {"input": 1, "output": "1"},
                                                        {"input": "2", "output": ""}, "junk"]}
    cleaned, dropped = sanitize_tests(spec)
    assert (cleaned, dropped) == ({"type": "stdio", "timeout_s": 2, "cases": [{"input": "1", "output": "1"}]}, 3)
    assert sanitize_tests(spec, drop_empty_outputs=False)[1] == 2
    assert sanitize_tests({"type": "assert", "code": "assert f() == 1"}) == ({"type": "assert", "code": "assert f() == 1"}, 0)


def test_other_domains_use_the_reward_router_validation():
    rows = internal([
        {"id": "i-ok", "domain": "instruction", "prompt": "Describe rain.",
         "instructions": [{"id": "keywords:existence", "kwargs": {"keywords": ["wet"]}}]},
        {"id": "i-unknown", "domain": "instruction", "prompt": "Describe snow.",
         "instructions": [{"id": "no:such_check", "kwargs": {}}]},
    ])
    out = run(AnswerVerifier(answer_domains=[], code_domains=[]), rows)
    assert out["i-ok"]["_reason"] == ""
    assert out["i-unknown"]["_reason"] == "invalid_verifier_fields"
    assert "t.jsonl row 1" in json.loads(out["i-unknown"]["_detail"])["error"]
