"""ThroughputLogger: an example user callback (wall-clock throughput of the training loop).

It is what a plug-in looks like: a plain `lightning.Callback` with typed, documented `__init__`
arguments (they become `--trainer.callbacks.init_args.*` options), which observes the loop and
neither changes training nor depends on other callbacks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


def _batch_tokens(batch: Any) -> int | None:
    """Non-padding tokens of a batch: `num_tokens` of a packed SFT batch, else the size of `input_ids`."""
    count = getattr(batch, "num_tokens", None)
    if count is not None:
        return int(count)
    ids = batch.get("input_ids") if isinstance(batch, dict) else getattr(batch, "input_ids", None)
    return int(ids.numel()) if ids is not None else None


class ThroughputLogger(L.Callback):
    """Logs micro-batches/s and tokens/s of the training loop and writes a JSON summary at the end.

    Args:
        every_n_batches: log every this many training micro-batches.
        output: summary file; None = `throughput.json` in the trainer's log directory (or the
            working directory without a logger).
    """

    def __init__(self, every_n_batches: int = 1, output: str | None = None) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches, self.output = every_n_batches, output
        self.batches, self.tokens, self.seconds = 0, 0, 0.0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        self.batches += 1
        self.seconds += dt
        tokens = _batch_tokens(batch)
        if tokens is not None:
            self.tokens += tokens
        if self.batches % self.every_n_batches == 0:
            metrics = {"throughput/batches_per_s": 1.0 / max(dt, 1e-9)}
            if tokens is not None:
                metrics["throughput/tokens_per_s"] = tokens / max(dt, 1e-9)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(self.output) if self.output else Path(trainer.log_dir or ".") / "throughput.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = {"batches": self.batches, "tokens": self.tokens, "seconds": round(self.seconds, 4),
                   "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0}
        path.write_text(json.dumps(summary, indent=2) + "\n")
