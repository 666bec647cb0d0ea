"""The progress bar of `python -m ring_lightning fit`: Lightning's rich bar, labelled for step-limited runs.

Ring-lite's stages are budgeted in optimizer steps (arXiv 2506.14731, §3: SFT and both RL stages
run for a number of steps over streams without epochs), so our configs set `max_steps` and leave
`max_epochs` unset; Lightning then has `max_epochs = -1` and its bar reads "Epoch 0/-2". This bar
reads "Epoch 0" there (the step count and rate follow it as usual) and is otherwise Lightning's
`RichProgressBar` (falls back to `TQDMProgressBar` without `rich`). The CLI adds it when the
configuration enables the progress bar and names no progress-bar callback of its own.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE


class StepProgressBar(RichProgressBar):
    """`RichProgressBar` whose training description omits the "/-2" of runs without an epoch limit.

    Args: those of `lightning.pytorch.callbacks.RichProgressBar` (refresh_rate, leave, theme, console_kwargs).
    """

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"  # as Lightning pads, against flicker


def default_progress_bar() -> RichProgressBar | TQDMProgressBar:
    """The bar the CLI adds: `StepProgressBar`, or Lightning's TQDM bar when `rich` is missing."""
    return StepProgressBar() if _RICH_AVAILABLE else TQDMProgressBar()
