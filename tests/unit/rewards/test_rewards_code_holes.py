"""CodeReward: the status of a test comes from outside the program; assert suites have a tight wall cap."""

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
