"""Plain GRPO (Shao et al. 2024; Ring-lite's baseline, arXiv 2506.14731, Fig. 7): every eligible
response enters in full; the loss is the mean over sequences of each sequence's token mean.

The sequence count is global (all-reduced over data-parallel ranks), so the normaliser does not
depend on how sequences are dealt to ranks. Per-token terms as in `c3po.py` (`rl/terms.py`).
Copy this file to add an objective: `select` (which tokens), `finalize` (normaliser), `loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ring_lightning.rl.batch import MicroBatch
from ring_lightning.rl.budget import BudgetPlan, select_all
from ring_lightning.rl.losses import policy_loss
from ring_lightning.rl.terms import LossAgg


def check_loss_knobs(obj: Any) -> None:
    """Validate the per-token loss knobs shared by the GRPO-family objectives (names the knob)."""
    name = type(obj).__name__
    if not (0 <= obj.clip_eps_low < 1 and obj.clip_eps_high >= 0):
        raise ValueError(f"{name}: need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got "
                         f"{obj.clip_eps_low}, {obj.clip_eps_high}")
    if obj.kl_coef < 0 or obj.entropy_coef < 0:
        raise ValueError(f"{name}: kl_coef and entropy_coef must be >= 0, got {obj.kl_coef}, {obj.entropy_coef}")
    if obj.tis_cap is not None and obj.tis_cap <= 0:
        raise ValueError(f"{name}: tis_cap must be positive or null, got {obj.tis_cap}")
    if obj.icepop_range is not None:
        low, high = obj.icepop_range = tuple(obj.icepop_range)
        if not 0 <= low <= 1 <= high:
            raise ValueError(f"{name}: icepop_range must satisfy 0 <= low <= 1 <= high, got {obj.icepop_range}")


def clipped_loss(obj: Any, loss_agg: LossAgg, logprobs: torch.Tensor, mb: MicroBatch, old_logprobs, ref_logprobs,
                 entropy) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`policy_loss` of one micro-batch with the per-token knobs of a GRPO-family objective `obj`."""
    return policy_loss(logprobs, old_logprobs, mb.advantages, mb.loss_mask, mb.normalizer, loss_agg=loss_agg,
                       clip_eps_low=obj.clip_eps_low, clip_eps_high=obj.clip_eps_high, ref_logprobs=ref_logprobs,
                       kl_coef=obj.kl_coef, entropy=entropy, entropy_coef=obj.entropy_coef,
                       engine_logprobs=mb.engine_logprobs, tis_cap=obj.tis_cap, icepop_range=obj.icepop_range)


@dataclass
class GRPO:
    """Group relative policy optimisation: all responses, seq-mean-token-mean.

    Args:
        clip_eps_low: lower PPO clip ε (ratios below 1 − ε are clipped for A < 0).
        clip_eps_high: upper PPO clip ε (DAPO clip-higher when > clip_eps_low).
        kl_coef: β of the k3 KL penalty to the frozen reference; 0 = no reference model.
        entropy_coef: entropy bonus coefficient.
        tis_cap: truncated importance sampling cap C on π_old/π_engine (None = off).
        icepop_range: IcePop (low, high) bounds on π_old/π_engine; tokens outside are masked.
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 1e-3
    entropy_coef: float = 5e-4
    tis_cap: float | None = None
    icepop_range: tuple[float, float] | None = None
    carry_age: ClassVar[int] = 0  # GRPO never carries responses over

    def __post_init__(self) -> None:
        check_loss_knobs(self)

    def check(self, world_size: int) -> None:
        return None

    def select(self, lengths: Sequence[int], eligible: Sequence[bool], *, n_carried: int, world_size: int,
               seed: int) -> BudgetPlan | None:
        if not any(e and n > 0 for e, n in zip(eligible, lengths)):
            return None
        return select_all(lengths, eligible=eligible)

    def finalize(self, plan: BudgetPlan, sum_over_ranks: Callable[[float], float], world_size: int) -> BudgetPlan:
        return replace(plan, normalizer=sum_over_ranks(len(plan.pieces)) / world_size)

    def loss(self, logprobs: torch.Tensor, mb: MicroBatch, *, old_logprobs: torch.Tensor | None,
             ref_logprobs: torch.Tensor | None, entropy: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return clipped_loss(self, "seq_mean_token_mean", logprobs, mb, old_logprobs, ref_logprobs, entropy)
