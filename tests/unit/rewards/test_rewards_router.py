"""RewardRouter: domain routing, explicit reward names, load-time validation, failures, metrics."""

from __future__ import annotations

import json
import pickle
import threading
import time

import pytest
from rewards_testlib import make_row

from ring_lightning.rows import PromptRowError
from ring_lightning.data.prompts import load_prompts
from ring_lightning.rewards.base import Reward, RewardResult
from ring_lightning.rewards.code.reward import CodeReward
from ring_lightning.rewards.instruction import InstructionReward
from ring_lightning.rewards.logic import LogicReward
from ring_lightning.rewards.math import MathReward
from ring_lightning.rewards.router import RewardRouter
from ring_lightning.rewards.unscored import UnscoredReward


class Const:
    """A test reward: constant score, optional delay, records what it saw."""

    binary = True

    def __init__(self, value: float = 1.0, delay: float = 0.0, fail: bool = False) -> None:
        self.value, self.delay, self.fail, self.calls = value, delay, fail, []

    def __call__(self, rows, responses):
        self.calls.append((threading.get_ident(), [r.id for r in rows]))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("verifier crashed")
        return [RewardResult(self.value, info={"seen": s}) for s in responses]


def test_default_table():
    router = RewardRouter()
    assert isinstance(router.rewards["math"], MathReward) and isinstance(router.rewards["code"], CodeReward)
    assert isinstance(router.rewards["logic"], LogicReward)
    assert isinstance(router.rewards["instruction"], InstructionReward)
    assert router.reward_for(make_row("science", answer="1"))[0] == "math"
    assert all(isinstance(r, Reward) for r in router.rewards.values())
    with pytest.raises(KeyError, match="configure `reward_model`"):
        router.reward_for(make_row("general"))
    pickle.loads(pickle.dumps(router))


def test_control_prompts_are_routed_to_unscored():
    router = RewardRouter()
    row = make_row("general", id="c0", reward="unscored")
    router.validate(row, "control row")  # a general row needs no reward model when it names "unscored"
    out = router.score([row, row], ["anything", ""])
    assert [(r.reward, r.valid, r.info) for r in out.results] == [(0.0, False, {"unscored": True})] * 2
    with pytest.raises(ValueError, match="1 rows but 2 responses"):
        UnscoredReward()([row], ["a", "b"])


def test_routing_and_explicit_reward_name():
    a, b, rm = Const(1.0), Const(0.0), Const(0.5)
    router = RewardRouter(rewards={"math": a, "strict": b}, reward_model=rm, use_defaults=False)
    rows = [make_row("math", id="m0", answer="1"), make_row("math", id="m1", answer="1", reward="strict"),
            make_row("general", id="g0"), make_row("science", id="s0", answer="2")]
    out = router(rows, ["r0", "r1", "r2", "r3"])
    assert [r.reward for r in out] == [1.0, 0.0, 0.5, 1.0]
    assert [r.info["seen"] for r in out] == ["r0", "r1", "r2", "r3"]
    assert sorted(sum((ids for _, ids in a.calls), [])) == ["m0", "s0"]


def test_groups_run_concurrently_and_in_chunks():
    slow1, slow2 = Const(1.0, delay=0.6), Const(1.0, delay=0.6)
    router = RewardRouter(rewards={"math": slow1, "code": slow2}, use_defaults=False, max_workers=4, chunk_size=2)
    rows = [make_row("math", id=f"m{i}", answer="1") for i in range(4)] + \
           [make_row("code", id=f"c{i}", tests={"type": "stdio"}) for i in range(2)]
    t0 = time.monotonic()
    out = router(rows, ["x"] * 6)
    elapsed = time.monotonic() - t0
    assert [r.reward for r in out] == [1.0] * 6
    assert [len(ids) for _, ids in slow1.calls] == [2, 2]
    assert elapsed < 1.5  # three 0.6 s chunks overlapped
    assert len({tid for tid, _ in slow1.calls + slow2.calls}) >= 2


def test_a_failing_reward_gives_zero_and_is_counted():
    router = RewardRouter(rewards={"math": Const(1.0), "code": Const(fail=True)}, use_defaults=False)
    rows = [make_row("math", answer="1"), make_row("code", tests={"type": "stdio"}),
            make_row("code", tests={"type": "stdio"})]
    routed = router.score(rows, ["a", "b", "c"])
    assert [r.reward for r in routed.results] == [1.0, 0.0, 0.0]
    assert routed.results[1].info["reward_error"] is True and "verifier crashed" in routed.results[1].info["error"]
    assert routed.metrics["reward/errors/code"] == 2.0 and routed.metrics["reward/errors/math"] == 0.0


def test_metrics_per_domain():
    router = RewardRouter(use_defaults=True, rewards={"math": MathReward(timeout_s=10, num_workers=1)})
    inst = ({"id": "punctuation:no_comma", "kwargs": {}},)
    rows = [make_row("instruction", instructions=inst)] * 3 + [make_row("math", answer="}{")] + \
           [make_row("math", answer="4")]
    routed = router.score(rows, ["no comma", "a, b", "fine", "\\boxed{1}", "\\boxed{4}"])
    m = routed.metrics
    assert m["reward/instruction/count"] == 3.0 and m["reward/instruction/invalid"] == 0.0
    assert m["reward/instruction/mean"] == pytest.approx(2 / 3)
    assert m["reward/instruction/accuracy"] == pytest.approx(2 / 3)
    assert m["reward/math/count"] == 2.0 and m["reward/math/invalid"] == 1.0  # the unparseable gold
    assert m["reward/math/mean"] == 1.0 and m["reward/math/accuracy"] == 1.0
    router.rewards["math"].close()


def test_validate_names_file_and_row(tmp_path):
    router = RewardRouter(rewards={"math": MathReward(timeout_s=10, num_workers=1)})
    good = [{"id": "a", "domain": "instruction", "prompt": "p", "instructions": [{"id": "punctuation:no_comma"}]},
            {"id": "b", "domain": "logic", "prompt": "p", "answer": "1",
             "meta": {"task": "countdown", "numbers": [1], "target": 1}},
            {"id": "c", "domain": "code", "prompt": "p",
             "tests": {"type": "stdio", "cases": [{"input": "", "output": ""}]}},
            {"id": "d", "domain": "math", "prompt": "p", "answer": "\\frac{1}{2}"}]
    bad = [({"id": "e", "domain": "instruction", "prompt": "p", "instructions": [{"id": "no:such"}]},
            "unknown instruction id 'no:such'"),
           ({"id": "f", "domain": "logic", "prompt": "p", "answer": "1", "meta": {"task": "chess"}}, "meta.task"),
           ({"id": "g", "domain": "code", "prompt": "p", "tests": {"type": "stdio", "cases": "x"}}, "cases"),
           ({"id": "h", "domain": "general", "prompt": "p"}, "configure `reward_model`"),
           ({"id": "i", "domain": "math", "prompt": "p", "answer": "1", "reward": "nope"}, "no reward named 'nope'"),
           ({"id": "j", "domain": "math", "prompt": "p", "answer": "}{"}, "unbalanced braces")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good + [b for b, _ in bad]) + "\n")
    rows = load_prompts(path)
    for i, row in enumerate(rows[:len(good)]):
        router.validate(row, f"{path} row {i}")
    for k, (_, match) in enumerate(bad):
        i = len(good) + k
        with pytest.raises(PromptRowError, match=f"{path} row {i}: .*{match}"):
            router.validate(rows[i], f"{path} row {i}")
    router.rewards["math"].close()


def test_configured_by_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(RewardRouter, "router")
    cfg = parser.parse_object({"router": {
        "rewards": {"code": {"class_path": "ring_lightning.rewards.code.CodeReward", "init_args": {"timeout_s": 2.0}},
                    "ifeval": {"class_path": "ring_lightning.rewards.instruction.InstructionReward",
                               "init_args": {"mode": "fraction"}}},
        "domains": {"instruction": "ifeval"}, "max_workers": 2}})
    router = parser.instantiate(cfg).router
    assert router.rewards["code"].timeout_s == 2.0 and router.rewards["ifeval"].mode == "fraction"
    assert router.reward_for(make_row("instruction", instructions=({"id": "punctuation:no_comma"},)))[0] == "ifeval"
