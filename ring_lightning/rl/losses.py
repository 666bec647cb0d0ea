"""The C3PO / GRPO policy loss and memory-efficient token logprobs + entropy.

What the Ring-lite report says (arXiv 2506.14731, §3.1–3.2, Eq. 1–6): the GRPO objective with a
token-level PPO clipped surrogate (ε = 0.2) on the ratio r = π_θ / π_old, a token-level KL penalty
to the reference policy (β = 1e-3) and an entropy term (coefficient 5e-4); C3PO sums the token
losses of the Φ budgeted tokens and divides by the constant Φ. The MoE router load-balance loss
(1e-5) and router z-loss (1e-7) are added on top.

Where the report is ambiguous, what we chose:

* KL estimator: k3, KL ≈ exp(ref − logp) − (ref − logp) − 1 per token (non-negative, unbiased
  for KL(π_θ‖π_ref) under on-policy samples); the log-ratio is clamped to ±20 for stability.
* Entropy: a *bonus* that raises entropy: loss −= entropy_coef · H (H of the tempered
  distribution at each loss token).
* Clipping: asymmetric ε (DAPO "clip-higher") when clip_eps_low != clip_eps_high; the ratio's
  log is clamped to ±20 before exp. No dual clip.
* Aggregation (`loss_agg`): "token_sum_over_constant" (C3PO: Σ_tokens ℓ / normalizer, with the
  normaliser Φ, divided by world size under gradient averaging — see `rl/budget.py`), which is
  invariant to how tokens are spread over micro-batches and ranks; "seq_mean_token_mean" (GRPO:
  Σ_seq (mean of ℓ over the sequence's loss tokens) / normalizer, the normaliser the number of
  sequences); "token_mean" (Σ ℓ / number of loss tokens of *this call* — not invariant to
  micro-batching, for comparison only; `normalizer` is ignored).
* Rollout/trainer mismatch (not in the report; for vLLM rollouts): with `engine_logprobs`,
  truncated importance sampling (TIS, `tis_cap` = C) multiplies the policy-gradient term of each
  token by min(π_old / π_engine, C) (detached); IcePop masking (`icepop_range` = (low, high)) drops
  every loss term of tokens whose π_old / π_engine is outside [low, high]. No normaliser changes
  (not even a sequence's token count in "seq_mean_token_mean"): dropped tokens contribute 0.
* Router auxiliary losses are the module's job: per micro-batch it adds
  `lb_coef · load_balance + z_coef · z_loss` (each a mean over that micro-batch's tokens), scaled by
  1 / num_micro_batches so the step's auxiliary term is their mean; this function returns the
  policy part only.
"""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token_sum_over_constant", "seq_mean_token_mean", "token_mean"]
_LOG_CLAMP = 20.0


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


def _masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    # where, not x * mask: a non-finite value at a padded position must not turn into NaN.
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_sum(x, mask) / mask.sum().clamp(min=1)


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
    """The policy part of the C3PO / GRPO loss for one micro-batch.

    Per loss token: ℓ = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) [· TIS weight]
    + kl_coef · k3(ref, logp) − entropy_coef · H, with r = exp(logp − old).

    Args:
        logprobs: [B, T] current-policy logprobs of the targets (with grad).
        old_logprobs: [B, T] behaviour-policy logprobs; None = on-policy (logprobs detached).
        advantages: [B, T] per token or [B] per sequence.
        mask: [B, T] bool/0-1, the tokens in the loss.
        normalizer: the constant the summed loss is divided by (see `loss_agg`).
        loss_agg: "token_sum_over_constant" | "seq_mean_token_mean" | "token_mean".
        clip_eps_low: ratios below 1 − clip_eps_low are clipped (for A < 0).
        clip_eps_high: ratios above 1 + clip_eps_high are clipped (for A > 0).
        ref_logprobs: [B, T] reference-policy logprobs; None disables the KL term.
        kl_coef: β of the k3 KL penalty.
        entropy: [B, T] entropy at each position (with grad); None disables the entropy bonus.
        entropy_coef: coefficient of the entropy bonus (loss −= coef · H).
        engine_logprobs: [B, T] rollout-engine logprobs; needed by `tis_cap` / `icepop_range`.
        tis_cap: C of truncated importance sampling; None = off.
        icepop_range: (low, high) bounds on π_old / π_engine outside which tokens are masked.

    Returns:
        (loss, metrics): a scalar loss; metrics are detached 0-dim tensors.
        "loss/policy_gradient", "loss/kl", "loss/entropy_bonus" are the loss's parts, aggregated
        like the loss (with the constant normaliser they add up over micro-batches to the step's
        value). The others are means over this call's loss tokens (weight them by "tokens/loss"
        to combine micro-batches): "clip/low_frac", "clip/high_frac", "kl/ref_k3_mean",
        "entropy/mean", "ratio/mean", "ratio/min", "ratio/max", "tis/weight_mean",
        "tis/capped_frac", "icepop/masked_frac", "tokens/loss" (count).
    """
    if logprobs.ndim != 2 or mask.shape != logprobs.shape:
        raise ValueError(f"logprobs and mask must both be [B, T]; got {tuple(logprobs.shape)} and "
                         f"{tuple(mask.shape)}")
    if loss_agg not in ("token_sum_over_constant", "seq_mean_token_mean", "token_mean"):
        raise ValueError(f"unknown loss_agg {loss_agg!r}; use 'token_sum_over_constant', "
                         "'seq_mean_token_mean' or 'token_mean'")
    if loss_agg != "token_mean" and not normalizer > 0:
        raise ValueError(f"normalizer must be positive for loss_agg={loss_agg!r}, got {normalizer}")
    if not (0 <= clip_eps_low < 1 and clip_eps_high >= 0):
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got "
                         f"{clip_eps_low}, {clip_eps_high}")
    if (tis_cap is not None or icepop_range is not None) and engine_logprobs is None:
        raise ValueError("tis_cap / icepop_range need engine_logprobs (the rollout engine's "
                         "logprobs of the sampled tokens)")
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    inside = mask > 0  # [B, T]

    def clean(x: torch.Tensor | None) -> torch.Tensor | None:
        # Zero every input outside the mask, so no NaN/inf there reaches the loss or its gradient.
        if x is None:
            return None
        x = x.to(logprobs.dtype).expand_as(logprobs)
        return torch.where(inside, x, torch.zeros_like(x))

    logprobs, entropy = clean(logprobs), clean(entropy)  # [B, T]
    ref_logprobs, engine_logprobs = clean(ref_logprobs), clean(engine_logprobs)  # [B, T]
    old = logprobs.detach() if old_logprobs is None else clean(old_logprobs)  # [B, T]
    adv = clean(advantages)  # [B, T]
    m0 = mask.to(logprobs.dtype)  # [B, T] the tokens in the loss
    m = m0  # [B, T] m0 minus IcePop-masked tokens

    ratio = torch.exp((logprobs - old).clamp(-_LOG_CLAMP, _LOG_CLAMP))  # [B, T]
    clipped = ratio.clamp(1 - clip_eps_low, 1 + clip_eps_high)  # [B, T]
    pg = -torch.minimum(ratio * adv, clipped * adv)  # [B, T]
    metrics: dict[str, torch.Tensor] = {}
    if engine_logprobs is not None:
        rho = torch.exp((old - engine_logprobs).clamp(-_LOG_CLAMP, _LOG_CLAMP))  # [B, T]
        if icepop_range is not None:
            low, high = icepop_range
            if not 0 <= low <= 1 <= high:
                raise ValueError(f"icepop_range must satisfy 0 <= low <= 1 <= high, got "
                                 f"{icepop_range}")
            keep = ((rho >= low) & (rho <= high)).to(m)  # [B, T]
            metrics["icepop/masked_frac"] = _masked_mean(1 - keep, m).detach()
            m = m * keep
        if tis_cap is not None:
            if tis_cap <= 0:
                raise ValueError(f"tis_cap must be positive, got {tis_cap}")
            w = rho.clamp(max=tis_cap).detach()  # [B, T]
            metrics["tis/weight_mean"] = _masked_mean(w, m).detach()
            metrics["tis/capped_frac"] = _masked_mean((rho > tis_cap).to(m), m).detach()
            pg = pg * w
    terms = {"loss/policy_gradient": pg}
    if ref_logprobs is not None:
        d = (ref_logprobs - logprobs).clamp(-_LOG_CLAMP, _LOG_CLAMP)  # [B, T]
        kl = torch.exp(d) - d - 1  # [B, T] k3 estimator
        terms["loss/kl"] = kl_coef * kl
        metrics["kl/ref_k3_mean"] = _masked_mean(kl.detach(), m)
    if entropy is not None:
        terms["loss/entropy_bonus"] = -entropy_coef * entropy
        metrics["entropy/mean"] = _masked_mean(entropy.detach(), m)
    per_token = sum(terms.values())  # [B, T]

    def agg(x: torch.Tensor) -> torch.Tensor:  # denominators count m0: masking never rescales
        if loss_agg == "token_sum_over_constant":
            return _masked_sum(x, m) / normalizer
        if loss_agg == "seq_mean_token_mean":
            return (_masked_sum(x, m, -1) / m0.sum(-1).clamp(min=1)).sum() / normalizer
        return _masked_sum(x, m) / m0.sum().clamp(min=1)

    loss = agg(per_token)
    for k, v in terms.items():
        metrics[k] = agg(v.detach())
    r = ratio.detach()
    a = adv.detach()
    metrics["clip/low_frac"] = _masked_mean(((r < 1 - clip_eps_low) & (a < 0)).to(m), m)
    metrics["clip/high_frac"] = _masked_mean(((r > 1 + clip_eps_high) & (a > 0)).to(m), m)
    metrics["ratio/mean"] = _masked_mean(r, m)
    sel = r[m > 0]
    metrics["ratio/min"] = sel.min() if sel.numel() else r.new_ones(())
    metrics["ratio/max"] = sel.max() if sel.numel() else r.new_ones(())
    metrics["tokens/loss"] = m.sum().detach()
    return loss, metrics
