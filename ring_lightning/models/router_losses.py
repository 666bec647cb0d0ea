"""Router auxiliary losses and expert-load metrics for MoE policies (BailingMoe and any HF MoE model).

Paper: Ring-lite (arXiv 2506.14731) trains Ling-lite, a softmax top-k MoE (64 routed experts, top-6, 2
shared experts). The report does not give the router regularisation used during its SFT and RL stages
(no load-balance or z-loss coefficient is stated), so we choose: a Switch-Transformer load-balance
loss (Fedus et al. 2021, eq. 4-6) and an ST-MoE router z-loss (Zoph et al. 2022, eq. 5), with small
default coefficients 1e-5 and 1e-7 (config fields `router_aux_loss_coef`, `router_z_loss_coef`), so
they watch for collapse without pulling the policy away from the distilled/RL objective. The two
losses live in `remote_code/routing_bailing_moe.py` (exports carry them); they are re-exported here.

Choices and details: docs/design.md#models-router-losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ring_lightning.models.remote_code.routing_bailing_moe import (compute_dtype, flat_token_mask, load_balance_loss,
                                                                  router_z_loss)

__all__ = ["load_balance_loss", "router_z_loss", "expert_load", "load_imbalance", "router_aux_losses", "num_experts",
           "top_k"]

DEFAULT_AUX_LOSS_COEF = 1e-5
DEFAULT_Z_LOSS_COEF = 1e-7

# config fields that name the routed-expert count / top-k across HF MoE families
_NUM_EXPERTS_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
_TOP_K_FIELDS = ("num_experts_per_tok", "moe_topk", "top_k")


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no `.config`; pass an HF PreTrainedModel")
    return config


def num_experts(model: nn.Module) -> int:
    """Routed experts per MoE layer (0 for a dense model)."""
    config = _config(model)
    for field in _NUM_EXPERTS_FIELDS:
        value = getattr(config, field, None)
        if value:
            return int(value)
    return 0


def top_k(model: nn.Module) -> int:
    """Experts each token is routed to."""
    config = _config(model)
    for field in _TOP_K_FIELDS:
        value = getattr(config, field, None)
        if value:
            return int(value)
    raise ValueError(f"{type(model).__name__}'s config has none of {_TOP_K_FIELDS}; cannot tell the router top-k")


@torch.no_grad()
def expert_load(router_logits: Sequence[torch.Tensor], top_k: int,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens routed to each expert, per MoE layer: [L, E] (padding excluded by `token_mask`).

    Counted in float32 (exact up to 2^24 tokens per expert), or float64 for float64 logits; never in
    torch's default dtype."""
    rows = []
    for logits in router_logits:
        n, e = logits.shape
        dt = compute_dtype(logits)
        chosen = torch.topk(logits.to(dt), top_k, dim=-1).indices  # [N, K] (softmax keeps the order)
        mask = flat_token_mask(token_mask, n, logits.device, dt)
        weight = torch.ones(n, device=logits.device, dtype=dt) if mask is None else mask  # [N]
        rows.append(torch.zeros(e, device=logits.device, dtype=dt).scatter_add_(
            0, chosen.reshape(-1), weight.repeat_interleave(top_k)))  # [E]
    return torch.stack(rows)


def load_imbalance(load: torch.Tensor) -> torch.Tensor:
    """max/min tokens per expert for each layer, [L]; the min is clamped to 1 token so idle experts stay finite."""
    return load.max(dim=-1).values / load.min(dim=-1).values.clamp_min(1.0)


def router_aux_losses(
    outputs,
    model: nn.Module,
    *,
    token_mask: torch.Tensor | None = None,
    aux_loss_coef: float | None = None,
    z_loss_coef: float | None = None,
) -> dict[str, torch.Tensor]:
    """Router regularisers of one forward pass, ready to add to the task loss.

    Args:
        outputs: the model's forward output; must carry `router_logits` for MoE models (call the model
            with `output_router_logits=True`).
        model: the model (its config gives the expert count, top-k and default coefficients).
        token_mask: [B, T], 1 for real tokens; padding is excluded. None = every position counts.
        aux_loss_coef: load-balance coefficient; default `config.router_aux_loss_coef`, else 1e-5.
        z_loss_coef: z-loss coefficient; default `config.router_z_loss_coef`, else 1e-7.

    Returns:
        {} for a dense model. For a MoE model: `loss` (scaled sum, add it to the task loss),
        `load_balance_loss` and `z_loss` (scaled), `load_balance_loss_unscaled`, `z_loss_unscaled`
        (for logging; the unscaled load balance is 1.0 under uniform routing).
    """
    if num_experts(model) == 0:
        return {}
    router_logits = getattr(outputs, "router_logits", None)
    if not router_logits:
        raise ValueError(f"{type(model).__name__} is a MoE model but its outputs carry no router_logits; "
                         "call it with output_router_logits=True")
    config = _config(model)
    if aux_loss_coef is None:
        aux_loss_coef = getattr(config, "router_aux_loss_coef", None)
        aux_loss_coef = DEFAULT_AUX_LOSS_COEF if aux_loss_coef is None else aux_loss_coef
    if z_loss_coef is None:
        z_loss_coef = getattr(config, "router_z_loss_coef", None)
        z_loss_coef = DEFAULT_Z_LOSS_COEF if z_loss_coef is None else z_loss_coef
    lb = load_balance_loss(router_logits, top_k(model), token_mask)
    z = router_z_loss(router_logits, token_mask)
    lb_scaled, z_scaled = aux_loss_coef * lb, z_loss_coef * z
    return {
        "loss": lb_scaled + z_scaled,
        "load_balance_loss": lb_scaled,
        "z_loss": z_scaled,
        "load_balance_loss_unscaled": lb.detach(),
        "z_loss_unscaled": z.detach(),
    }
