"""pass@k: the unbiased estimator on hand-computed cases, the rank-summing Metric, evaluate_rollouts."""

import math
import random
from itertools import combinations

import pytest
import torch

from ring_lightning.rows import parse_row
from ring_lightning.eval.passk import PassAtK, evaluate_rollouts, pass_at_k
from ring_lightning.models.loading import load_tokenizer
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rollout.engine import Completion, SamplingConfig


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),          # c / n
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 0, 1, 0.0),
    (5, 0, 3, 0.0),
    (5, 3, 3, 1.0),          # n - c = 2 < k = 3
    (5, 5, 1, 1.0),
    (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # probability that a random k-subset of the n samples contains a correct one
                hits = sum(any(i < c for i in s) for s in combinations(range(n), k))
                assert pass_at_k(n, c, k) == pytest.approx(hits / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)


def test_metric_averages_over_problems_and_sums_over_ranks():
    m = PassAtK(k=[2, 4])
    m.update([2, 0, 4], [5, 5, 4])
    out = m.compute()
    assert out["pass@1"].item() == pytest.approx((0.4 + 0.0 + 1.0) / 3, abs=1e-6)
    assert out["pass@2"].item() == pytest.approx((0.7 + 0.0 + 1.0) / 3, abs=1e-6)
    assert out["pass@4"].item() == pytest.approx((1.0 + 0.0 + 1.0) / 3, abs=1e-6)  # n - c = 3 < 4 -> 1
    assert out["problems"].item() == 3
    # two "ranks" holding a split of the problems reduce (sum states) to the same result
    a, b = PassAtK(k=[2, 4]), PassAtK(k=[2, 4])
    a.update([2], [5])
    b.update([0, 4], [5, 4])
    assert all(fx is torch.sum or getattr(fx, "__name__", "") == "dim_zero_sum" for fx in a._reductions.values())
    a.merge_state(b)
    merged = a.compute()
    for key in out:
        assert merged[key].item() == pytest.approx(out[key].item(), abs=1e-6)


def test_metric_errors_when_too_few_samples_or_empty():
    m = PassAtK(k=[4])
    with pytest.raises(ValueError, match="pass@4 needs >= 4"):
        m.update([1], [3])
    with pytest.raises(RuntimeError, match="no problems"):
        PassAtK().compute()


class ScriptedEngine:
    """Answers each prompt with its n completions from a script: prompt index -> list of texts."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling))
        out = []
        for i, _ in enumerate(prompts):
            texts = self.script[i]
            assert len(texts) == n
            out.append([Completion((5,) * (j + 1), (-1.0,) * (j + 1), t, "stop") for j, t in enumerate(texts)])
        return out


class ExactAnswer:
    def __call__(self, rows, texts):
        return [RewardResult(float(t.strip() == r.answer), valid=r.answer != "bad") for r, t in zip(rows, texts)]


def test_evaluate_rollouts_counts_correct_samples_per_problem_and_domain():
    rows = [parse_row({"id": "a", "domain": "math", "prompt": "1+1?", "answer": "2"}, "test row 0"),
            parse_row({"id": "b", "domain": "logic", "prompt": "x?", "answer": "y", "meta": {"task": "countdown"}}, "test row 1"),
            parse_row({"id": "c", "domain": "math", "prompt": "2+2?", "answer": "bad"}, "test row 2")]
    engine = ScriptedEngine({0: ["2", "3", "2", "2"], 1: ["n", "n", "n", "y"], 2: ["bad"] * 4})
    metrics = {"all": PassAtK(k=[2]), "math": PassAtK(k=[2])}
    res = evaluate_rollouts(engine, load_tokenizer(), rows, ExactAnswer(), 4,
                            SamplingConfig(temperature=1.0, max_tokens=8, seed=3), metrics=metrics)
    assert res.num_correct.tolist() == [3, 1, 0]  # the invalid ("bad" gold) samples never count
    assert res.domains == ("math", "logic", "math")
    assert res.mean_response_tokens == pytest.approx(2.5)
    all_ = metrics["all"].compute()
    assert all_["pass@1"].item() == pytest.approx((0.75 + 0.25 + 0) / 3, abs=1e-6)
    assert all_["pass@2"].item() == pytest.approx((1.0 + 0.5 + 0) / 3, abs=1e-6)
    math_ = metrics["math"].compute()
    assert math_["problems"].item() == 2 and math_["pass@1"].item() == pytest.approx(0.375, abs=1e-6)
    assert engine.calls[0][:2] == (3, 4)


def test_metric_matches_monte_carlo_pass_at_k():
    """The estimator is unbiased: it matches the frequency of 'some of k random samples is correct'."""
    rng = random.Random(0)
    n, c, k = 8, 3, 3
    trials = 20000
    hits = sum(any(s < c for s in rng.sample(range(n), k)) for _ in range(trials))
    assert pass_at_k(n, c, k) == pytest.approx(hits / trials, abs=0.02)
