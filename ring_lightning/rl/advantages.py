"""Group-relative advantages (GRPO), as used by C3PO.

What the Ring-lite report says (arXiv 2506.14731, §3.1, Eq. 1–3): for each prompt, K responses are
sampled and scored; response i's advantage is A_i = (R_i − mean_j R_j) / std_j R_j over its group,
and every token of the response gets A_i. C3PO (§3.2) computes these on the full group *before*
the token budget truncates responses, so a truncated response keeps its group advantage.

Where the report is ambiguous, what we chose (all arguments):

* std: the sample standard deviation (ddof=1, `std_ddof`), as `torch.std` computes it in the common
  GRPO implementations; ddof=0 (population std) is available.
* eps: A = (R − mean) / (std + eps) with eps = 1e-6.
* A group whose valid rewards are all equal (zero std) gets advantage exactly 0 — no division by
  eps. So does a group with fewer than ddof + 1 valid samples (std undefined).
* Invalid samples (`valid=False`, e.g. a gold answer that does not parse) are left out of the
  group mean and std, get advantage 0, and must be kept out of the loss: pass
  `eligible=[r.valid ...]` to the budget selection (`rl/budget.py`), which never selects them.
* `scale="none"` gives unscaled advantages R − baseline (Dr. GRPO); `baseline="leave_one_out"`
  uses the mean of the *other* valid samples of the group (RLOO), i.e. K/(K−1) · (R − mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ring_lightning.rl.batch import Response

Scale = Literal["std", "none"]
Baseline = Literal["mean", "leave_one_out"]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    valid: torch.Tensor | None = None,
    scale: Scale = "std",
    baseline: Baseline = "mean",
    eps: float = 1e-6,
    std_ddof: int = 1,
) -> torch.Tensor:
    """Group-normalised advantages.

    Args:
        rewards: [N] rewards with `group_ids` [N], or [G, K] (one row per group, no group_ids).
        group_ids: [N] integer group id of each sample (any values; equal id = same prompt).
        valid: [N] (or [G, K]) bool; invalid samples are left out of the statistics and get 0.
        scale: "std" divides by the group std (GRPO); "none" leaves R − baseline (Dr. GRPO).
        baseline: "mean" (group mean of valid samples) or "leave_one_out" (mean of the others).
        eps: added to the std in the denominator.
        std_ddof: delta degrees of freedom of the std (1 = sample std, 0 = population std).

    Returns:
        Advantages with the shape of `rewards`, in its float dtype (float32 for integer rewards).
    """
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    if std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1, got {std_ddof}")
    shape = rewards.shape
    if group_ids is None:
        if rewards.ndim != 2:
            raise ValueError(f"rewards of shape {tuple(shape)} need group_ids; pass group_ids [N] "
                             "or rewards shaped [G, K]")
        G, K = shape
        group_ids = torch.arange(G, device=rewards.device).repeat_interleave(K)  # [N]
    elif rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(shape)} and group_ids {tuple(group_ids.shape)} must both "
                         "be [N]")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.reshape(-1).to(dtype)  # [N]
    if valid is None:
        v = torch.ones_like(r, dtype=torch.bool)  # [N]
    else:
        if valid.shape != shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)}, rewards {tuple(shape)}")
        v = valid.reshape(-1).to(torch.bool)  # [N]
    if not torch.isfinite(r[v]).all():
        bad = torch.nonzero(v & ~torch.isfinite(r)).flatten().tolist()
        raise ValueError(f"non-finite rewards at valid samples {bad}; mark them valid=False")
    _, gi = torch.unique(group_ids.reshape(-1), return_inverse=True)  # [N] in [0, G)
    G = int(gi.max()) + 1 if gi.numel() else 0
    vf = v.to(dtype)  # [N]
    rv = torch.where(v, r, torch.zeros_like(r))  # [N] invalid rewards zeroed
    cnt = torch.zeros(G, dtype=dtype, device=r.device).index_add_(0, gi, vf)  # [G]
    tot = torch.zeros(G, dtype=dtype, device=r.device).index_add_(0, gi, rv)  # [G]
    mean = tot / cnt.clamp(min=1)  # [G]
    dev = (rv - mean[gi]) * vf  # [N] 0 for invalid samples (even NaN rewards)
    ss = torch.zeros(G, dtype=dtype, device=r.device).index_add_(0, gi, dev * dev)  # [G]
    std = (ss / (cnt - std_ddof).clamp(min=1)).sqrt()  # [G]
    big = torch.full((G,), float("inf"), dtype=dtype, device=r.device)
    rmax = big.neg().scatter_reduce_(0, gi, torch.where(v, r, -big[gi]), "amax")  # [G]
    rmin = big.clone().scatter_reduce_(0, gi, torch.where(v, r, big[gi]), "amin")  # [G]
    degenerate = (rmax == rmin) | (cnt < std_ddof + 1) | (cnt < 1)  # [G] zero or undefined std
    if baseline == "leave_one_out":
        k = cnt[gi]  # [N]
        adv = torch.where(k > 1, dev * k / (k - 1).clamp(min=1), torch.zeros_like(dev))  # [N]
    else:
        adv = dev  # [N]
    if scale == "std":
        adv = adv / (std[gi] + eps)
    adv = torch.where(v & ~degenerate[gi], adv, torch.zeros_like(adv))  # [N]
    return adv.reshape(shape)


def assign_advantages(
    responses: Sequence[Response],
    *,
    scale: Scale = "std",
    baseline: Baseline = "mean",
    eps: float = 1e-6,
    std_ddof: int = 1,
) -> tuple[Response, ...]:
    """Copies of `responses` with `advantage` set from their group (`group_id`) and `valid` flag.

    Call this on the full rollout (all K responses of each group) before the budget selection.
    Arguments as in `group_advantages`.
    """
    if not responses:
        return ()
    rewards = torch.tensor([r.reward for r in responses], dtype=torch.float64)  # [N]
    groups = torch.tensor([r.group_id for r in responses])  # [N]
    valid = torch.tensor([r.valid for r in responses])  # [N]
    adv = group_advantages(rewards, groups, valid=valid, scale=scale, baseline=baseline, eps=eps,
                           std_ddof=std_ddof)
    return tuple(r.replace(advantage=float(a)) for r, a in zip(responses, adv.tolist()))
