"""MathReward: math-verify equivalence, binary reward, invalid gold, and a hard timeout on towers."""

from __future__ import annotations

import pickle
import threading
import time

import pytest
from rewards_testlib import make_row

from ring_lightning.rewards.math import MathReward


@pytest.fixture(scope="module")
def reward():
    r = MathReward(timeout_s=2.0, num_workers=2)
    yield r
    r.close()


def score(reward, gold, response):
    return reward([make_row("math", answer=gold)], [response])[0]


@pytest.mark.parametrize("gold,response", [
    ("\\frac{1}{2}", "so the answer is \\boxed{0.5}"),
    ("0.5", "\\boxed{\\dfrac{1}{2}}"),
    ("42", "<think>maybe \\boxed{41}</think> The answer is $\\boxed{42}$."),
    ("$x^2+1$", "\\boxed{1 + x^2}"),
    ("\\sqrt{2}", "\\boxed{2^{1/2}}"),
    ("(1,2)", "\\boxed{(1, 2)}"),
    ("B", "\\boxed{B}"),
])
def test_right_answers(reward, gold, response):
    res = score(reward, gold, response)
    assert (res.reward, res.valid) == (1.0, True), res.info


@pytest.mark.parametrize("gold,response,why", [
    ("42", "\\boxed{41}", None),
    ("42", "\\boxed{42} no wait \\boxed{43}", None),  # the last box decides
    ("42", "The answer is 42.", "no \\boxed{} answer"),  # no box, no format-free credit
    ("42", "\\boxed{}", "no \\boxed{} answer"),
    ("42", "\\boxed{42", "no \\boxed{} answer"),  # truncated
    ("B", "\\boxed{C}", None),
])
def test_wrong_and_malformed_answers(reward, gold, response, why):
    res = score(reward, gold, response)
    assert (res.reward, res.valid) == (0.0, True), res.info
    if why:
        assert res.info["reason"] == why


def test_adversarial_answers_get_nothing(reward):
    for response in ["\\boxed{42 or 43}", "\\boxed{x}", "\\boxed{\\text{any of } 41, 42, 43}",
                     "\\boxed{\\infty}", "\\boxed{__import__('os').system('true')}"]:
        res = score(reward, "42", response)
        assert res.reward == 0.0, (response, res.info)


def test_unparseable_gold_is_excluded_not_rewarded(reward):
    res = score(reward, "}{", "\\boxed{1}")
    assert res.reward == 0.0 and res.valid is False and "unbalanced braces" in res.info["error"]
    with pytest.raises(ValueError, match="data.jsonl row 3: gold answer"):
        reward.validate(make_row("math", answer="}{"), "data.jsonl row 3")
    reward.validate(make_row("math", answer="\\frac{3}{4}"), "data.jsonl row 4")


def test_exponent_tower_times_out_without_hanging(reward):
    t0 = time.monotonic()
    res = score(reward, "2", "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}")
    assert res.reward == 0.0 and res.valid is True and res.info["timeout"] is True
    assert time.monotonic() - t0 < 60
    assert score(reward, "2", "\\boxed{2}").reward == 1.0  # the pool recovered


def test_batched_from_threads_and_picklable(reward):
    out = {}

    def work(k):
        out[k] = [r.reward for r in reward([make_row("math", answer=str(k))] * 3,
                                           [f"\\boxed{{{k}}}", f"\\boxed{{{k + 1}}}", "none"])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: [1.0, 0.0, 0.0] for k in range(4)}
    clone = pickle.loads(pickle.dumps(reward))  # the worker pool is not pickled; a clone starts its own lazily
    assert clone.timeout_s == 2.0 and clone._pool is None and clone._pool_lock is not None
