"""The RL data module's small interface types: the per-step request ticket the DataLoader yields, the
budget specification the LightningModule hands over, and one sampling round's result (see
data/rollouts/datamodule.py and rl/budget.py; Ring-lite, arXiv 2506.14731, §3.2: a token budget Φ per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from torch.utils.data import IterableDataset

from ring_lightning.rl.batch import Response
from ring_lightning.rl.budget import FillOrder, Overflow


class RolloutRequest(NamedTuple):
    """What the DataLoader yields per optimizer step: a ticket, not data (see data/rollouts/datamodule.py)."""

    index: int


class RequestStream(IterableDataset):
    """An endless stream of `RolloutRequest`s (bound the run with trainer.max_steps)."""

    def __iter__(self):
        i = 0
        while True:
            yield RolloutRequest(i)
            i += 1


@dataclass(frozen=True)
class BudgetSpec:
    """How a step's responses become loss tokens; set by the LightningModule in `bind`.

    Args:
        mode: "c3po" (exactly Φ tokens, sum / Φ) or "grpo" (all responses, per-sequence mean).
        token_budget: Φ, the global number of loss tokens per optimizer step (c3po).
        fill_order: "batch" | "random" | "shortest_first" (see `rl/budget.py`).
        overflow: "drop" or "carry" responses past the budget.
        max_carry_age: the oldest (in steps) a carried response may be when trained on.
        micro_batch_tokens: cap on rows × longest row of one micro-batch (None = one micro-batch).
    """

    mode: Literal["c3po", "grpo"] = "c3po"
    token_budget: int = 409_600
    fill_order: FillOrder = "batch"
    overflow: Overflow = "drop"
    max_carry_age: int = 1
    micro_batch_tokens: int | None = None


@dataclass
class Sampled:
    """One sampling round on this rank: scored responses and where they came from.

    Attributes:
        responses: the round's responses (K per prompt), with rewards and advantages.
        version: the engine weight version that generated them.
        n_prompts: prompts of this rank in the round.
        errors: reward evaluations that raised.
        t_rollout: generation seconds.
        t_reward: reward seconds.
        stream_state: the prompt-stream position before the round's draw.
    """

    responses: list[Response]
    version: int
    n_prompts: int
    errors: int
    t_rollout: float
    t_reward: float
    stream_state: dict[str, Any]
