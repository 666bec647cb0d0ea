"""Optimizers and learning-rate schedules of the SFT and RL modules.

Ring-lite (arXiv 2506.14731, §3 "Long-CoT SFT"): AdamW, weight decay 0.1, peak learning rate 3e-4,
cosine decay with 1% linear warm-up. Not stated, so chosen here: betas (0.9, 0.95) and eps 1e-8
(the usual LLM pre-/post-training values), no weight decay on biases, norm weights and other 1-D
parameters, and a cosine floor of 10% of the peak (`min_lr_ratio`; set 0 to decay to zero).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: matrices with `weight_decay`, 1-D tensors (biases, norms) without."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def default_adamw(params: Iterable, lr: float, weight_decay: float, betas: tuple[float, float],
                  eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over already-grouped params (see `decay_groups`); fused/foreach chosen by torch."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def warmup_cosine_factor(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warm-up over ceil(warmup_ratio *
    total_steps) steps (the first step already uses a non-zero rate), then cosine from 1 to
    `min_lr_ratio` at `total_steps`."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.01,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR with `warmup_cosine_factor`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_ratio, min_lr_ratio))


def build_optimizer(model: nn.Module, factory, lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> torch.optim.Optimizer:
    """The injected optimizer `factory(groups)` over `decay_groups` (its matrices get the factory's own
    weight decay), else the default AdamW."""
    groups = decay_groups(model, weight_decay)
    if factory is None:
        return default_adamw(groups, lr, weight_decay, betas)
    groups[0].pop("weight_decay")
    return factory(groups)


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps` optimizer steps (the first already non-zero), then constant."""
    w = warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / w) if w else 1.0)
