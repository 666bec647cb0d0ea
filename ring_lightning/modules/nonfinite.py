"""Non-finite guard: skip an optimizer update whose loss or gradient norm is NaN/Inf, count it, and
abort with a clear error after `max_consecutive` such steps in a row.

Not in the Ring-lite report (arXiv 2506.14731); standard practice in large-scale post-training
(one bad micro-batch must not poison AdamW's moments, yet a run that only produces NaNs must stop
instead of burning the cluster). Choices made here:

* a step is bad when the loss summed over the step or the total gradient norm (before clipping) is
  not finite; the update is skipped by dropping every gradient (`p.grad = None`), so AdamW leaves
  those parameters and their moments untouched;
* under data parallelism the decision is reduced across ranks (a bad step on any rank is skipped on
  every rank), otherwise ranks would diverge;
* the learning-rate schedule still advances (the step happened, it just had no update), so a
  skipped step does not shift the schedule of the rest of the run;
* counters (`skipped_total`, `consecutive`) are saved in checkpoints so a resumed run keeps them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


class NonFiniteError(RuntimeError):
    """Raised after `max_consecutive` non-finite optimizer steps in a row."""


def _finite(value: torch.Tensor | float | None) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


class NonFiniteGuard:
    """Decides whether an optimizer step may be applied.

    Args:
        max_consecutive: abort (NonFiniteError) when this many steps in a row were non-finite;
            0 disables the guard (every step is applied, NaNs included).
        where: a label used in messages (e.g. "SFTModule"), so the error names the stage.
    """

    def __init__(self, max_consecutive: int = 3, where: str = "training") -> None:
        if max_consecutive < 0:
            raise ValueError(f"NonFiniteGuard: max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive, self.where = max_consecutive, where
        self.skipped_total = 0
        self.consecutive = 0

    @property
    def enabled(self) -> bool:
        return self.max_consecutive > 0

    def step_ok(self, loss: torch.Tensor | float | None, grad_norm: torch.Tensor | float | None, *,
                step: int, device: torch.device | None = None) -> bool:
        """True when the step is finite on every rank and may be applied; False = skip it (counted).

        Raises:
            NonFiniteError: the `max_consecutive`-th bad step in a row, naming the step and the values.
        """
        if not self.enabled:
            return True
        bad = not (_finite(loss) and _finite(grad_norm))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1.0 if bad else 0.0], device=device or torch.device("cpu"))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        if not bad:
            self.consecutive = 0
            return True
        self.skipped_total += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.where}: {self.consecutive} optimizer steps in a row had a non-finite loss or gradient "
                f"norm (last at global step {step}: loss={_fmt(loss)}, grad_norm={_fmt(grad_norm)}); aborting. "
                "Lower the learning rate, check the data for empty/overlong rows, or resume from the last "
                "checkpoint with a different seed.")
        return False

    @staticmethod
    def drop_grads(module: torch.nn.Module) -> None:
        """Skip the update: drop every gradient so the optimizer leaves parameters and moments alone."""
        for p in module.parameters():
            p.grad = None

    def metrics(self, prefix: str = "train") -> dict[str, float]:
        return {f"{prefix}/nonfinite_skipped": float(self.skipped_total),
                f"{prefix}/nonfinite_consecutive": float(self.consecutive)}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_total = int(state.get("skipped_total", 0))
        self.consecutive = int(state.get("consecutive", 0))


def _fmt(value: torch.Tensor | float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, torch.Tensor):
        value = value.detach().float().sum().item() if value.numel() else float("nan")
    return f"{float(value):.4g}"
