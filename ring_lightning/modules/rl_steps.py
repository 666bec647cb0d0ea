"""Pieces of an RL optimizer step that are not the step itself: weight streaming into the engine,
whole-response logprob batches (π_old of carried responses), gradient clipping, the per-step metric
accumulator (reduced over ranks). The parity probe itself is `rollout/parity.py`.

Metrics (Ring-lite, arXiv 2506.14731, tracks entropy, KL and response length during RL; the
train-vs-inference mismatch metrics are ours): per step, over all ranks —
``train/loss`` (the step's objective, = Σ token losses / Φ with C3PO), ``train/loss_tokens``
(== Φ with C3PO), ``train/policy_loss``, ``train/kl_loss``, ``train/entropy_loss``,
``train/entropy``, ``train/kl_ref``, ``train/clip_low_frac``, ``train/clip_high_frac``,
``train/ratio_mean|min|max``, ``train/router_load_balance``, ``train/router_z_loss``,
``rollout/train_infer_kl`` (k3 estimate of KL(π_engine‖π_trainer), as `rollout/parity.py`'s
`train_infer_mismatch`, on the trained tokens of fresh responses), ``rollout/train_infer_ratio_max|min``
and ``rollout/train_infer_abs_diff_mean|max`` (|log π_trainer − log π_engine|), and TIS / IcePop
statistics when enabled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ring_lightning.data.rollouts.stats import all_reduce_stats
from ring_lightning.rl.batch import MicroBatch, Response, collate
from ring_lightning.rl.budget import Piece

# policy_loss metric -> (logged name, how it combines over micro-batches and ranks)
_MEAN = {"entropy/mean": "train/entropy", "kl/ref_k3_mean": "train/kl_ref", "clip/low_frac": "train/clip_low_frac",
         "clip/high_frac": "train/clip_high_frac", "ratio/mean": "train/ratio_mean",
         "tis/weight_mean": "train/tis_weight_mean", "tis/capped_frac": "train/tis_capped_frac",
         "icepop/masked_frac": "train/icepop_masked_frac"}
_LOSS = {"loss/policy_gradient": "train/policy_loss", "loss/kl": "train/kl_loss",
         "loss/entropy_bonus": "train/entropy_loss"}


def named_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's parameters by name, as `RolloutEngine.update_weights` takes them. FSDP2 shards
    stay DTensors here: the engine's sync (`rollout/weight_sync.checkpoint_chunks`) gathers them one
    decoder layer at a time, so every rank must consume the whole iterator."""
    yield from policy.named_parameters()


def response_micro_batches(responses: Sequence[Response], pad_id: int, rows: int = 8) -> list[MicroBatch]:
    """Whole responses, `rows` per micro-batch (loss mask on every response token)."""
    pieces = [Piece(i, 0, r.length) for i, r in enumerate(responses)]
    return [collate(responses, pieces[s:s + rows], 1.0, pad_id=pad_id) for s in range(0, len(pieces), rows)]


def dummy_micro_batch(pad_id: int) -> MicroBatch:
    """A one-token, zero-loss micro-batch (keeps collective forwards matched across ranks)."""
    return collate([], [], 1.0, pad_id=pad_id)


def split_response_logprobs(mbs: Sequence[MicroBatch], lps: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Per-response [L] logprobs out of `response_micro_batches` outputs [B, T]."""
    out: list[torch.Tensor | None] = [None] * n
    for mb, lp in zip(mbs, lps):
        for b, s in enumerate(mb.sample_index.tolist()):
            if s >= 0:
                out[s] = lp[b][mb.loss_mask[b].to(lp.device)].detach().float().cpu()
    return out  # type: ignore[return-value]


def clip_and_norm(policy: torch.nn.Module, max_norm: float | None) -> float:
    """Clip gradients to `max_norm` (None/0 = no clipping); returns the pre-clip total norm."""
    params = [p for p in policy.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


class MetricAccumulator:
    """Token-weighted means, sums and extrema of per-micro-batch losses, reduced over ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {"train/loss_tokens": 0.0, "train/loss": 0.0, "n_micro": 0.0,
                                       "mm/tokens": 0.0, "mm/k3": 0.0, "mm/abs": 0.0}
        self.maxes: dict[str, float] = {"train/ratio_max": -1e30, "neg/train/ratio_min": -1e30, "mm/abs_max": 0.0,
                                        "mm/log_r_max": -1e30, "mm/neg_log_r_min": -1e30}
        self.extra: dict[str, float] = {}

    def add(self, m: dict[str, torch.Tensor], aux: dict[str, torch.Tensor], mb: MicroBatch,
            logp: torch.Tensor, aux_weight: float) -> None:
        """Add one micro-batch: `m` from `policy_loss`, `aux` from `router_aux_losses` (weighted by
        `aux_weight`, the micro-batch's share of the rank's real tokens)."""
        n = float(mb.num_loss_tokens)
        s = self.sums
        s["train/loss_tokens"] += n
        s["n_micro"] += 1
        for k, name in _MEAN.items():
            if k in m:
                s[name] = s.get(name, 0.0) + n * float(m[k])
        for k, name in _LOSS.items():
            if k in m:
                s[name] = s.get(name, 0.0) + float(m[k])
                s["train/loss"] += float(m[k])
        if aux:
            s["train/loss"] += float(aux["loss"].detach()) * aux_weight
            s["train/router_load_balance"] = s.get("train/router_load_balance", 0.0) + float(
                aux["load_balance_loss_unscaled"]) * aux_weight
            s["train/router_z_loss"] = s.get("train/router_z_loss", 0.0) + float(aux["z_loss_unscaled"]) * aux_weight
        if n > 0 and "ratio/max" in m:  # an objective without a ratio logs none
            self.maxes["train/ratio_max"] = max(self.maxes["train/ratio_max"], float(m["ratio/max"]))
            self.maxes["neg/train/ratio_min"] = max(self.maxes["neg/train/ratio_min"], -float(m["ratio/min"]))
        if mb.engine_logprobs is not None:
            fresh = mb.loss_mask & ~mb.old_known.to(mb.loss_mask.device).unsqueeze(-1)  # [B, T]
            if fresh.any():
                d = (logp - mb.engine_logprobs.to(logp))[fresh]  # log π_trainer − log π_engine
                s["mm/tokens"] += float(fresh.sum())
                s["mm/k3"] += float((torch.exp(d) - d - 1).sum())
                s["mm/abs"] += float(d.abs().sum())
                self.maxes["mm/abs_max"] = max(self.maxes["mm/abs_max"], float(d.abs().max()))
                self.maxes["mm/log_r_max"] = max(self.maxes["mm/log_r_max"], float(d.max()))
                self.maxes["mm/neg_log_r_min"] = max(self.maxes["mm/neg_log_r_min"], float(-d.min()))

    def finalize(self, device: torch.device | str) -> dict[str, float]:
        """Reduce over ranks and return the logged metrics."""
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        sums, maxes = all_reduce_stats(self.sums, self.maxes, device)
        tokens = max(sums["train/loss_tokens"], 1.0)
        out = {"train/loss_tokens": sums["train/loss_tokens"], "train/loss": sums["train/loss"] / world}
        if maxes["train/ratio_max"] > -1e30:
            out.update({"train/ratio_max": maxes["train/ratio_max"], "train/ratio_min": -maxes["neg/train/ratio_min"]})
        for name in _MEAN.values():
            if name in sums:
                out[name] = sums[name] / tokens
        for name in list(_LOSS.values()) + ["train/router_load_balance", "train/router_z_loss"]:
            if name in sums:
                out[name] = sums[name] / world
        if sums["mm/tokens"] > 0:
            out["rollout/train_infer_kl"] = sums["mm/k3"] / sums["mm/tokens"]
            out["rollout/train_infer_abs_diff_mean"] = sums["mm/abs"] / sums["mm/tokens"]
            out["rollout/train_infer_abs_diff_max"] = maxes["mm/abs_max"]
            out["rollout/train_infer_ratio_max"] = math.exp(min(maxes["mm/log_r_max"], 50.0))
            out["rollout/train_infer_ratio_min"] = math.exp(-min(maxes["mm/neg_log_r_min"], 50.0))
        out.update(self.extra)
        return out
