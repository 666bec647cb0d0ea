"""CodeReward: stdio and assert tests, program extraction, schema validation, other languages."""

from __future__ import annotations

import pickle
import textwrap
import time

import pytest
from rewards_testlib import UID_RANGE, make_row

from ring_lightning.rewards.code.assert_probes import compile_assert_tests, judge_event
from ring_lightning.rewards.code.reward import CodeReward, Language, CodeTestsError, extract_program, PYTHON

STDIO = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12"},
                                     {"input": "-4 4\n", "output": "0\n\n"}]}
ASSERT = {"type": "assert", "code": textwrap.dedent("""
    import math
    assert add(1, 2) == 3
    assert [add(i, i) for i in range(3)] == [0, 2, 4]
    assert 10 == add(5, 5)
    assert add(0.1, 0.2) != 0.3
    assert math.isclose(add(0.1, 0.2), 0.3)
    assert add(2, 2) in (4, 5)
    assert add(1, 1) is not None
    assert add(2, 3)
    """)}
HUMANEVAL = {"type": "assert", "code": textwrap.dedent("""
    def check(candidate):
        assert candidate([3, 1, 2]) == [1, 2, 3]
        assert candidate([]) == []
        for n in range(3):
            assert candidate([n]) == [n]
    check(sort_list)
    """)}


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    bash = Language(name="bash", source_file="main.sh", run=("bash", "main.sh"), fence_tags=("bash", "sh"))
    built = Language(name="built", source_file="main.sh", compile=("sh", "-c", "sh -n main.sh && cp main.sh prog.sh"),
                     run=("sh", "prog.sh"), fence_tags=("sh",))
    return CodeReward(timeout_s=2.0, memory_mb=512, startup_s=5.0, languages=[bash, built], uid_range=UID_RANGE)


def run(reward, tests, response):
    return reward([make_row("code", tests=tests)], [response])[0]


def py(src: str) -> str:
    return f"Here is my solution.\n```python\n{textwrap.dedent(src)}\n```\nDone."


def test_stdio_right_wrong_malformed(reward):
    ok = run(reward, STDIO, py("a, b = map(int, input().split())\nprint(a + b)   \n"))
    assert ok.reward == 1.0 and ok.info["cases_passed"] == "3/3", ok.info
    wrong = run(reward, STDIO, py("a, b = map(int, input().split())\nprint(a * b)"))
    assert wrong.reward == 0.0 and "case 0: wrong answer" in wrong.info["reason"]
    crash = run(reward, STDIO, py("a, b = map(int, input().split())\nprint(a + b)\nraise ValueError('boom')"))
    assert crash.reward == 0.0 and "ValueError" in crash.info["reason"]
    syntax = run(reward, STDIO, py("def f(:\n  pass"))
    assert syntax.reward == 0.0 and "compile error" in syntax.info["reason"]
    assert run(reward, STDIO, "").reward == 0.0


def test_stdio_exit_code_and_timeout_rules(reward):
    nonzero = run(reward, STDIO, py("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(3)"))
    assert nonzero.reward == 0.0 and "exit status 3" in nonzero.info["reason"]
    slow = run(reward, {**STDIO, "timeout_s": 0.5}, py("import time\ntime.sleep(5)\nprint(3)"))
    assert slow.reward == 0.0 and "time limit" in slow.info["reason"]


def test_assert_tests(reward):
    assert run(reward, ASSERT, py("def add(a, b):\n    return a + b")).reward == 1.0
    off_by_one = run(reward, ASSERT, py("def add(a, b):\n    return a + b + (a == 5)"))
    assert off_by_one.reward == 0.0 and "assert 2" in off_by_one.info["reason"]
    missing = run(reward, ASSERT, py("def plus(a, b):\n    return a + b"))
    assert missing.reward == 0.0 and "NameError" in missing.info["reason"]
    assert run(reward, HUMANEVAL, py("def sort_list(x):\n    return sorted(x)")).reward == 1.0
    assert run(reward, HUMANEVAL, py("def sort_list(x):\n    return x")).reward == 0.0
    never_called = {"type": "assert", "code": "def check(f):\n    assert f(1) == 2\n"}
    res = run(reward, never_called, py("def g(x): return x + 1"))
    assert res.reward == 0.0 and "no assert was executed" in res.info["reason"]
    half = {"type": "assert", "code": "def check(f):\n    assert f(1) == 2\nassert g(1) == 2\n"}
    res = run(reward, half, py("def g(x): return x + 1"))
    assert res.reward == 0.0 and "asserts never executed: [0]" in res.info["reason"]


def test_numpy_like_and_subclass_values_do_not_pass(reward):
    tests = {"type": "assert", "code": "assert f() == 3\n"}
    assert run(reward, tests, py("class N(int): pass\ndef f(): return N(3)")).reward == 0.0
    assert run(reward, tests, py("def f(): return 3.0")).reward == 1.0  # 3.0 == 3, as in Python


def test_program_extraction():
    assert extract_program("```python\nprint(1)\n```\n```python\nprint(2)\n```", PYTHON) == "print(2)\n"
    assert extract_program("print(3)", PYTHON) == "print(3)"
    assert extract_program("```cpp\nint main(){}\n```", PYTHON) == "```cpp\nint main(){}\n```"


def test_other_languages(reward):
    tests = {"type": "stdio", "language": "bash", "cases": [{"input": "4\n", "output": "8"}]}
    assert run(reward, tests, "```bash\nread x\necho $((x * 2))\n```").reward == 1.0
    assert run(reward, tests, "```bash\nread x\necho $((x * 3))\n```").reward == 0.0
    built = {"type": "stdio", "language": "built", "cases": [{"input": "", "output": "hi"}]}
    assert run(reward, built, "```sh\necho hi\n```").reward == 1.0
    broken = run(reward, built, "```sh\nif then fi (\n```")
    assert broken.reward == 0.0 and "compile error" in broken.info["reason"]


@pytest.mark.parametrize("tests,match", [
    ({"type": "unit"}, "'type' must be one of"),
    ({"type": "stdio", "cases": []}, "non-empty 'cases'"),
    ({"type": "stdio", "cases": [{"input": 1, "output": "2"}]}, r"cases\[0\]"),
    ({"type": "assert", "code": "x = 1"}, "no assert statement"),
    ({"type": "assert", "code": "assert (("}, "do not parse"),
    ({"type": "stdio", "language": "cobol", "cases": [{"input": "", "output": ""}]}, "unknown 'language'"),
    ({"type": "stdio", "timeout_s": -1, "cases": [{"input": "", "output": ""}]}, "timeout_s"),
])
def test_invalid_test_specs(reward, tests, match):
    with pytest.raises(CodeTestsError, match=match):
        reward.validate(make_row("code", tests=tests), "code.jsonl row 7")
    res = run(reward, tests, py("print(1)"))
    assert res.valid is False and res.reward == 0.0


def test_batch_runs_concurrently_in_order(reward):
    n = 6
    rows = [make_row("code", id=f"r{i}", tests={"type": "stdio", "cases": [{"input": "", "output": str(i)}]})
            for i in range(n)]
    responses = [py(f"import time\ntime.sleep(0.5)\nprint({i if i % 2 == 0 else -1})") for i in range(n)]
    t0 = time.monotonic()
    out = reward(rows, responses)
    assert [r.reward for r in out] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert time.monotonic() - t0 < n * 0.5 + 6  # overlapped, not strictly serial plus start-up


def test_picklable(reward):
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.timeout_s == 2.0 and sorted(clone.languages) == ["bash", "built", "python"]


def test_assert_rewrite_hides_literals():
    code, probes = compile_assert_tests("assert f(1) == 987654321\nif x:\n    assert g() > 5\nassert h()\n")
    assert "987654321" not in code and "5" not in code.replace("__rl_probe__(1", "")
    assert [(p.kind, p.op, p.hidden, p.required) for p in probes] == [
        ("cmp", "==", {1: 987654321}, True), ("cmp", ">", {1: 5}, False), ("truth", None, {}, True)]
    assert judge_event(probes[0], [["i", hex(987654321)]]) == (True, "")
    assert judge_event(probes[0], [["i", "0x1"]])[0] is False
    assert judge_event(probes[0], [["x", "?"]])[0] is False
    assert judge_event(probes[2], [["l", []]])[0] is False  # bool([]) is False


def test_tests_may_import_the_solution_and_shadowed_builtins_are_hidden(reward):
    imported = {"type": "assert", "code": "from solution import add\nassert add(2, 3) == 5\n"}
    assert run(reward, imported, py("def add(a, b):\n    return a + b")).reward == 1.0
    shadow = {"type": "assert", "code": "assert isinstance(f(), int)\n"}
    forged = py("def isinstance(*args):\n    return True\ndef f():\n    return 'not an int'")
    assert run(reward, shadow, forged).reward == 0.0
    assert run(reward, shadow, py("def f():\n    return 1")).reward == 1.0
