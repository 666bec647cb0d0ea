"""The math time bound by behaviour, not by the clock: what a timeout costs the call and the next one.

Before the fix, a timed-out answer made `MathReward` re-check the gold in the same call, and the
timed-out worker's slot came back empty, so the next call started a worker itself (a spawn and
math-verify's import) before grading.
"""

from __future__ import annotations

import operator
import threading
import time

from rewards_testlib import make_row

from ring_lightning.rewards import timeout_pool
from ring_lightning.rewards.math import MathReward
from ring_lightning.rewards.timeout_pool import CallTimeout, TimeoutPool


class ScriptedPool:
    """Stands in for the worker pool: records each call's function; `grade` hangs on request."""

    def __init__(self, hang_on: set[str]) -> None:
        self.calls: list[tuple[str, str]] = []
        self.hang_on = hang_on

    def call(self, fn, args, timeout_s):
        self.calls.append((fn.__name__, args[0] if fn.__name__ == "gold_parses" else args[1]))
        if fn.__name__ == "grade" and args[1] in self.hang_on:
            raise CallTimeout(f"grade took longer than {timeout_s:g} s")
        if fn.__name__ == "gold_parses":
            return True
        return {"status": "ok", "correct": args[0] == args[1], "parsed": args[1]}

    def close(self) -> None:
        pass


def test_a_timeout_costs_one_call_and_the_gold_is_checked_once_per_row():
    reward = MathReward(timeout_s=2.0, num_workers=1)
    pool = ScriptedPool(hang_on={"2^{2^{2^{2}}}"})
    reward._pool = pool
    row = make_row("math", answer="7")
    out = reward([row], ["\\boxed{2^{2^{2^{2}}}}"])[0]
    assert out.reward == 0.0 and out.valid and out.info["timeout"] is True
    # the gold was checked once before grading; nothing was run after the timed-out grade
    assert pool.calls == [("gold_parses", "7"), ("grade", "2^{2^{2^{2}}}")]
    again = reward([row, row], ["\\boxed{2^{2^{2^{2}}}}", "\\boxed{7}"])
    assert [r.reward for r in again] == [0.0, 1.0]
    assert [c for c in pool.calls if c[0] == "gold_parses"] == [("gold_parses", "7")]
    assert len(pool.calls) == 4


def test_after_a_timeout_the_next_call_does_not_wait_for_the_replacement_worker(monkeypatch):
    events: list[str] = []
    release = threading.Event()
    blocking = threading.Event()

    class SlowSpawn(timeout_pool._Worker):
        """A worker whose start-up, once `blocking` is set, waits until the test releases it."""

        def __init__(self, *args, **kwargs):
            if blocking.is_set():
                events.append("replacement spawn started")
                if not release.wait(timeout=30):  # only a guard against a hang of the old code
                    events.append("a call waited for a spawn")
                    raise RuntimeError("a call waited for a worker spawn")
            super().__init__(*args, **kwargs)
            if blocking.is_set():
                events.append("replacement ready")

    monkeypatch.setattr(timeout_pool, "_Worker", SlowSpawn)
    pool = TimeoutPool(num_workers=2, start_method="spawn")
    try:
        both = [threading.Thread(target=pool.call, args=(time.sleep, (0.5,), 60)) for _ in range(2)]
        for t in both:
            t.start()
        for t in both:
            t.join()
        assert len(pool._all) == 2  # two live workers
        blocking.set()
        try:
            pool.call(time.sleep, (120,), 0.5)
        except CallTimeout:
            events.append("timed out")
        events.append(f"next call returned {pool.call(operator.add, (1, 2), 60)}")
        release.set()
        deadline = time.monotonic() + 60
        while "replacement ready" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "timed out" in events
        assert events.index("next call returned 3") < events.index("replacement ready"), events
        assert "a call waited for a spawn" not in events
        assert pool.call(operator.add, (2, 3), 60) == 5 and pool.restarts == 1
    finally:
        release.set()
        pool.close()
