"""The RL objective seam: which tokens of a rollout enter an optimizer step, and their loss.

An `Objective` is given to `RLModule(objective=...)` by class_path. The rollout sampler
(`data/rollouts/sampler.py`) asks it for this rank's `BudgetPlan` (`rl/budget.py`), the module asks
it for `(loss, metrics)` per micro-batch. Shipped: `C3PO` (a fixed budget of Φ tokens, Σ/Φ; Ring-lite,
arXiv 2506.14731, §3.2) and `GRPO` (every response, mean of sequence means). A new objective is one
file implementing this protocol (copy `grpo.py`, keeping its annotated signatures: LightningCLI
checks them against the protocol) plus `objective: {class_path: ...}` in a config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ring_lightning.rl.batch import MicroBatch
from ring_lightning.rl.budget import BudgetPlan


@runtime_checkable
class Objective(Protocol):
    """What an RL objective decides. Its knobs are plain attributes (callbacks may change them,
    e.g. `objective.entropy_coef`).

    Attributes:
        kl_coef: β of the KL penalty; > 0 makes the module keep a frozen reference policy.
        carry_age: > 0 when a plan's `carried` responses go into later steps (the sampler then
            computes their trainer π_old): the oldest, in steps, a carried response may be.
    """

    kl_coef: float
    carry_age: int

    def check(self, world_size: int) -> None:
        """Raise ValueError naming the knob when the objective cannot run on `world_size` ranks."""
        ...

    def select(self, lengths: Sequence[int], eligible: Sequence[bool], *, n_carried: int, world_size: int,
               seed: int) -> BudgetPlan | None:
        """This rank's plan over its responses (carried-in ones first); None = nothing eligible.
        A plan with `need_more` makes the sampler roll out more prompts and call again. `seed` is
        the same on every rank."""
        ...

    def finalize(self, plan: BudgetPlan, sum_over_ranks: Callable[[float], float], world_size: int) -> BudgetPlan:
        """The plan with its final per-rank normaliser (`sum_over_ranks` is a collective)."""
        ...

    def loss(self, logprobs: torch.Tensor, mb: MicroBatch, *, old_logprobs: torch.Tensor | None,
             ref_logprobs: torch.Tensor | None, entropy: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of one micro-batch; [B, T] inputs, `old_logprobs` None = on-policy.
        Metrics follow `rl/losses.py:policy_loss` (the module's accumulator reads those keys)."""
        ...
