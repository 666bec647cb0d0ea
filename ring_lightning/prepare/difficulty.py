"""Difficulty filtering of RL prompts by the policy's own pass rate.

Ring-lite (arXiv 2506.14731, RL data curation) samples several responses per problem from the
model to be trained, scores them with the RL verifiers, and drops problems the model always solves
(no learning signal: every group advantage is zero) and problems it never solves (too hard, or a
wrong gold answer: this is also the report's "re-solve" check of the reference answers). It then
annotates each problem with its difficulty. The report does not fix k, the sampling settings or
the bounds; defaults here: k = 8 at temperature 1.0, drop pass rate 0 and 1, keep the rest.

Choices and details: docs/design.md#prepare-difficulty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ring_lightning.prepare.rows import (
    Removal, StageRunner, get_meta, is_kept, mark, rebatch, set_meta, to_prompt_row, unbatch,
)
from ring_lightning.rewards.base import Reward
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig


class DifficultyFilter:
    """The difficulty stage.

    Args:
        enabled: run this stage (needs `engine`).
        engine: the rollout engine sampling from the policy (class_path / init_args).
        reward: scores the samples (class_path / init_args); default: `RewardRouter()`.
        tokenizer: tokenizer directory whose chat template renders the prompts; it must match the
            engine's model. Default: the engine's own `tokenizer` attribute (VLLMEngine, HFEngine).
        chat_template_kwargs: extra arguments for `apply_chat_template` (e.g. enable_thinking).
        k: samples per problem.
        sampling: sampling settings for the k samples (set a seed for reproducible pass rates).
        batch_size: problems per `engine.generate` call.
        solved_threshold: a sample with reward >= this counts as solved.
        min_pass_rate: rows with a lower pass rate are dropped ("too_hard").
        max_pass_rate: rows with a higher pass rate are dropped ("too_easy").
        drop_never_solved: drop rows with pass rate 0 ("never_solved").
        drop_always_solved: drop rows with pass rate 1 ("always_solved").
        reuse_existing: keep `meta.difficulty` of rows that already have it for the same k
            instead of sampling again; set false to re-estimate with a new policy.
        max_prompt_tokens: rows whose rendered prompt is longer are dropped ("prompt_too_long");
            None = no limit (the engine then has to fit every prompt).
    """

    name = "difficulty"

    def __init__(self, enabled: bool = False, engine: RolloutEngine | None = None, reward: Reward | None = None,
                 tokenizer: str | None = None, chat_template_kwargs: dict[str, Any] | None = None, k: int = 8,
                 sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_tokens=1024, seed=0),
                 batch_size: int = 32, solved_threshold: float = 1.0, min_pass_rate: float = 0.0,
                 max_pass_rate: float = 1.0, drop_never_solved: bool = True, drop_always_solved: bool = True,
                 reuse_existing: bool = True, max_prompt_tokens: int | None = None):
        if k < 1:
            raise ValueError(f"difficulty.k must be >= 1, got {k}")
        if not 0.0 <= min_pass_rate <= max_pass_rate <= 1.0:
            raise ValueError(f"difficulty needs 0 <= min_pass_rate <= max_pass_rate <= 1, "
                             f"got {min_pass_rate}, {max_pass_rate}")
        if enabled and engine is None:
            raise ValueError("difficulty.enabled is true but difficulty.engine is not set: give a rollout engine "
                             "(class_path: ring_lightning.rollout.vllm_engine.VLLMEngine, init_args: ...)")
        self.enabled = enabled
        self.engine = engine
        self.reward = reward
        self.tokenizer_path = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.k = k
        self.sampling = sampling
        self.batch_size = batch_size
        self.solved_threshold = solved_threshold
        self.min_pass_rate = min_pass_rate
        self.max_pass_rate = max_pass_rate
        self.drop_never_solved = drop_never_solved
        self.drop_always_solved = drop_always_solved
        self.reuse_existing = reuse_existing
        self.max_prompt_tokens = max_prompt_tokens
        self._tokenizer = None
        self._owned_reward = False
        self.stats = {"sampled": 0, "reused": 0, "samples": 0, "invalid_samples": 0}

    def apply(self, ds, runner: StageRunner):
        """Sample, score and mark rows in one process (the engine is not shared with workers)."""
        if self.reward is None:
            from ring_lightning.rewards.router import RewardRouter

            self.reward = RewardRouter()
            self._owned_reward = True
        return runner.map(ds, self, desc=self.name, parallel=False, batch_size=self.batch_size)

    def report(self) -> dict[str, Any]:
        return {"k": self.k, "sampling": dataclasses.asdict(self.sampling), **self.stats}

    def close(self) -> None:
        """Stop the workers of the default reward this stage made (the engine belongs to the caller)."""
        if self._owned_reward and hasattr(self.reward, "close"):
            self.reward.close()

    @property
    def tokenizer(self):
        """`tokenizer` when set, else the engine's own `tokenizer` attribute."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                from ring_lightning.models.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self.tokenizer_path)
            elif getattr(self.engine, "tokenizer", None) is not None:
                self._tokenizer = self.engine.tokenizer
            else:
                raise ValueError(f"difficulty: engine {type(self.engine).__name__} has no `tokenizer` attribute; "
                                 "set difficulty.tokenizer to the tokenizer directory of its model")
        return self._tokenizer

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        rows = unbatch(batch)
        todo: list[tuple[dict[str, Any], list[int]]] = []
        for row in rows:
            if not is_kept(row):
                continue
            meta = get_meta(row)
            if self.reuse_existing and meta.get("difficulty_k") == self.k and "difficulty" in meta:
                self.stats["reused"] += 1
                self._decide(row, float(meta["difficulty"]))
                continue
            ids = self.tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True,
                                                     return_dict=True, **self.chat_template_kwargs)["input_ids"]
            if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
                mark(row, self.name, Removal("prompt_too_long", {"tokens": len(ids), "limit": self.max_prompt_tokens}))
                continue
            todo.append((row, list(ids)))
        if todo:
            self._sample(todo)
        return rebatch(rows, list(batch))

    def _sample(self, todo: list[tuple[dict[str, Any], list[int]]]) -> None:
        completions = self.engine.generate([ids for _, ids in todo], self.k, self.sampling)
        if len(completions) != len(todo) or any(len(c) != self.k for c in completions):
            raise RuntimeError(f"difficulty: engine {type(self.engine).__name__} returned "
                               f"{[len(c) for c in completions]} completions for {len(todo)} prompts x k={self.k}")
        prompt_rows = [to_prompt_row(row) for row, _ in todo]
        flat_rows = [pr for pr in prompt_rows for _ in range(self.k)]
        texts = [c.text for group in completions for c in group]
        results = self.reward(flat_rows, texts)
        if len(results) != len(texts):
            raise RuntimeError(f"difficulty: reward {type(self.reward).__name__} returned {len(results)} results "
                               f"for {len(texts)} responses")
        for i, (row, _) in enumerate(todo):
            group = results[i * self.k:(i + 1) * self.k]
            valid = [r for r in group if r.valid and not r.info.get("reward_error")]
            self.stats["sampled"] += 1
            self.stats["samples"] += self.k
            self.stats["invalid_samples"] += self.k - len(valid)
            if not valid:
                reasons = sorted({str(r.info.get("error", r.info.get("reason", ""))) for r in group})
                mark(row, self.name, Removal("no_valid_reward", {"k": self.k, "info": reasons[:3]}))
                continue
            rate = sum(r.reward >= self.solved_threshold for r in valid) / len(valid)
            meta = get_meta(row)
            meta["difficulty"] = round(rate, 6)
            meta["difficulty_k"] = self.k
            set_meta(row, meta)
            self._decide(row, rate)

    def _decide(self, row: dict[str, Any], rate: float) -> None:
        detail = {"pass_rate": rate, "k": self.k}
        if rate == 0.0 and self.drop_never_solved:
            mark(row, self.name, Removal("never_solved", detail))
        elif rate == 1.0 and self.drop_always_solved:
            mark(row, self.name, Removal("always_solved", detail))
        elif rate < self.min_pass_rate:
            mark(row, self.name, Removal("too_hard", detail))
        elif rate > self.max_pass_rate:
            mark(row, self.name, Removal("too_easy", detail))
