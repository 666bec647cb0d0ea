"""Held-out evaluation of the RL module (`validate` / `test`, and validation during `fit`).

Ring-lite (arXiv 2506.14731, §4) reports pass@1 averaged over several samples per problem; we add
unbiased pass@k (Chen et al. 2021). The data module's evaluation sets are sampled with the same
rollout engine and rewards as training (`eval/rollout_eval.py`, torchmetrics Metrics synced over
ranks). The module first makes the engine hold its current weights (after a checkpoint load or a
training step the engine would otherwise score stale weights).
"""

from __future__ import annotations

from typing import Any

import torch

from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.eval.rollout_eval import EvalBatch, RolloutEvaluator


class HeldOutEval:
    """One validation / test epoch at a time: `start`, `step` per batch, `end` -> the metrics."""

    def __init__(self) -> None:
        self.evaluator: RolloutEvaluator | None = None

    def start(self, dm: RolloutDataModule, device: torch.device | str) -> None:
        """A fresh evaluator with the data module's `eval_*` settings (the engine is already current)."""
        self.evaluator = dm.make_evaluator().to(device)

    def step(self, dm: RolloutDataModule, tokenizer: Any, batch: EvalBatch, batch_idx: int, rank: int) -> None:
        """Sample and score one batch of held-out prompts with the engine."""
        if self.evaluator is None:
            raise RuntimeError("HeldOutEval.step before start()")
        with dm.exclusive_engine() as engine:
            self.evaluator.step(engine, tokenizer, batch, dm.eval_reward(), batch_idx=batch_idx, rank=rank)

    def end(self, prefix: str) -> dict[str, float]:
        """pass@1, pass@k per domain under `prefix` ("val" / "test"), synced over ranks; {} if none ran."""
        if self.evaluator is None:
            return {}
        evaluator, self.evaluator = self.evaluator, None
        return evaluator.results(prefix)
