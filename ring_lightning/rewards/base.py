"""The reward seam: every reward is a picklable, batched callable returning one `RewardResult` per sample.

Rewards are configured by `class_path` (LightningCLI) and routed per row by `rewards/router.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ring_lightning.rows import PromptRow


@dataclass(frozen=True)
class RewardResult:
    """The score of one response.

    Attributes:
        reward: the scalar reward (0/1 for verifiable rewards).
        valid: False when the sample must be excluded from the loss (e.g. a gold answer that does
            not parse) — such a sample is never rewarded.
        info: per-sample details for logging (parsed answer, failing test, error message, ...).
    """

    reward: float
    valid: bool = True
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """A batched reward function.

    Optional members the router uses when present (looked up with `getattr`):
        validate(row, where) -> None: raise `PromptRowError` naming `where` (file and row) when the
            row lacks what this reward needs; called at data-load time.
        binary: bool — True when rewards are 0/1, so the router also reports accuracy.
    """

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        """Score `responses[i]` as an answer to `rows[i]`."""
        ...
