"""eval/heldout.py: settings are checked, pass@1 ± standard error / pass@k / paired differences are
computed right, and `evaluate_model` samples a real tiny HF export and counts exactly the samples a
(stub) reward calls correct — per set and per domain."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.eval.heldout import (HeldoutEval, evaluate_model, load_sets, paired_difference, summarize,
                                         summary_line)
from ring_lightning.eval.passk import EvalCounts, pass_at_k
from ring_lightning.models.loading import load_policy
from ring_lightning.rewards.base import RewardResult


class ParityReward:
    """1.0 for an even-length response, invalid for a response starting with "x", else 0; records texts."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, rows, responses):
        out = []
        for row, text in zip(rows, responses):
            self.seen.append((row.id, text))
            if text.startswith("x"):
                out.append(RewardResult(1.0, valid=False))
            else:
                out.append(RewardResult(1.0 if len(text) % 2 == 0 else 0.0))
        return out


def test_settings_are_checked():
    with pytest.raises(ValueError, match="`sets` is empty"):
        HeldoutEval(sets={})
    with pytest.raises(ValueError, match=r"every k must be in \[1, samples_per_prompt=4\]"):
        HeldoutEval(sets={"m": {"task": "addition", "size": 2}}, samples_per_prompt=4, k=[8])
    spec = HeldoutEval(sets={"m": {"task": "addition", "size": 2}}, samples_per_prompt=4, k=[4, 2])
    assert spec.k == [1, 2, 4] and isinstance(spec.sets["m"], PromptSource)
    assert spec.signature()["sets"]["m"]["task"] == "addition"


def test_summarize_and_paired_difference_by_hand():
    counts = EvalCounts(num_correct=torch.tensor([0, 2, 4]), num_samples=torch.tensor([4, 4, 4]),
                        domains=("math", "math", "logic"), mean_reward=0.5, mean_response_tokens=3.0)
    s = summarize(counts, [1, 2])
    assert s["prompts"] == 3 and s["samples"] == 12
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@1_se"] == pytest.approx(math.sqrt(0.25 / 3))  # rates 0, .5, 1: sample variance 0.25
    assert s["pass@2"] == pytest.approx((0 + pass_at_k(4, 2, 2) + 1) / 3)
    math_only = summarize(counts, [1], ["math"])
    assert math_only["prompts"] == 2 and math_only["pass@1"] == pytest.approx(0.25)
    after = summarize(EvalCounts(torch.tensor([2, 2, 4]), torch.tensor([4, 4, 4]), counts.domains, 0.0, 0.0), [1])
    mean, se = paired_difference(s, after)
    assert mean == pytest.approx(0.5 / 3) and se == pytest.approx(math.sqrt((1 / 12) / 3))  # diffs .5, 0, 0
    with pytest.raises(ValueError, match="same prompt set"):
        paired_difference(s, math_only)


def test_load_sets_validates_rows_naming_set_and_row():
    class Picky:
        def validate(self, row, where):
            raise ValueError(f"{where}: nope")

    spec = HeldoutEval(sets={"held": {"task": "addition", "size": 2, "task_kwargs": {"split": "heldout"}}})
    with pytest.raises(ValueError, match=r"evaluation set 'held' \(built-in task 'addition'\) row 0: nope"):
        load_sets(spec, Picky())


def test_evaluate_model_counts_what_the_reward_accepts(tmp_path):
    policy, tok = load_policy("bailing-tiny", seed=0, norm_head=False)
    policy.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "domain": "math", "prompt": "Compute 1 + 2 + 3.", "answer": "6"},
        {"id": "b", "domain": "instruction", "prompt": "Write a title about the sea.",
         "instructions": [{"id": "change_case:english_lowercase", "kwargs": {}}]},
        {"id": "c", "domain": "math", "prompt": "Compute 2 + 2 + 2.", "answer": "6"}]))
    spec = HeldoutEval(sets={"math": {"task": "addition", "size": 3, "seed": 7, "task_kwargs": {"split": "heldout"}},
                             "mixed": {"path": str(mixed)}},
                       samples_per_prompt=4, k=[1, 4], max_tokens=6, seed=3, torch_threads=1)
    reward = ParityReward()
    threads = torch.get_num_threads()
    res = evaluate_model(str(tmp_path / "m"), spec, reward=reward)
    assert torch.get_num_threads() == threads  # restored
    assert set(res["sets"]) == {"math", "mixed"} and res["model"] == str(tmp_path / "m")
    m = res["sets"]["math"]
    assert m["prompts"] == 3 and m["samples"] == 12 and m["num_samples"] == [4, 4, 4]
    math_rows = [r.id for r in load_sets(spec)["math"]]
    by_row: dict[str, list[str]] = {}
    for rid, text in reward.seen:
        by_row.setdefault(rid, []).append(text)
    expected = [sum(len(t) % 2 == 0 and not t.startswith("x") for t in by_row[rid]) for rid in math_rows]
    assert m["num_correct"] == expected
    assert m["pass@1"] == pytest.approx(sum(expected) / 12)
    assert m["pass@4"] == pytest.approx(sum(pass_at_k(4, c, 4) for c in expected) / 3)
    assert 0 < m["mean_response_tokens"] <= 6
    doms = res["domains"]["mixed"]
    assert set(doms) == {"math", "instruction"} and doms["math"]["prompts"] == 2 and doms["instruction"]["prompts"] == 1
    assert doms["math"]["num_correct"] == [res["sets"]["mixed"]["num_correct"][i] for i in (0, 2)]
    assert "math" not in res["domains"]  # a single-domain set has no per-domain rows
    # the same seed gives the same samples: a second evaluation is identical
    again = evaluate_model(str(tmp_path / "m"), spec, reward=ParityReward())
    assert again["sets"]["math"]["num_correct"] == m["num_correct"]


def test_a_control_set_is_sampled_analysed_and_marked_unscored(tmp_path):
    policy, tok = load_policy("bailing-tiny", seed=0, norm_head=False)
    policy.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    spec = HeldoutEval(sets={"control": {"task": "instruction_pairs", "size": 3, "seed": 7,
                                         "task_kwargs": {"split": "control"}},
                             "math": {"task": "addition", "size": 2, "seed": 7, "task_kwargs": {"split": "heldout"}}},
                       samples_per_prompt=2, k=[1, 2], max_tokens=6, seed=3, torch_threads=1)
    res = evaluate_model(str(tmp_path / "m"), spec)
    c = res["sets"]["control"]
    assert c["scored"] is False and res["sets"]["math"]["scored"] is True
    assert c["prompts"] == 3 and c["num_correct"] == [0, 0, 0]
    control = c["analysis"]["instruction"]["control"]  # every family unasked: all seven properties measured
    assert len(control) == 7 and all(v["prompts"] == 3 for v in control.values())
    assert c["analysis"]["instruction"]["compliance"] == {}
    line = summary_line(res)
    assert "control: 3 control prompts (unscored)" in line and "math pass@1" in line
