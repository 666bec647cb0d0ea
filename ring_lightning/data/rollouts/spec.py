"""The RL data module's small interface types: the per-step request ticket the DataLoader yields and
one sampling round's result (see data/rollouts/datamodule.py and sampler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch.utils.data import IterableDataset

from ring_lightning.rl.batch import Response


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
