"""The RL module's old import path (`ring_lightning.modules.c3po.C3POModule`): an alias of `RLModule`
(modules/rl.py), kept so configs written before objectives were injected still read the same."""

from ring_lightning.modules.rl import C3POModule, RLModule

__all__ = ["C3POModule", "RLModule"]
