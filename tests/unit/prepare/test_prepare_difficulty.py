"""Difficulty stage: k samples per prompt from an engine, scored by the real reward router.

`FakeEngine` is a deterministic test double for the engine seam (it answers a planted number of
samples correctly per question); the rewards are the real ones. One test runs the real HFEngine
with the tiny random Qwen3-MoE policy end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import datasets
import pytest
import torch

from ring_lightning.prepare.difficulty import DifficultyFilter
from ring_lightning.prepare.rows import FEATURES, StageRunner, to_internal
from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.math import MathReward
from ring_lightning.rewards.router import RewardRouter
from ring_lightning.rollout.engine import Completion, SamplingConfig

# question text -> (gold answer, how many of the n samples answer it correctly)
PLAN = {"What is 2+2?": ("4", 0), "What is 3+3?": ("6", 4), "What is 5+5?": ("10", 2), "What is 7+7?": ("14", 1)}


class FakeEngine:
    """Deterministic engine: for a prompt about question q, the first PLAN[q][1] samples are right."""

    def __init__(self, tokenizer_dir: str | None = None):
        from ring_lightning.models.loading import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        self.calls.append((len(prompts), n))
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(list(ids))
            question = next(q for q in PLAN if q in text)
            answer, correct = PLAN[question]
            group = []
            for j in range(n):
                reply = f"<think>adding</think> The answer is \\boxed{{{answer if j < correct else 'wrong'}}}."
                toks = tuple(self.tokenizer(reply, add_special_tokens=False)["input_ids"])
                group.append(Completion(token_ids=toks, logprobs=(0.0,) * len(toks), text=reply, finish_reason="stop"))
            out.append(group)
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        raise NotImplementedError("not used by prepare")

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def router():
    math = MathReward(num_workers=1)
    yield RewardRouter(rewards={"math": math})
    math.close()


def rows(questions=tuple(PLAN), meta: dict | None = None) -> list[dict]:
    return [to_internal({"id": f"q{i}", "domain": "math", "prompt": q, "answer": PLAN[q][0], "meta": meta or {}},
                        f"t row {i}", source=None, default_source="t") for i, q in enumerate(questions)]


def run(stage: DifficultyFilter, data: list[dict]) -> dict[str, dict]:
    out = stage.apply(datasets.Dataset.from_list(data, features=FEATURES), StageRunner())
    return {r["id"]: r for r in out}


def test_pass_rates_annotated_and_bounds_applied(router):
    engine = FakeEngine()
    out = run(DifficultyFilter(enabled=True, engine=engine, reward=router, k=4, batch_size=3), rows())
    got = {k: (v["_reason"], json.loads(v["meta"]).get("difficulty")) for k, v in out.items()}
    assert got == {"q0": ("never_solved", 0.0), "q1": ("always_solved", 1.0), "q2": ("", 0.5), "q3": ("", 0.25)}
    assert json.loads(out["q2"]["meta"]) == {"source": "t", "difficulty": 0.5, "difficulty_k": 4}
    assert json.loads(out["q0"]["_detail"]) == {"pass_rate": 0.0, "k": 4}
    assert engine.calls == [(3, 4), (1, 4)]  # batches of 3 prompts, k samples each


def test_configured_bounds(router):
    stage = DifficultyFilter(enabled=True, engine=FakeEngine(), reward=router, k=4, min_pass_rate=0.3,
                             max_pass_rate=0.9, drop_always_solved=False, drop_never_solved=False)
    got = {k: v["_reason"] for k, v in run(stage, rows()).items()}
    assert got == {"q0": "too_hard", "q1": "too_easy", "q2": "", "q3": "too_hard"}


def test_existing_annotation_is_reused_not_resampled(router):
    engine = FakeEngine()
    data = rows(["What is 2+2?"], meta={"difficulty": 0.5, "difficulty_k": 4})
    out = run(DifficultyFilter(enabled=True, engine=engine, reward=router, k=4), data)
    assert out["q0"]["_reason"] == "" and engine.calls == []
    out = run(DifficultyFilter(enabled=True, engine=engine, reward=router, k=4, reuse_existing=False), data)
    assert out["q0"]["_reason"] == "never_solved" and engine.calls == [(1, 4)]
    out = run(DifficultyFilter(enabled=True, engine=engine, reward=router, k=8), data)  # other k: resampled
    assert engine.calls[-1] == (1, 8)


class BrokenReward:
    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        raise RuntimeError("verifier crashed")


def test_reward_errors_are_not_counted_as_failures():
    stage = DifficultyFilter(enabled=True, engine=FakeEngine(), reward=RewardRouter(rewards={"math": BrokenReward()},
                                                                                    use_defaults=False), k=2)
    out = run(stage, rows(["What is 3+3?"]))
    assert out["q0"]["_reason"] == "no_valid_reward"
    assert "verifier crashed" in out["q0"]["_detail"]


def test_prompt_too_long_and_config_errors(router):
    out = run(DifficultyFilter(enabled=True, engine=FakeEngine(), reward=router, k=2, max_prompt_tokens=5),
              rows(["What is 3+3?"]))
    assert out["q0"]["_reason"] == "prompt_too_long"
    with pytest.raises(ValueError, match="difficulty.engine is not set"):
        DifficultyFilter(enabled=True)
    with pytest.raises(ValueError, match="min_pass_rate <= max_pass_rate"):
        DifficultyFilter(min_pass_rate=0.8, max_pass_rate=0.2)


def test_hf_engine_with_tiny_policy_end_to_end(router):
    from ring_lightning.models.loading import load_policy
    from ring_lightning.rollout.hf_engine import HFEngine

    model, tokenizer = load_policy("qwen3-moe-tiny", seed=0)
    engine = HFEngine(model, tokenizer)
    stage = DifficultyFilter(enabled=True, engine=engine, reward=router, k=2, drop_never_solved=False,
                             sampling=SamplingConfig(temperature=1.0, max_tokens=8, seed=0))
    out = run(stage, rows(["What is 2+2?", "What is 5+5?"]))
    # A random tiny policy never writes \boxed{4}: both rows are scored 0 and annotated, not dropped.
    assert {k: json.loads(v["meta"])["difficulty"] for k, v in out.items()} == {"q0": 0.0, "q1": 0.0}
    assert stage.stats == {"sampled": 2, "reused": 0, "samples": 4, "invalid_samples": 0}
