"""Held-out evaluation hooks of the RL module (`validate` / `test`, and validation during `fit`).

Ring-lite (arXiv 2506.14731, §4) reports pass@1 averaged over several samples per problem; we add
unbiased pass@k (Chen et al. 2021). The data module's evaluation sets are sampled with the same
rollout engine and rewards as training (`eval/rollout_eval.py`, torchmetrics Metrics synced over
ranks). Choice: the engine is synced to the module's current weights first (after a checkpoint load
or a training step the engine would otherwise score stale weights, C3POModule docstring item 8).
"""

from __future__ import annotations

from ring_lightning.eval.rollout_eval import EvalBatch
from ring_lightning.modules import c3po_steps as steps


class RolloutEvalHooks:
    """Mixin for C3POModule: `validation_step`/`test_step` and the hooks around them.

    Uses the module's `_rollout_dm()`, `_bind(dm)`, `_dp()`, `policy`, `tokenizer`, `device`,
    `engine_weight_version`, `_weights_loaded` and `_evaluator` (a one-item list), and `log_dict`."""

    def _eval_start(self) -> None:
        """The engine must hold this module's current weights."""
        dm = self._rollout_dm()
        if not dm.bound:
            self._bind(dm)
        elif self._weights_loaded or dm.weight_version != self.engine_weight_version:
            dm.sync_weights(steps.named_weights(self.policy), self.engine_weight_version)
            self._weights_loaded = False
        self._evaluator = [dm.make_evaluator().to(self.device)]

    def on_validation_start(self) -> None:
        self._eval_start()

    def on_test_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        dm = self._rollout_dm()
        with dm.exclusive_engine() as engine:
            self._evaluator[0].step(engine, self.tokenizer, batch, dm.eval_reward(), batch_idx=batch_idx,
                                    rank=self._dp()[0])

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _eval_end(self, prefix: str) -> None:
        if self._evaluator:  # synced over ranks by the torchmetrics Metrics
            results = self._evaluator.pop().results(prefix)
            self.log_dict(results, batch_size=1)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
