"""C3PO (Ring-lite, arXiv 2506.14731, §3.2, Eq. 4–6): exactly Φ response tokens per optimizer step.

Responses are taken greedily in fill order until Φ tokens; the one crossing Φ is truncated at token
level after its group advantage was computed; the summed token loss is divided by the constant Φ.
Per token: the PPO clip (ε = 0.2), β·k3 KL to the reference (1e-3) and an entropy bonus (5e-4).
Ours: the budget's scope is a knob. "global" (default): Φ is the step's total, each of W ranks fills
Φ/W from its own prompts. "per_rank": every rank fills Φ (the step trains Φ·W). Reading the report's
numbers (Φ = 409,600 at L·K = 512 × 16 = 8,192 responses on 256 GPUs): 256 × 409,600 = 104.9M tokens
= 8,192 responses × 12.8k, i.e. Φ is *per GPU* there and trims the long tail of ~12.8k-token
responses. A global Φ of 409,600 on 8 ranks would train < 1% of the sampled tokens; the Ring-lite
config therefore reads 104,857,600 as one rollout's budget, split into two clipped updates of
52,428,800 each (`updates_per_rollout: 2`, our reading of "minibatch size of 2"). Fill order ("random" spreads the budget over prompt groups), carry-over and TIS / IcePop
are knobs (`rl/budget.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ring_lightning.rl.batch import MicroBatch
from ring_lightning.rl.budget import BudgetPlan, FillOrder, Overflow, select_budget
from ring_lightning.rl.objectives.grpo import check_loss_knobs, clipped_loss


@dataclass
class C3PO:
    """Constant-budget policy optimisation: Φ loss tokens per step, Σ ℓ / Φ.

    Args:
        token_budget: Φ, loss tokens per optimizer step: over all ranks (budget_scope "global",
            divisible by the ranks) or on each rank ("per_rank").
        budget_scope: "global" (each rank trains Φ/W tokens) or "per_rank" (each rank trains Φ).
        fill_order: budget fill order: "batch" (rollout order), "random" or "shortest_first".
        overflow: whole responses past the budget: "drop" or "carry" into the next step.
        max_carry_age: with overflow="carry", the oldest (in steps) a carried response may be.
        max_carry_fraction: with overflow="carry", the carried responses hold at most this fraction
            of the rank's budget (so every step trains >= (1 - fraction)·Φ fresh tokens; 1.0 = no cap:
            leftovers may fill whole steps).
        clip_eps_low: lower PPO clip ε (ratios below 1 − ε are clipped for A < 0).
        clip_eps_high: upper PPO clip ε (DAPO clip-higher when > clip_eps_low).
        kl_coef: β of the k3 KL penalty to the frozen reference; 0 = no reference model.
        entropy_coef: entropy bonus coefficient.
        tis_cap: truncated importance sampling cap C on π_old/π_engine (None = off).
        icepop_range: IcePop (low, high) bounds on π_old/π_engine; tokens outside are masked.
    """

    token_budget: int = 409_600
    budget_scope: Literal["global", "per_rank"] = "global"
    fill_order: FillOrder = "batch"
    overflow: Overflow = "drop"
    max_carry_age: int = 1
    max_carry_fraction: float = 0.5
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 1e-3
    entropy_coef: float = 5e-4
    tis_cap: float | None = None
    icepop_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise ValueError(f"C3PO: token_budget (Φ) must be >= 1, got {self.token_budget}")
        if self.budget_scope not in ("global", "per_rank"):
            raise ValueError(f"C3PO: budget_scope must be 'global' or 'per_rank', got {self.budget_scope!r}")
        if self.fill_order not in ("batch", "random", "shortest_first"):
            raise ValueError(f"C3PO: fill_order must be 'batch', 'random' or 'shortest_first', got {self.fill_order!r}")
        if self.overflow not in ("drop", "carry"):
            raise ValueError(f"C3PO: overflow must be 'drop' or 'carry', got {self.overflow!r}")
        if self.max_carry_age < 1:
            raise ValueError(f"C3PO: max_carry_age must be >= 1, got {self.max_carry_age}")
        if not 0.0 <= self.max_carry_fraction <= 1.0:
            raise ValueError(f"C3PO: max_carry_fraction must be in [0, 1], got {self.max_carry_fraction}")
        check_loss_knobs(self)

    @property
    def carry_age(self) -> int:
        return self.max_carry_age if self.overflow == "carry" else 0

    def rank_budget(self, world_size: int) -> int:
        """The loss tokens each rank trains per step."""
        return self.token_budget if self.budget_scope == "per_rank" else self.token_budget // world_size

    def check(self, world_size: int) -> None:
        if self.budget_scope == "global" and self.token_budget % world_size:
            raise ValueError(f"token_budget={self.token_budget} must be divisible by the {world_size} "
                             "data-parallel ranks (each rank trains on exactly Φ/W tokens), or set "
                             "budget_scope: per_rank")

    def select(self, lengths: Sequence[int], eligible: Sequence[bool], *, n_carried: int, world_size: int,
               seed: int) -> BudgetPlan | None:
        phi = self.rank_budget(world_size)
        cap = None if self.max_carry_fraction >= 1.0 else int(self.max_carry_fraction * phi)
        return select_budget(lengths, phi, order=self.fill_order, seed=seed, overflow=self.overflow,
                             eligible=eligible, n_carried_in=n_carried, carry_cap=cap)

    def finalize(self, plan: BudgetPlan, sum_over_ranks: Callable[[float], float], world_size: int) -> BudgetPlan:
        return plan  # Σ/(rank budget) per rank: the gradient mean over W ranks makes it Σ/(W·rank budget)

    def loss(self, logprobs: torch.Tensor, mb: MicroBatch, *, old_logprobs: torch.Tensor | None,
             ref_logprobs: torch.Tensor | None, entropy: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return clipped_loss(self, "token_sum_over_constant", logprobs, mb, old_logprobs, ref_logprobs, entropy)
