"""Unscored: the reward of control prompts, which are sampled and analysed but never scored.

A control prompt asks nothing a verifier could check (the quickstart's ``"Write about X."`` rows of
`data/synthetic/instruction_pairs.py`, the shortcut control group). Rows name it with
``"reward": "unscored"``; every sample gets reward 0, ``valid=False`` (so an RL loss would exclude
it) and ``info["unscored"]``, and the held-out evaluation reports such a set without a pass@1.
"""

from __future__ import annotations

from collections.abc import Sequence

from ring_lightning.rewards.base import RewardResult
from ring_lightning.rows import PromptRow

UNSCORED = "unscored"


class UnscoredReward:
    """Reward 0, invalid, for every sample (module docstring)."""

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"UnscoredReward got {len(rows)} rows but {len(responses)} responses")
        return [RewardResult(0.0, valid=False, info={UNSCORED: True}) for _ in responses]
