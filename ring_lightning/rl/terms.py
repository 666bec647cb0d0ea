"""Per-token loss terms of GRPO-family objectives and their aggregation: [B, T] -> [B, T] functions.

Ring-lite (arXiv 2506.14731, §3.1, Eq. 1–3): a token-level PPO clipped surrogate on r = π_θ/π_old
(ε = 0.2), a k3 KL penalty to the reference (β = 1e-3) and an entropy bonus (5e-4). Ours, for
vLLM rollouts: truncated importance sampling (TIS) and IcePop masking on π_old/π_engine. Log-ratios
are clamped to ±20 before exp. Aggregations (`LossAgg`): "token_sum_over_constant" (C3PO, Σ ℓ / Φ —
invariant to how tokens are split over micro-batches and ranks), "seq_mean_token_mean" (GRPO,
Σ_seq mean_seq ℓ / number of sequences) and "token_mean" (Σ ℓ / this call's tokens; comparison only).
Masked-out tokens never rescale a denominator (`aggregate` counts the loss mask, not the kept mask).
"""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token_sum_over_constant", "seq_mean_token_mean", "token_mean"]
LOSS_AGGS: tuple[str, ...] = ("token_sum_over_constant", "seq_mean_token_mean", "token_mean")
LOG_CLAMP = 20.0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over `mask`; `where`, not x * mask, so a non-finite value outside the mask stays out."""
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over `mask` (0 when the mask is empty)."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def log_ratio_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(a − b) with the log-ratio clamped to ±LOG_CLAMP."""
    return torch.exp((a - b).clamp(-LOG_CLAMP, LOG_CLAMP))


def ppo_clip(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """−min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) per token; ε_high > ε_low is DAPO's clip-higher."""
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {eps_low}, {eps_high}")
    return -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ‖π_ref) per token: exp(ref − logp) − (ref − logp) − 1 (≥ 0)."""
    d = (ref_logprobs - logprobs).clamp(-LOG_CLAMP, LOG_CLAMP)
    return torch.exp(d) - d - 1


def entropy_bonus(entropy: torch.Tensor, coef: float) -> torch.Tensor:
    """The entropy term added to the loss: −coef · H (raises entropy when minimised)."""
    return -coef * entropy


def tis_weight(rho: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weight min(π_old/π_engine, C), detached (multiplies the PG term)."""
    if cap <= 0:
        raise ValueError(f"tis_cap must be positive, got {cap}")
    return rho.clamp(max=cap).detach()


def icepop_mask(rho: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """1 where low <= π_old/π_engine <= high, else 0: IcePop drops every loss term of the others."""
    if not 0 <= low <= 1 <= high:
        raise ValueError(f"icepop_range must satisfy 0 <= low <= 1 <= high, got {(low, high)}")
    return ((rho >= low) & (rho <= high)).to(rho.dtype)


def aggregate(x: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor, loss_agg: LossAgg,
              normalizer: float) -> torch.Tensor:
    """Reduce per-token values `x` [B, T] over the kept tokens `keep`; denominators count `mask`."""
    if loss_agg == "token_sum_over_constant":
        return masked_sum(x, keep) / normalizer
    if loss_agg == "seq_mean_token_mean":
        return (masked_sum(x, keep, -1) / mask.sum(-1).clamp(min=1)).sum() / normalizer
    return masked_sum(x, keep) / mask.sum().clamp(min=1)
