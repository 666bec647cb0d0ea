"""The RL rollout loop: `RolloutDataModule` (datamodule.py) samples, scores and budgets one optimizer
step's data; sampler.py (one step), stream.py (prompt mixture), ahead.py (background sampling),
engine_slot.py (the engine and its weights), scoring.py, stats.py, heldout.py, spec.py."""

from ring_lightning.data.rollouts.datamodule import RolloutDataModule

__all__ = ["RolloutDataModule"]

RolloutDataModule.__module__ = "ring_lightning.data.rollouts"  # short class path in configs, --help and printed configs
