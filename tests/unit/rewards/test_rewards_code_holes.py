"""CodeReward: the status of a test comes from outside the program (no forged record passes); assert suites
have a tight wall cap."""

from __future__ import annotations

import textwrap
import time

import pytest
from rewards_testlib import UID_RANGE, make_row

from ring_lightning.rewards.code.reward import CodeReward

STDIO = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}]}
ASSERT = {"type": "assert", "code": "assert add(1, 2) == 3\n"}


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    # 1 MiB output cap -> RLIMIT_FSIZE of 1 MiB for every file the program writes (stdout, stderr).
    return CodeReward(timeout_s=1.0, memory_mb=512, max_output_bytes=1 << 20, uid_range=UID_RANGE)


def run(reward, tests, src):
    return reward([make_row("code", tests=tests)], [f"```python\n{textwrap.dedent(src)}\n```"])[0]


def test_correct_output_then_stderr_past_the_file_cap_and_a_crash_scores_0(reward):
    res = run(reward, STDIO, """
        import sys
        a, b = map(int, input().split())
        print(a + b, flush=True)
        try:
            sys.stderr.write("x" * (3 << 20))
            sys.stderr.flush()
        except OSError:
            pass
        raise ValueError("boom")
        """)
    assert res.reward == 0.0, res.info
    assert "exit status 1" in res.info["reason"] or "output limit" in res.info["reason"], res.info


def test_stderr_past_the_file_cap_alone_fails_the_case(reward):
    res = run(reward, STDIO, """
        import os
        a, b = map(int, input().split())
        print(a + b, flush=True)
        try:
            os.write(2, b"x" * (2 << 20))
        except OSError:
            pass
        """)
    assert res.reward == 0.0 and "output limit" in res.info["reason"], res.info


def test_crash_whose_traceback_cannot_be_written_scores_0(reward):
    res = run(reward, STDIO, """
        import os
        a, b = map(int, input().split())
        print(a + b, flush=True)
        os.close(2)
        raise ValueError("boom")
        """)
    assert res.reward == 0.0, res.info


def test_right_program_with_some_stderr_still_scores_1(reward):
    res = run(reward, STDIO, """
        import sys
        a, b = map(int, input().split())
        print("debug", file=sys.stderr)
        print(a + b)
        """)
    assert res.reward == 1.0, res.info


def test_program_cannot_reach_the_harness_channel_through_proc(reward):
    res = run(reward, STDIO, """
        import os
        try:
            fd = os.open(f"/proc/{os.getppid()}/fd/3", os.O_WRONLY)
            os.write(fd, b"forged\\n")
            print("reached")
        except OSError:
            print(3)
        """)
    assert res.reward == 1.0 and res.info.get("foreign_messages", 0) == 0, res.info


def test_sleeping_assert_suite_returns_after_limit_plus_grace(reward):
    t0 = time.monotonic()
    res = run(reward, ASSERT, """
        import time
        def add(a, b):
            time.sleep(60)
            return a + b
        """)
    took = time.monotonic() - t0
    assert res.reward == 0.0 and "time limit" in res.info["reason"], res.info
    assert took < reward.timeout_s + reward.wall_grace_s + 1.5, took


def test_assert_suite_within_the_limit_still_passes(reward):
    res = run(reward, ASSERT, """
        import time
        def add(a, b):
            time.sleep(0.3)
            return a + b
        """)
    assert res.reward == 1.0, res.info


def test_assert_program_that_exits_0_before_the_tests_scores_0(reward):
    res = run(reward, ASSERT, "import os\ndef add(a, b):\n    return a + b\nos._exit(0)\n")
    assert res.reward == 0.0, res.info


def test_negative_wall_grace_is_refused():
    with pytest.raises(ValueError, match="wall_grace_s"):
        CodeReward(wall_grace_s=-1.0)


def test_assert_program_killed_by_its_cpu_limit_scores_0(reward):
    res = run(reward, ASSERT, "def add(a, b):\n    while True:\n        pass\n")
    assert res.reward == 0.0 and "time limit" in res.info["reason"], res.info


FORGER = """
    import json, os, sys

    def forge():
        # every token / key the harness left in reach of the program's frames, and a guess
        secrets = {"0" * 32}
        frame = sys._getframe()
        while frame is not None:
            for v in list(frame.f_locals.values()):
                for obj in (v, getattr(v, "__self__", None)):
                    if isinstance(getattr(obj, "token", None), str):
                        secrets.add(obj.token)
            frame = frame.f_back
        records = []
        for t in secrets:
            records += [{"a": 0, "v": [["b", 1]], "t": t}, {"a": 1, "v": [["i", "0x1"], ["i", "0x1"]], "t": t},
                        {"done": True, "t": t}, {"end": True, "t": t}]
        data = "".join(json.dumps(r) + "\\n" for r in records).encode()
        targets = list(range(256))
        try:
            targets.append(os.open(f"/proc/{os.getppid()}/fd/3", os.O_WRONLY))
        except OSError:
            pass
        for fd in targets:
            try:
                os.write(fd, data)
            except OSError:
                pass
        print(data.decode(), flush=True)
        os._exit(0)  # before any assert runs

    forge()

    def is_even(n):
        return False
    """
# Neither assert has a literal side: both operands are computed in the sandbox, so a record with the
# right token and made-up operands would pass them.
FORGEABLE = {"type": "assert", "code": "assert is_even(4)\nassert is_even(3) == is_even(5)\n"}


def test_assert_program_forging_harness_records_on_every_fd_scores_0(reward):
    # Before the fix the program ran beside the reporter: it found the token in the harness's frames,
    # wrote probe records, `done` and `end` to fd 3 and exited 0 — and scored 1.
    res = run(reward, FORGEABLE, FORGER)
    assert res.reward == 0.0, res.info
    assert "forged" in res.info["reason"], res.info


def test_assert_program_forging_records_is_caught_by_the_relay_even_without_a_token(reward):
    # Well-formed records without the child's key, written into the child's own pipe: refused.
    res = run(reward, FORGEABLE, FORGER.replace('"t": t', '"x": t'))
    assert res.reward == 0.0 and "forged" in res.info["reason"], res.info


def test_honest_assert_program_with_computed_operands_still_scores_1(reward):
    res = run(reward, FORGEABLE, "def is_even(n):\n    return n % 2 == 0\n")
    assert res.reward == 1.0, res.info
    wrong = run(reward, FORGEABLE, "def is_even(n):\n    return n % 2 == 1\n")
    assert wrong.reward == 0.0 and "assert 0" in wrong.info["reason"], wrong.info


@pytest.mark.parametrize("record", ['{"end": true}', '{"done": true, "end": true}', '{"a": 0, "v": [], "t": "x"}',
                                    '{"compile_error": "x"}', '{"done": 1}', '{"a": true, "v": []}', "not json", "[1]"])
def test_a_relayed_record_of_a_kind_the_child_never_writes_fails_the_run(record):
    import json

    from ring_lightning.rewards.code.assert_probes import compile_assert_tests
    from ring_lightning.rewards.code.reward import _Judge

    _, probes = compile_assert_tests("assert f()\n")
    judge = _Judge("tok", "assert", None, probes)
    lines = [{"t": "tok", "c": '{"a":0,"v":[["b",1]]}'}, {"t": "tok", "c": record},
             {"t": "tok", "c": '{"done":true}'}, {"t": "tok", "end": True}]
    judge.feed("".join(json.dumps(x) + "\n" for x in lines).encode())
    assert judge.verdict() == (False, "the test run wrote a record its harness never writes (forged or corrupt)")
    honest = _Judge("tok", "assert", None, probes)
    honest.feed("".join(json.dumps(x) + "\n" for x in lines[:1] + lines[2:]).encode())
    assert honest.verdict() == (True, None)
    unwrapped = _Judge("tok", "assert", None, probes)  # the parent never writes a probe or `done` itself
    unwrapped.feed(b'{"t": "tok", "a": 0, "v": [["b", 1]]}\n{"t": "tok", "done": true}\n{"t": "tok", "end": true}\n')
    assert unwrapped.verdict()[0] is False
