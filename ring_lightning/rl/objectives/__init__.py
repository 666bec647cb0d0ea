"""RL objectives, injected into `RLModule(objective=...)`: the `Objective` protocol (base.py),
`C3PO` (c3po.py) and `GRPO` (grpo.py)."""

from ring_lightning.rl.objectives.base import Objective
from ring_lightning.rl.objectives.c3po import C3PO
from ring_lightning.rl.objectives.grpo import GRPO

__all__ = ["C3PO", "GRPO", "Objective"]

for _cls in (C3PO, GRPO):
    _cls.__module__ = "ring_lightning.rl.objectives"  # short class paths in configs and --help
