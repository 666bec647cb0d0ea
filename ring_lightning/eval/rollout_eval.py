"""Held-out evaluation of an RL policy by sampling: pass@1 (avg over n samples) and pass@k per domain.

Ring-lite (arXiv 2506.14731, §5) evaluates with several samples per problem and reports the
average pass@1; we add the unbiased pass@k (`eval/passk.py`). This file holds the pieces an RL
LightningModule uses in `validation_step` / `test_step` (so `python -m ring_lightning validate|test
-c ...` reports them): docs/design.md#eval-rollout-eval.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
from torchmetrics import MeanMetric

from ring_lightning.rows import DOMAINS, PromptRow
from ring_lightning.eval.passk import EvalCounts, PassAtK, evaluate_rollouts
from ring_lightning.rewards.base import Reward
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig


class EvalBatch:
    """A batch of held-out rows. A plain class on purpose: Lightning's device transfer walks
    dataclasses and would try to rebuild the frozen `PromptRow`s; it leaves this object alone.

    Attributes:
        rows: the batch's prompt rows.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: Sequence[PromptRow]) -> None:
        self.rows = tuple(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)


class EvalPromptDataset(IterableDataset):
    """This rank's share of `rows` (i ≡ rank mod world), as `EvalBatch`es of `batch_size` rows.

    Args:
        rows: the held-out prompt rows.
        batch_size: rows per batch.
        rank: data-parallel rank; None = torch.distributed's (0 when not initialised).
        world_size: data-parallel size; None = torch.distributed's (1 when not initialised).
    """

    def __init__(self, rows: Sequence[PromptRow], batch_size: int = 8, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"EvalPromptDataset: batch_size must be >= 1, got {batch_size}")
        if not rows:
            raise ValueError("EvalPromptDataset: no held-out prompt rows")
        self.rows, self.batch_size, self.rank, self.world_size = list(rows), batch_size, rank, world_size

    def _dist(self) -> tuple[int, int]:
        on = dist.is_available() and dist.is_initialized()
        rank = self.rank if self.rank is not None else (dist.get_rank() if on else 0)
        world = self.world_size if self.world_size is not None else (dist.get_world_size() if on else 1)
        return rank, world

    def __iter__(self) -> Iterator[EvalBatch]:
        rank, world = self._dist()
        mine = self.rows[rank::world]
        for s in range(0, len(mine), self.batch_size):
            yield EvalBatch(mine[s:s + self.batch_size])


def eval_dataloader(rows: Sequence[PromptRow], batch_size: int = 8) -> DataLoader:
    """A DataLoader of row batches for `validation_step` / `test_step` (see module docstring)."""
    return DataLoader(EvalPromptDataset(rows, batch_size), batch_size=None, num_workers=0)


class RolloutEvaluator(torch.nn.Module):
    """pass@1 / pass@k of a policy on held-out verifiable prompts (metrics summed across ranks).

    Args:
        k: the k of pass@k to report (1 always); each needs k <= samples_per_prompt.
        samples_per_prompt: n, samples per problem.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        max_tokens: maximum response length.
        seed: base sampling seed (module docstring).
        correct_threshold: a valid sample with reward >= this is correct.
    """

    def __init__(self, k: Sequence[int] = (1,), samples_per_prompt: int = 4, temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 1024, seed: int = 0, correct_threshold: float = 1.0) -> None:
        super().__init__()
        if samples_per_prompt < max(k):
            raise ValueError(f"RolloutEvaluator: pass@{max(k)} needs samples_per_prompt >= {max(k)}, "
                             f"got {samples_per_prompt}")
        self.samples_per_prompt, self.correct_threshold, self.seed = samples_per_prompt, correct_threshold, seed
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        self.metrics = torch.nn.ModuleDict({"all": PassAtK(k)})
        for d in DOMAINS:
            self.metrics[d] = PassAtK(k, allow_empty=True)
        self.means = torch.nn.ModuleDict({"reward_mean": MeanMetric(), "response_length_mean": MeanMetric()})

    def step(self, engine: RolloutEngine, tokenizer, rows: EvalBatch | Sequence[PromptRow], reward: Reward,
             batch_idx: int = 0, rank: int = 0) -> EvalCounts:
        """Evaluate one batch of rows and update the metrics (call from validation_step / test_step)."""
        rows = list(rows)
        sampling = replace(self.sampling, seed=(self.seed + batch_idx * 7919 + rank) % 2**31)
        counts = evaluate_rollouts(engine, tokenizer, rows, reward, self.samples_per_prompt, sampling,
                                   correct_threshold=self.correct_threshold, metrics=dict(self.metrics.items()))
        n = float(counts.num_samples.sum())
        self.means["reward_mean"].update(counts.mean_reward, weight=n)
        self.means["response_length_mean"].update(counts.mean_response_tokens, weight=n)
        return counts

    def results(self, prefix: str = "val") -> dict[str, float]:
        """Synced metrics `{prefix}/pass@k`, `{prefix}/problems`, `{prefix}/<domain>/pass@k`,
        `{prefix}/reward_mean`, `{prefix}/response_length_mean`; resets."""
        out: dict[str, float] = {}
        with warnings.catch_warnings():  # a domain without problems on this rank was never updated
            warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric")
            for key, metric in self.metrics.items():
                values = metric.compute()
                metric.reset()
                if float(values["problems"]) == 0:
                    continue
                base = prefix if key == "all" else f"{prefix}/{key}"
                out.update({f"{base}/{name}": float(v) for name, v in values.items()})
            if out:
                for key, metric in self.means.items():
                    out[f"{prefix}/{key}"] = float(metric.compute())
            for metric in self.means.values():
                metric.reset()
        return out
