"""The `python -m ring_lightning` / `ring-lightning` command line.

    python -m ring_lightning fit -c configs/quickstart/sft.yaml [--trainer.max_steps=10 ...]
    python -m ring_lightning {fit,validate,test,predict} ...   LightningCLI subcommands
    python -m ring_lightning prepare ...                        RL prompt-set preparation (prepare/pipeline.py)
    python -m ring_lightning pipeline ...                       the whole recipe, stage after stage (pipeline.py)

Choices and details: docs/design.md#cli.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from argparse import ArgumentError

from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy

try:  # jsonargparse's own error type (argparse.ArgumentError subclass in recent versions)
    from jsonargparse import ArgumentError as JsonArgumentError
except ImportError:  # pragma: no cover - older jsonargparse
    JsonArgumentError = ArgumentError
from jsonargparse import lazy_instance

DEBUG_ENV = "RING_LIGHTNING_DEBUG"
EXTRA_COMMANDS = {
    "prepare": ("ring_lightning.prepare.pipeline", "clean, deduplicate, decontaminate and grade RL prompt sets"),
    "pipeline": ("ring_lightning.pipeline", "run the Ring-lite recipe end to end (SFT, then RL stages)"),
}
DESCRIPTION = "ring_lightning: the Ring-lite recipe (long-CoT SFT + C3PO RL) on PyTorch Lightning.\n\n" + (
    "Other commands (give them first, e.g. `python -m ring_lightning prepare --help`): "
    + "; ".join(f"{name}: {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()) + ".")

# Defaults for every run; any of them can be overridden in a config or on the command line.
# runs/ is git-ignored: logs, checkpoints and the saved config.yaml land there, also with logger=false.
TRAINER_DEFAULTS = {
    "logger": lazy_instance(TensorBoardLogger, save_dir="runs", name="ring_lightning"),
    "default_root_dir": "runs",
    "log_every_n_steps": 1,
}


ATOMIC_KEY = "atomic_checkpoints"
ATOMIC_SUBSTITUTES = {  # Lightning class -> crash-safe subclass with the same arguments
    ModelCheckpoint: "ring_lightning.checkpointing.AtomicModelCheckpoint",
    ModelParallelStrategy: "ring_lightning.checkpointing.AtomicModelParallelStrategy",
}


class ConfigError(Exception):
    """A configuration problem; its message names the key or file."""


class RingLightningCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, omegaconf interpolation, concise errors.

    Args:
        args: command-line arguments (None = sys.argv[1:]).
        run: run the subcommand (False = only parse and instantiate).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False, "description": DESCRIPTION,
                           "prog": "python -m ring_lightning"},
            trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False, args=args, run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(f"--{ATOMIC_KEY}", type=bool, default=True,
                            help="crash-safe checkpoints (ring_lightning/checkpointing.py): atomic, fsync'ed "
                                 "checkpoint files, distributed checkpoint directories and last.ckpt links")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        if not config.get(ATOMIC_KEY, True):
            return
        trainer = config.get("trainer")
        if trainer is None:
            return
        callbacks = trainer.get("callbacks")
        for item in callbacks if isinstance(callbacks, list) else [callbacks]:
            _substitute(item)
        _substitute(trainer.get("strategy"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("enable_progress_bar") is not False and "callbacks" not in kwargs:
            callbacks = trainer_cfg.get("callbacks")
            callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
            if not any(isinstance(c, ProgressBar) for c in callbacks):  # ours: "Epoch 0", not "Epoch 0/-2"
                from ring_lightning.callbacks.progress import default_progress_bar

                kwargs["callbacks"] = [*callbacks, default_progress_bar()]
        if self._get(self.config, ATOMIC_KEY, True) and "plugins" not in kwargs:
            from ring_lightning.checkpointing import AtomicCheckpointIO

            plugins = trainer_cfg.get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            strategy_io = getattr(trainer_cfg.get("strategy"), "_checkpoint_io", None)
            if strategy_io is None and not any(isinstance(p, CheckpointIO) for p in plugins):
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except (ArgumentError, JsonArgumentError) as e:
            raise ConfigError(concise_error(str(e))) from e

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, ImportError, KeyError) as e:
            message = str(e)
            target = re.search(r"class_path='([^']+)'", message)
            where = f" {target.group(1)}" if target else " the configured classes"
            raise ConfigError(f"could not instantiate{where}: {concise_error(message)}") from e


def _substitute(item: Any) -> None:
    """Point a parsed `class_path` of a Lightning class in ATOMIC_SUBSTITUTES at its crash-safe subclass."""
    class_path = getattr(item, "class_path", None) if item is not None and not isinstance(item, str) else None
    if not class_path:
        return
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return  # jsonargparse reports unknown classes itself
    if cls in ATOMIC_SUBSTITUTES:
        item.class_path = ATOMIC_SUBSTITUTES[cls]


def concise_error(message: str) -> str:
    """One line from jsonargparse's nested error report: the full key (or file) and what is wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys: list[str] = []
    detail, class_path = None, None
    for line in lines:
        m = re.match(r'(?:- )?Parser key "([^"]+)":\s*(.*)', line)
        if m:
            keys.append(m.group(1))
            if m.group(2):
                detail = m.group(2)
                break
            continue
        m = re.match(r"- Problem with given class_path '([^']+)':\s*(.*)", line)
        if m:
            class_path = m.group(1)
            keys.append("init_args")
            if m.group(2):
                detail = m.group(2)
                break
            continue
        if line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value")):
            continue
        if re.fullmatch(r"- Expected a <class 'NoneType'>.*", line):
            continue
        detail = line.lstrip("- ")
        break
    detail = detail or (lines[0] if lines else message)
    if keys and keys[0] == "config":
        m = re.search(r"File does not exist: '?([^']+)'?", detail)
        return f"config file not found: {m.group(1)}" if m else f"config file: {detail}"
    m = re.fullmatch(r"Option '([^']+)' is not accepted", detail)
    if m:
        keys.append(m.group(1))
        detail = "unknown key" + (f" (not an argument of {class_path})" if class_path else "")
    m = re.fullmatch(r"Group '([^']+)' does not accept option '([^']+)'", detail)
    if m:
        keys, detail = [m.group(1), m.group(2)], "unknown key"
    m = re.fullmatch(r"unrecognized arguments: (.+)", detail)
    if m:
        return f"unknown key(s) on the command line: {m.group(1)}"
    if class_path and ("has no attribute" in detail or "No module named" in detail):
        keys = [k for k in keys if k != "init_args"] + ["class_path"]
        detail = f"cannot import {class_path!r}: {detail}"
    key = ".".join(k for i, k in enumerate(keys) if not (k == "init_args" and i + 1 == len(keys)))
    return f"{key}: {detail}" if key else detail


def _run_extra_command(name: str, argv: list[str]) -> None:
    module_name = EXTRA_COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            sys.stderr.write(f"ring_lightning: the '{name}' command is not available in this installation "
                             f"({module_name} is missing).\n")
            sys.exit(2)
        raise
    code = module.main(argv)
    if code:
        sys.exit(code)


def _run_errors() -> tuple[type[BaseException], ...]:
    """Errors of bad inputs met during a run (data rows, model paths, engine, non-finite training,
    weight sync): their message names what and where, so the CLI prints it as one line, exit 1."""
    from ring_lightning.rows import PromptRowError
    from ring_lightning.data.sft.rows import SFTRowError
    from ring_lightning.models.loading import ModelLoadError
    from ring_lightning.modules.nonfinite import NonFiniteError
    from ring_lightning.rollout.engine import EngineError
    from ring_lightning.rollout.parity import SyncParityError
    from ring_lightning.rollout.weight_sync import WeightSyncError

    return (PromptRowError, SFTRowError, ModelLoadError, NonFiniteError, EngineError, SyncParityError,
            WeightSyncError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m ring_lightning` and the `ring-lightning` script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in EXTRA_COMMANDS:
        _run_extra_command(args[0], args[1:])
        return
    # Class paths resolve from the current directory, as with `python -m` (the console script
    # would otherwise put only its bin/ directory on sys.path).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "ring_lightning", *args]  # what LightningCLI parses
    try:
        RingLightningCLI()
    except ConfigError as e:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"ring_lightning: config error: {e} (see --help; {DEBUG_ENV}=1 shows the traceback)\n")
        sys.exit(2)
    except _run_errors() as e:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"ring_lightning: error: {type(e).__name__}: {e} ({DEBUG_ENV}=1 shows the traceback)\n")
        sys.exit(1)
    finally:
        sys.argv = saved_argv
