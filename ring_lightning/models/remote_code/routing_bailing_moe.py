"""Routed-expert compute and router losses of the BailingMoe MoE block (standalone: torch only).

ring_lightning copies this file into every BailingMoe export next to `modeling_bailing_moe.py`.

Experts: every implementation takes the tokens `x` [N, H], the router's choice `topk_idx` [N, K] and
weights `topk_weight` [N, K] (fp32), and the experts as an `nn.ModuleList` of SwiGLU MLPs
(`gate_proj`, `up_proj`, `down_proj`), and returns `sum_k topk_weight[n, k] * expert_{idx[n, k]}(x[n])`
[N, H]: "grouped" (sort tokens by expert, run each active expert once), "grouped_mm"
(`torch._grouped_mm` over stacked weights, bias-free experts) and "naive" (every expert on every
token; the reference). Experts stay separate modules so parameter names equal the published Ling /
Ring checkpoint names (`mlp.experts.{i}.gate_proj.weight`), which vLLM's loader expects.

Router losses: a Switch-Transformer load-balance loss (Fedus et al. 2021, eq. 4-6) and an ST-MoE
router z-loss (Zoph et al. 2022, eq. 5). Ring-lite (arXiv 2506.14731) states neither choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def _group_by_expert(topk_idx: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order of the flattened (token, slot) pairs sorted by expert, their token index, and counts [E]."""
    flat = topk_idx.reshape(-1)  # [N*K]
    order = torch.argsort(flat, stable=True)  # [N*K]
    token_of = order // topk_idx.shape[1]  # [N*K]
    counts = torch.bincount(flat, minlength=num_experts)  # [E]
    return order, token_of, counts


def routed_experts_grouped(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                           experts: nn.ModuleList) -> torch.Tensor:
    """Sort tokens by expert and run each active expert once on its slice."""
    order, token_of, counts = _group_by_expert(topk_idx, len(experts))
    xs = x[token_of]  # [N*K, H], grouped by expert
    outs = []
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            outs.append(experts[e](xs[start:start + n]))
            start += n
    ys = torch.cat(outs, dim=0)  # [N*K, H]
    w = topk_weight.reshape(-1)[order].unsqueeze(-1)  # [N*K, 1] fp32
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token_of, ys.float() * w)
    return out.to(x.dtype)


def routed_experts_grouped_mm(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                              experts: nn.ModuleList) -> torch.Tensor:
    """Grouped GEMM over stacked expert weights (`torch._grouped_mm`)."""
    first = experts[0]
    if first.gate_proj.bias is not None:
        raise ValueError("moe_implementation='grouped_mm' needs bias-free experts (config.use_bias=False); "
                         "use moe_implementation='grouped' instead")
    order, token_of, counts = _group_by_expert(topk_idx, len(experts))
    offs = torch.cumsum(counts, 0).to(torch.int32)  # [E]
    xs = x[token_of]  # [M, H]
    w_gate = torch.stack([e.gate_proj.weight for e in experts])  # [E, I, H]
    w_up = torch.stack([e.up_proj.weight for e in experts])  # [E, I, H]
    w_down = torch.stack([e.down_proj.weight for e in experts])  # [E, H, I]
    gate = torch._grouped_mm(xs, w_gate.transpose(1, 2), offs=offs)  # [M, I]
    up = torch._grouped_mm(xs, w_up.transpose(1, 2), offs=offs)  # [M, I]
    ys = torch._grouped_mm((first.act_fn(gate) * up).contiguous(), w_down.transpose(1, 2), offs=offs)  # [M, H]
    w = topk_weight.reshape(-1)[order].unsqueeze(-1)  # [M, 1]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token_of, ys.float() * w)
    return out.to(x.dtype)


def routed_experts_naive(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                         experts: nn.ModuleList) -> torch.Tensor:
    """Reference: every expert on every token, weighted by a dense [N, E] combine matrix."""
    combine = torch.zeros(x.shape[0], len(experts), dtype=torch.float32, device=x.device)  # [N, E]
    combine.scatter_(1, topk_idx, topk_weight.float())
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e, expert in enumerate(experts):
        out = out + expert(x).float() * combine[:, e:e + 1]
    return out.to(x.dtype)


EXPERT_IMPLEMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "grouped": routed_experts_grouped,
    "grouped_mm": routed_experts_grouped_mm,
    "naive": routed_experts_naive,
}


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for 16/32-bit router logits, float64 for float64 ones."""
    return torch.promote_types(logits.dtype, torch.float32)


def flat_token_mask(token_mask: torch.Tensor | None, n_tokens: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    if token_mask is None:
        return None
    mask = token_mask.reshape(-1).to(device=device, dtype=dtype)  # [B*T]
    if mask.numel() != n_tokens:
        raise ValueError(f"token_mask has {mask.numel()} entries but router logits have {n_tokens} rows; "
                         "pass the [B, T] mask of the same batch (1 = real token)")
    return mask


def load_balance_loss(router_logits: Sequence[torch.Tensor], top_k: int,
                      token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch load-balance loss averaged over layers (1.0 = uniform). Args: logits [B*T, E] per layer."""
    losses = []
    for logits in router_logits:
        n, e = logits.shape
        dt = compute_dtype(logits)
        probs = torch.softmax(logits.to(dt), dim=-1)  # [N, E]
        chosen = torch.topk(probs, top_k, dim=-1).indices  # [N, K]
        mask = flat_token_mask(token_mask, n, logits.device, dt)
        weight = torch.ones(n, device=logits.device, dtype=dt) if mask is None else mask  # [N]
        total = weight.sum().clamp_min(1.0)
        counts = torch.zeros(e, device=logits.device, dtype=dt).scatter_add_(
            0, chosen.reshape(-1), weight.repeat_interleave(top_k))  # [E]
        frac_tokens = counts / (total * top_k)  # [E], sums to 1
        mean_prob = (probs * weight[:, None]).sum(0) / total  # [E]
        losses.append(e * (frac_tokens * mean_prob).sum())
    return torch.stack(losses).mean()


def router_z_loss(router_logits: Sequence[torch.Tensor], token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss `mean_tokens(logsumexp(logits)^2)`, averaged over layers."""
    losses = []
    for logits in router_logits:
        dt = compute_dtype(logits)
        z = torch.logsumexp(logits.to(dt), dim=-1).square()  # [N]
        mask = flat_token_mask(token_mask, logits.shape[0], logits.device, dt)
        losses.append(z.mean() if mask is None else (z * mask).sum() / mask.sum().clamp_min(1.0))
    return torch.stack(losses).mean()
