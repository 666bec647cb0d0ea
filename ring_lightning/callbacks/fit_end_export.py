"""Export the trained policy as an HF directory when `fit` ends: the next stage's starting model.

Ring-lite (arXiv 2506.14731, §3) chains long-CoT SFT → reasoning RL → general RL, each stage starting
from the previous one's weights. `python -m ring_lightning pipeline` exports each RL stage from its
checkpoint; with this callback in a stage's config the stage also leaves that export behind when run
alone (`fit -c configs/quickstart/rl_reasoning.yaml`, then `fit -c configs/quickstart/rl_general.yaml`
finds it). Choices (the report is silent on file formats): the export is written only when `fit`
completes (an interrupted run leaves the previous export whole and resumes from its checkpoint); it
is built in a temporary sibling directory, fsync'ed and moved into place in one step
(`checkpointing.publish`); `use_cache` is set in its config (the RL module trains with
`use_cache=False`, which would make transformers' `generate` sample without a KV cache).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from ring_lightning.callbacks.export import replaceable_export
from ring_lightning.checkpointing import fsync_tree, publish
from ring_lightning.stage_outputs import enable_kv_cache


class FitEndExport(Callback):
    """Write `pl_module.export_hf(...)` (SFTModule, RLModule) to `dirpath` at the end of a completed fit.

    Args:
        dirpath: the HF directory to write (replaced when it holds an earlier export).
        dtype: dtype of the saved weights (e.g. "bfloat16"); None = the parameters' dtype.
        overwrite: replace an earlier export at `dirpath` (False: an existing `dirpath` is an error).
    """

    def __init__(self, dirpath: str, dtype: str | None = None, overwrite: bool = True) -> None:
        if not dirpath:
            raise ValueError("FitEndExport: dirpath must name the export directory")
        self.dirpath, self.dtype, self.overwrite = Path(dirpath), dtype, overwrite
        self.last_export: Path | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not callable(getattr(pl_module, "export_hf", None)):
            raise TypeError(f"FitEndExport needs a LightningModule with export_hf(directory, dtype) "
                            f"(SFTModule, RLModule); {type(pl_module).__name__} has none")
        self._check_target()  # fail before training, not after it

    def _check_target(self) -> None:
        out = self.dirpath
        if not out.exists():
            return
        if not self.overwrite:
            raise FileExistsError(f"FitEndExport: {out} exists and overwrite is false; choose another dirpath")
        if not replaceable_export(out):
            raise FileExistsError(f"FitEndExport: refusing to replace {out}: it is not an earlier HF export "
                                  "(no config.json) nor an empty directory; choose another dirpath")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # nothing trained (e.g. resumed from a finished run)
            return
        self._check_target()
        tmp = self.dirpath.with_name(f".tmp-{self.dirpath.name}")
        if trainer.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        trainer.strategy.barrier("fit_end_export_start")
        pl_module.export_hf(tmp, dtype=self.dtype)  # collective under FSDP2; rank 0 writes
        if trainer.is_global_zero:
            enable_kv_cache(tmp)
            fsync_tree(tmp)
            publish(tmp, self.dirpath)
            self.last_export = self.dirpath
        trainer.strategy.barrier("fit_end_export_done")
