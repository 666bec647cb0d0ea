"""Token logprobs + entropy without a float32 [B, T, V] copy, and `policy_loss`: the GRPO / C3PO
loss of one micro-batch composed of the terms in `rl/terms.py` (Ring-lite, arXiv 2506.14731, Eq. 1–6).
Router auxiliary losses are the module's job (added per micro-batch, token-weighted; see
`modules/rl.py`); this returns the policy part only. Choices where the report is silent (k3 KL,
entropy as a bonus, clip-higher, TIS / IcePop, the aggregations): `rl/terms.py`, docs/design.md.
"""

from __future__ import annotations

import torch

from ring_lightning.rl.terms import (LOSS_AGGS, LossAgg, aggregate, entropy_bonus, icepop_mask, k3_kl,
                                     log_ratio_exp, masked_mean, ppo_clip, tis_weight)

__all__ = ["LossAgg", "policy_loss", "token_logprobs_and_entropy"]


def _chunk_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [n], entropy [n], log_softmax [n, V], softmax [n, V]) of one chunk.

    Two [n, V] buffers in the compute dtype are live at the end (the last two outputs, fresh
    tensors the caller may overwrite); logsumexp adds one transient buffer before `p` exists.
    """
    dt = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dt, copy=True)  # [n, V] own buffer
    if temperature != 1.0:
        z.div_(temperature)
    z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))  # [n, V] now log_softmax
    p = z.exp()  # [n, V]
    entropy = -torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).reshape(-1)  # [n], no [n, V] temp
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [n]
    return logp, entropy, z, p


class _TokenLogprobsEntropy(torch.autograd.Function):
    """Chunked forward; backward recomputes each chunk and writes into one gradient tensor."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_size):  # [N, V], [N]
        out_dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = logits.new_empty(logits.shape[0], dtype=out_dtype)  # [N]
        ent = logits.new_empty(logits.shape[0], dtype=out_dtype)  # [N]
        for s in range(0, logits.shape[0], chunk_size):
            e = s + chunk_size
            logp[s:e], ent[s:e] = _chunk_stats(logits[s:e], targets[s:e], temperature)[:2]
        ctx.save_for_backward(logits, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):  # [N], [N]
        logits, targets = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty_like(logits)  # [N, V] in the logits' dtype
        for s in range(0, logits.shape[0], ctx.chunk_size):
            e = s + ctx.chunk_size
            _, ent, gz, p = _chunk_stats(logits[s:e], targets[s:e], tau)  # gz = log_softmax
            gl = g_logp[s:e].to(p).unsqueeze(-1)  # [n, 1]
            ge = g_ent[s:e].to(p).unsqueeze(-1)  # [n, 1]
            # d logp_y / dz = onehot(y) - p ;  dH / dz = -p * (log p + H); in place in gz:
            gz.add_(ent.unsqueeze(-1)).mul_(ge).add_(gl).mul_(p).neg_()  # [n, V]
            gz.scatter_add_(-1, targets[s:e].unsqueeze(-1), gl)
            if tau != 1.0:
                gz.div_(tau)
            grad[s:e] = gz
            del gz, p
        return grad, None, None, None


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token and the entropy of each position's distribution.

    Works on chunks of `chunk_size` positions, upcast to float32 (float64 stays float64). A custom
    autograd function saves only the logits; its backward recomputes each chunk's softmax and
    writes the gradient into one [B, T, V] tensor of the logits' dtype. So at any time only one
    chunk's float32 [chunk, V] temporaries exist — no full [B, T, V] float32 copy, in forward or
    backward. Double backward is not supported.

    Args:
        logits: [B, T, V] model outputs at the input positions (any float dtype).
        targets: [B, T] long, the token predicted at each position (`MicroBatch.target_ids`).
        temperature: divide the logits by this before the softmax (match the sampling temperature).
        chunk_size: positions (over B·T) per chunk.

    Returns:
        (logprobs [B, T], entropy [B, T]) in float32 (float64 for float64 logits).
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and targets [B, T]; got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, V = logits.shape
    logp, ent = _TokenLogprobsEntropy.apply(logits.reshape(B * T, V), targets.reshape(B * T),
                                            temperature, chunk_size)  # [N], [N]
    return logp.reshape(B, T), ent.reshape(B, T)


def _check(logprobs, mask, loss_agg, normalizer, engine_logprobs, tis_cap, icepop_range) -> None:
    if logprobs.ndim != 2 or mask.shape != logprobs.shape:
        raise ValueError(f"logprobs and mask must both be [B, T]; got {tuple(logprobs.shape)} and "
                         f"{tuple(mask.shape)}")
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; use 'token_sum_over_constant', "
                         "'seq_mean_token_mean' or 'token_mean'")
    if loss_agg != "token_mean" and not normalizer > 0:
        raise ValueError(f"normalizer must be positive for loss_agg={loss_agg!r}, got {normalizer}")
    if (tis_cap is not None or icepop_range is not None) and engine_logprobs is None:
        raise ValueError("tis_cap / icepop_range need engine_logprobs (the rollout engine's "
                         "logprobs of the sampled tokens)")


def _ratio_metrics(ratio: torch.Tensor, adv: torch.Tensor, m: torch.Tensor, eps_low: float,
                   eps_high: float) -> dict[str, torch.Tensor]:
    r, a = ratio.detach(), adv.detach()
    sel = r[m > 0]
    return {"clip/low_frac": masked_mean(((r < 1 - eps_low) & (a < 0)).to(m), m),
            "clip/high_frac": masked_mean(((r > 1 + eps_high) & (a > 0)).to(m), m),
            "ratio/mean": masked_mean(r, m),
            "ratio/min": sel.min() if sel.numel() else r.new_ones(()),
            "ratio/max": sel.max() if sel.numel() else r.new_ones(()),
            "tokens/loss": m.sum().detach()}


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float,
    *,
    loss_agg: LossAgg = "token_sum_over_constant",
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 1e-3,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 5e-4,
    engine_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    icepop_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy loss of one micro-batch, composed of `rl/terms.py`. Per loss token:
    ℓ = ppo_clip(r, A) [· tis_weight] + kl_coef · k3_kl − entropy_coef · H, r = exp(logp − old),
    over the tokens of `mask` kept by `icepop_mask`, reduced by `aggregate(loss_agg, normalizer)`.

    Inputs are [B, T] (`advantages` may be [B]); `old_logprobs=None` means on-policy (logprobs
    detached); `ref_logprobs` / `entropy` None disable the KL / entropy terms; `engine_logprobs` is
    needed by `tis_cap` / `icepop_range`. Returns (loss, metrics): metrics are detached 0-dim tensors;
    "loss/policy_gradient", "loss/kl", "loss/entropy_bonus" are aggregated like the loss (they add up
    over micro-batches); the others are means over this call's loss tokens ("tokens/loss" weights them).
    """
    _check(logprobs, mask, loss_agg, normalizer, engine_logprobs, tis_cap, icepop_range)
    inside = mask > 0  # [B, T]

    def clean(x: torch.Tensor | None) -> torch.Tensor | None:  # no NaN/inf outside the mask reaches the loss
        return None if x is None else torch.where(inside, x.to(logprobs.dtype).expand_as(logprobs),
                                                  torch.zeros_like(logprobs))

    logprobs, entropy, ref_logprobs, engine_logprobs = map(clean, (logprobs, entropy, ref_logprobs, engine_logprobs))
    old = logprobs.detach() if old_logprobs is None else clean(old_logprobs)
    adv = clean(advantages.unsqueeze(-1) if advantages.ndim == 1 else advantages)
    m0 = mask.to(logprobs.dtype)  # [B, T] the tokens in the loss
    m = m0  # minus IcePop-masked tokens
    ratio = log_ratio_exp(logprobs, old)
    pg = ppo_clip(ratio, adv, clip_eps_low, clip_eps_high)
    metrics: dict[str, torch.Tensor] = {}
    if engine_logprobs is not None:
        rho = log_ratio_exp(old, engine_logprobs)  # π_old / π_engine
        if icepop_range is not None:
            keep = icepop_mask(rho, *icepop_range).to(m)
            metrics["icepop/masked_frac"] = masked_mean(1 - keep, m).detach()
            m = m * keep
        if tis_cap is not None:
            w = tis_weight(rho, tis_cap)
            metrics["tis/weight_mean"] = masked_mean(w, m).detach()
            metrics["tis/capped_frac"] = masked_mean((rho > tis_cap).to(m), m).detach()
            pg = pg * w
    terms = {"loss/policy_gradient": pg}
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        terms["loss/kl"] = kl_coef * kl
        metrics["kl/ref_k3_mean"] = masked_mean(kl.detach(), m)
    if entropy is not None:
        terms["loss/entropy_bonus"] = entropy_bonus(entropy, entropy_coef)
        metrics["entropy/mean"] = masked_mean(entropy.detach(), m)
    loss = aggregate(sum(terms.values()), m, m0, loss_agg, normalizer)
    metrics.update({k: aggregate(v.detach(), m, m0, loss_agg, normalizer) for k, v in terms.items()})
    metrics.update(_ratio_metrics(ratio, adv, m, clip_eps_low, clip_eps_high))
    return loss, metrics
