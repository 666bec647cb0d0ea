"""RewardRouter: sends each sample to the reward of its row's domain (or explicit ``row.reward``).

Ring-lite trains on mixed domains (arXiv 2506.14731: math, code and science in reasoning RL, then
general data in the second stage), each with its own reward: rule-based verifiers where answers
are checkable, a reward model otherwise. The report gives no routing mechanism; ours is a
name -> reward table with these defaults:

    math, science -> "math" (MathReward)      code -> "code" (CodeReward)
    logic -> "logic" (LogicReward)            instruction -> "instruction" (InstructionReward)
    general -> "reward_model" (only when `reward_model` is configured)
    a row with ``reward: unscored`` -> "unscored" (UnscoredReward: control prompts, never scored)

``rewards`` adds or replaces entries (any object following the `Reward` protocol, configured by
``class_path``); ``domains`` remaps domains to names; a row's ``reward`` field picks a name
directly. `validate(row, where)` fails at data-load time (`PromptRowError` naming file and row)
when no reward exists for the row or its verifier field is invalid (each reward's optional
``validate(row, where)``). Scoring groups samples by reward and runs the groups (in chunks)
concurrently in a thread pool; a reward that raises gives 0 for its samples, marks them
``info["reward_error"]`` and training continues. `score` also returns per-domain metrics:
``reward/<domain>/mean`` and ``accuracy`` (over valid samples; accuracy only for binary rewards),
``count``, ``invalid``, and ``reward/errors/<domain>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ring_lightning.rows import DOMAINS, PromptRow, PromptRowError
from ring_lightning.rewards.base import Reward, RewardResult

log = logging.getLogger(__name__)
DEFAULT_DOMAINS = {"math": "math", "science": "math", "code": "code", "logic": "logic",
                   "instruction": "instruction", "general": "reward_model"}


@dataclass(frozen=True)
class RoutedRewards:
    """Results in input order plus the step's reward metrics."""

    results: list[RewardResult]
    metrics: dict[str, float] = field(default_factory=dict)


def _default_reward(name: str) -> Reward | None:
    if name == "math":
        from ring_lightning.rewards.math import MathReward

        return MathReward()
    if name == "code":
        from ring_lightning.rewards.code.reward import CodeReward

        return CodeReward()
    if name == "logic":
        from ring_lightning.rewards.logic import LogicReward

        return LogicReward()
    if name == "instruction":
        from ring_lightning.rewards.instruction import InstructionReward

        return InstructionReward()
    if name == "unscored":
        from ring_lightning.rewards.unscored import UnscoredReward

        return UnscoredReward()
    return None


class RewardRouter:
    """Routes samples to per-domain rewards and computes reward metrics.

    Args:
        rewards: extra or replacement rewards by name (e.g. {"code": CodeReward(timeout_s=2)}).
        reward_model: reward for the "general" domain (e.g. RewardModelReward); None = general
            rows have no reward (an error at validation).
        domains: domain -> reward name overrides of the defaults above.
        use_defaults: build the default verifiers for names not given in `rewards`.
        max_workers: reward groups / chunks scored at once.
        chunk_size: samples per call of a reward (a group larger than this is split).
    """

    def __init__(self, rewards: Mapping[str, Reward] | None = None, reward_model: Reward | None = None,
                 domains: Mapping[str, str] | None = None, use_defaults: bool = True, max_workers: int = 4,
                 chunk_size: int = 64) -> None:
        self.domains = {**DEFAULT_DOMAINS, **dict(domains or {})}
        unknown = sorted(set(self.domains) - set(DOMAINS))
        if unknown:
            raise ValueError(f"RewardRouter domains has unknown domains {unknown}; known: {DOMAINS}")
        self.rewards: dict[str, Reward] = {}
        if use_defaults:
            for name in ("math", "code", "logic", "instruction", "unscored"):
                if name not in (rewards or {}):
                    self.rewards[name] = _default_reward(name)
        if reward_model is not None:
            self.rewards["reward_model"] = reward_model
        self.rewards.update(dict(rewards or {}))
        for name, reward in self.rewards.items():
            if not callable(reward):
                raise TypeError(f"RewardRouter reward {name!r} is not callable: {reward!r}")
        self.max_workers = max(1, max_workers)
        self.chunk_size = max(1, chunk_size)

    def reward_name(self, row: PromptRow) -> str:
        return row.reward or self.domains.get(row.domain, row.domain)

    def reward_for(self, row: PromptRow) -> tuple[str, Reward]:
        """(name, reward) for a row; raises KeyError explaining what is missing."""
        name = self.reward_name(row)
        if name not in self.rewards:
            how = ("configure `reward_model` (e.g. RewardModelReward)" if name == "reward_model"
                   else f"add it to `rewards` (configured: {sorted(self.rewards)})")
            src = f"row field reward={row.reward!r}" if row.reward else f"domain {row.domain!r}"
            raise KeyError(f"no reward named {name!r} for {src}; {how}")
        return name, self.rewards[name]

    def validate(self, row: PromptRow, where: str) -> None:
        """Load-time check: a reward exists for the row and accepts its verifier fields."""
        try:
            _, reward = self.reward_for(row)
        except KeyError as e:
            raise PromptRowError(f"{where}: {e.args[0]}") from None
        check = getattr(reward, "validate", None)
        if check is not None:
            try:
                check(row, where)
            except PromptRowError:
                raise
            except ValueError as e:
                msg = str(e)
                raise PromptRowError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        return self.score(rows, responses).results

    def score(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> RoutedRewards:
        """Score every sample (grouped by reward, concurrently) and compute the metrics."""
        if len(rows) != len(responses):
            raise ValueError(f"RewardRouter got {len(rows)} rows but {len(responses)} responses")
        results: list[RewardResult | None] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            try:
                name, _ = self.reward_for(row)
            except KeyError as e:
                results[i] = RewardResult(0.0, valid=False, info={"error": e.args[0]})
                continue
            groups.setdefault(name, []).append(i)
        tasks = [(name, idx[k:k + self.chunk_size]) for name, idx in groups.items()
                 for k in range(0, len(idx), self.chunk_size)]

        def run(task: tuple[str, list[int]]) -> tuple[list[int], list[RewardResult]]:
            name, idx = task
            try:
                out = self.rewards[name]([rows[i] for i in idx], [responses[i] for i in idx])
                if len(out) != len(idx):
                    raise RuntimeError(f"returned {len(out)} results for {len(idx)} samples")
                return idx, list(out)
            except Exception as e:  # noqa: BLE001 - a failing reward must not stop training
                log.warning("reward %r failed on %d samples: %s: %s", name, len(idx), type(e).__name__, e)
                err = {"error": f"reward {name!r} raised {type(e).__name__}: {str(e)[:300]}", "reward_error": True}
                return idx, [RewardResult(0.0, info=dict(err)) for _ in idx]

        if len(tasks) == 1:
            done = [run(tasks[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(tasks))) as ex:
                done = list(ex.map(run, tasks))
        for idx, out in done:
            for i, r in zip(idx, out):
                results[i] = r
        final = [r for r in results if r is not None]
        return RoutedRewards(results=final, metrics=self.metrics(rows, final))

    def metrics(self, rows: Sequence[PromptRow], results: Sequence[RewardResult]) -> dict[str, float]:
        """Per-domain reward metrics of a scored batch (see module docstring)."""
        metrics: dict[str, float] = {}
        by_domain: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_domain.setdefault(row.domain, []).append(i)
        for domain, idx in sorted(by_domain.items()):
            valid = [results[i] for i in idx if results[i].valid]
            metrics[f"reward/{domain}/count"] = float(len(idx))
            metrics[f"reward/{domain}/invalid"] = float(len(idx) - len(valid))
            metrics[f"reward/errors/{domain}"] = float(sum(bool(results[i].info.get("reward_error")) for i in idx))
            if valid:
                metrics[f"reward/{domain}/mean"] = sum(r.reward for r in valid) / len(valid)
                name = self.reward_name(rows[idx[0]])
                if getattr(self.rewards.get(name), "binary", False):
                    metrics[f"reward/{domain}/accuracy"] = sum(r.reward >= 1.0 for r in valid) / len(valid)
        return metrics
