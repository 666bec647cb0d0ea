"""TokenEfficiency: log RL training tokens / SFT training tokens every RL step.

Ring-lite (arXiv 2506.14731, the distillation/RL interplay study) compares recipes by token
efficiency = (# RL training tokens) / (# SFT training tokens) of the SFT checkpoint the RL stage
started from. Numerator: `pl_module.rl_tokens_trained` (RLModule: loss tokens of all ranks, i.e.
Φ per step in c3po mode; restored on resume). Denominator, first found of: docs/design.md#callbacks-token-efficiency.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from ring_lightning.callbacks.stage_transition import get_knob

from ring_lightning.models.export import META_FILE, sft_token_count  # noqa: E402  (one definition)


def read_sft_tokens(source: str | Path) -> int:
    """SFT training tokens recorded at `source` (see module docstring for the accepted kinds)."""
    from ring_lightning.checkpointing import checkpoint_metadata, is_distributed_checkpoint

    path = Path(source)
    if path.is_dir() and not is_distributed_checkpoint(path):  # an export directory
        path = path / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"TokenEfficiency: no SFT token record at {path}; point sft_source at the SFT "
                                f"export directory (with {META_FILE}), rl_readiness.json or the SFT .ckpt")
    if path.suffix == ".ckpt" or path.is_dir():  # a checkpoint file or an FSDP2 checkpoint directory
        value, key = sft_token_count(checkpoint_metadata(path), str(path))  # trusted: our own checkpoint
        where = f"{path} [{key!r}]"
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"TokenEfficiency: {path} is not valid JSON ({e})") from None
        if isinstance(data.get("chosen"), dict):  # rl_readiness.json
            value, where = data["chosen"].get("sft_tokens"), f"{path} ['chosen']['sft_tokens']"
        else:
            value, key = sft_token_count(data, str(path))
            where = f"{path} [{key or 'sft_loss_tokens_seen'!r}]"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value <= 0:
        raise ValueError(f"TokenEfficiency: {where} must be a positive SFT token count, got {value!r}")
    return int(value)


class TokenEfficiency(Callback):
    """Log `token_efficiency` = RL training tokens / SFT training tokens after every step.

    Args:
        sft_tokens: the SFT token count; None = read it from `sft_source` or the module.
        sft_source: a path holding the SFT token count (module docstring); None = skip.
        rl_tokens_attr: the LightningModule attribute counting RL training tokens.
        sft_tokens_attr: the LightningModule attribute holding the SFT token count (fallback).
        metric: the logged metric name.
    """

    def __init__(
        self,
        sft_tokens: int | None = None,
        sft_source: str | None = None,
        rl_tokens_attr: str = "rl_tokens_trained",
        sft_tokens_attr: str = "sft_tokens",
        metric: str = "token_efficiency",
    ) -> None:
        if sft_tokens is not None and sft_tokens <= 0:
            raise ValueError(f"TokenEfficiency: sft_tokens must be > 0, got {sft_tokens}")
        self.sft_tokens_arg, self.sft_source = sft_tokens, sft_source
        self.rl_tokens_attr, self.sft_tokens_attr, self.metric = rl_tokens_attr, sft_tokens_attr, metric
        self.sft_tokens: int | None = None
        self.source: str | None = None

    def resolve(self, pl_module: LightningModule) -> int:
        """The SFT token denominator (and remember where it came from)."""
        if self.sft_tokens_arg is not None:
            self.sft_tokens, self.source = int(self.sft_tokens_arg), "sft_tokens argument"
        elif self.sft_source is not None:
            self.sft_tokens, self.source = read_sft_tokens(self.sft_source), str(self.sft_source)
        else:
            value = int(get_knob(pl_module, self.sft_tokens_attr) or 0)
            if value <= 0:
                raise ValueError(
                    f"TokenEfficiency: no SFT token count: {type(pl_module).__name__}.{self.sft_tokens_attr} is "
                    f"{value} (the starting model has no {META_FILE}); set sft_tokens or sft_source (the SFT "
                    f"export dir, rl_readiness.json or SFT .ckpt), or drop this callback for runs not started from SFT")
            self.sft_tokens, self.source = value, f"{type(pl_module).__name__}.{self.sft_tokens_attr}"
        return self.sft_tokens

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.resolve(pl_module)
        get_knob(pl_module, self.rl_tokens_attr)  # fail early on a wrong attribute name

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        rl = float(get_knob(pl_module, self.rl_tokens_attr))
        pl_module.log(self.metric, rl / self.sft_tokens, on_step=True, on_epoch=False, batch_size=1)
