"""The `python -m ring_lightning` / `ring-lightning` command line.

    python -m ring_lightning fit -c configs/quickstart/sft.yaml [--trainer.max_steps=10 ...]
    python -m ring_lightning {fit,validate,test,predict} ...   LightningCLI subcommands
    python -m ring_lightning prepare ...                        RL prompt-set preparation (prepare/pipeline.py)
    python -m ring_lightning pipeline ...                       the whole recipe, stage after stage (pipeline.py)

Short class names work for the project's classes (`--model SFTModule`, `--data RolloutDataModule`;
`--model.help SFTModule` lists one's options); options are never abbreviated (`--trainer.max_step`
is an error that names `--trainer.max_steps`). Every error is one line on stderr (config errors exit
2, run errors 1); RING_LIGHTNING_DEBUG=1 shows the traceback instead. Choices: docs/design.md#cli.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path

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

from ring_lightning.cli_messages import (import_class, concise_error, did_you_mean, one_line, option_keys,
                                         quiet_known_noise)

DEBUG_ENV = "RING_LIGHTNING_DEBUG"
EXTRA_COMMANDS = {
    "prepare": ("ring_lightning.prepare.pipeline", "clean, deduplicate, decontaminate and grade RL prompt sets"),
    "pipeline": ("ring_lightning.pipeline", "run the Ring-lite recipe end to end (SFT, then RL stages)"),
    "study": ("ring_lightning.study", "Ring-lite's SFT-length and C3PO-vs-GRPO findings at tiny scale (study.md)"),
}
# Imported before parsing, so `fit --help` lists them ("known subclasses") and short names resolve.
PROJECT_CLASSES = {
    "model": {"SFTModule": ("ring_lightning.modules.sft", "long-CoT SFT"),
              "RLModule": ("ring_lightning.modules.rl", "RL with an injected objective: C3PO, GRPO")},
    "data": {"SFTDataModule": ("ring_lightning.data.sft.datamodule", "chat / text rows, packed"),
             "RolloutDataModule": ("ring_lightning.data.rollouts.datamodule", "prompt sources -> rollouts")},
}
CLASS_GUIDE = "Project classes (short names work, e.g. `--model SFTModule`; `--model.help SFTModule` lists its " + (
    "options): " + "; ".join(f"--{key}: " + ", ".join(f"{n} ({h})" for n, (_, h) in classes.items())
                            for key, classes in PROJECT_CLASSES.items()) + ".")
DESCRIPTION = "ring_lightning: the Ring-lite recipe (long-CoT SFT + C3PO RL) on PyTorch Lightning.\n\n" + (
    "Other commands (give them first, e.g. `python -m ring_lightning prepare --help`): "
    + "; ".join(f"{name}: {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()) + ". " + CLASS_GUIDE)

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


class ResumeError(RuntimeError):
    """`--ckpt_path last` found no last checkpoint (Lightning would silently start from step 0)."""


def _checkpoint_dirs(trainer: Trainer) -> list[Path]:
    """Where the run's ModelCheckpoints write: their dirpath, else every version of the first logger's
    directory (a new run gets a new version_N, so a resume must look at the earlier ones), else
    default_root_dir/checkpoints (Lightning's rule, ModelCheckpoint.__resolve_ckpt_dir)."""
    dirs: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.dirpath is not None:
            dirs.append(Path(cb.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            base = Path(logger.save_dir or trainer.default_root_dir)
            base = base / str(logger.name) if logger.name else base
            dirs.extend(sorted(base.glob("*/checkpoints")) or [base / "version_*" / "checkpoints"])
        else:
            dirs.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(dirs))


def _resume_checked(trainer: Trainer, run: Any, kwargs: dict[str, Any]) -> None:
    """Run a Trainer entry point; `ckpt_path="last"` means the newest last*.ckpt of this run's checkpoint
    directories, and none is a `ResumeError` before anything is built (Lightning would start from step 0)."""
    if kwargs.get("ckpt_path") == "last":
        dirs = _checkpoint_dirs(trainer)
        found = [p for d in dirs if d.is_dir() for p in d.glob("last*.ckpt") if re.fullmatch(r"last(-\d+)?", p.stem)]
        if not found:
            others = sorted(str(p) for d in dirs if d.is_dir() for p in d.glob("*.ckpt"))
            where = ", ".join(map(str, dirs)) or "the run (no ModelCheckpoint)"
            raise ResumeError(
                f"--ckpt_path last: no last checkpoint in {where} "
                f"({'only other checkpoints: ' + ', '.join(others[:5]) if others else 'no checkpoint there yet'}). "
                "Pass a checkpoint file as --ckpt_path, or drop --ckpt_path to start from step 0")
        kwargs = {**kwargs, "ckpt_path": str(max(found, key=lambda p: p.stat().st_mtime))}
    run(**kwargs)


class RingLightningCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, omegaconf interpolation, concise errors.

    Args:
        args: command-line arguments (None = sys.argv[1:]).
        run: run the subcommand (False = only parse and instantiate).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        quiet_known_noise()
        for classes in PROJECT_CLASSES.values():
            for module_name, _ in classes.values():
                importlib.import_module(module_name)
        subcommands = {name: {"description": f"{_first_line(getattr(Trainer, name))} {CLASS_GUIDE}"}
                       for name in self.subcommands()}
        super().__init__(
            LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False, "description": DESCRIPTION,
                           "prog": "python -m ring_lightning", "allow_abbrev": False, **subcommands},
            trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False, args=args, run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(f"--{ATOMIC_KEY}", type=bool, default=True,
                            help="crash-safe checkpoints (ring_lightning/checkpointing.py): atomic, fsync'ed "
                                 "checkpoint files, distributed checkpoint directories and last.ckpt links")

    def before_instantiate_classes(self) -> None:
        self._save_last_by_default()
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

    def _save_last_by_default(self) -> None:
        """Every configured ModelCheckpoint writes last.ckpt unless the config sets save_last itself."""
        config = self.config.get(str(self.subcommand), self.config)
        callbacks = (config.get("trainer") or {}).get("callbacks")
        for item in callbacks if isinstance(callbacks, list) else [callbacks]:
            cls = _class_of(item)
            init_args = getattr(item, "init_args", None)
            if cls is not None and issubclass(cls, ModelCheckpoint) and init_args is not None \
                    and init_args.get("save_last") is None:
                init_args["save_last"] = True

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if "callbacks" not in kwargs:
            callbacks = trainer_cfg.get("callbacks")
            callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
            added = []
            if trainer_cfg.get("enable_progress_bar") is not False and not any(
                    isinstance(c, ProgressBar) for c in callbacks):  # ours: "Epoch 0", not "Epoch 0/-2"
                from ring_lightning.callbacks.progress import default_progress_bar

                added.append(default_progress_bar())
            if trainer_cfg.get("enable_checkpointing") is not False and not any(
                    isinstance(c, ModelCheckpoint) for c in callbacks):  # Lightning's default, plus last.ckpt
                atomic = self._get(self.config, ATOMIC_KEY, True)
                cls = import_class(ATOMIC_SUBSTITUTES[ModelCheckpoint]) if atomic else ModelCheckpoint
                added.append(cls(save_last=True))
            if added:
                kwargs["callbacks"] = [*callbacks, *added]
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
            message = concise_error(str(e))
            raise ConfigError(message + did_you_mean(message, option_keys(parser))) from e

    def fit(self, **kwargs: Any) -> None:
        _resume_checked(self.trainer, self.trainer.fit, kwargs)

    def validate(self, **kwargs: Any) -> None:
        _resume_checked(self.trainer, self.trainer.validate, kwargs)

    def test(self, **kwargs: Any) -> None:
        _resume_checked(self.trainer, self.trainer.test, kwargs)

    def predict(self, **kwargs: Any) -> None:
        _resume_checked(self.trainer, self.trainer.predict, kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, ImportError, KeyError) as e:
            message = str(e)
            target = re.search(r"class_path='([^']+)'", message)
            where = f" {target.group(1)}" if target else " the configured classes"
            raise ConfigError(f"could not instantiate{where}: {concise_error(message)}") from e


def _first_line(fn: Any) -> str:
    return next((line.strip() for line in (fn.__doc__ or "").splitlines() if line.strip()), "")


def _class_of(item: Any) -> type | None:
    class_path = getattr(item, "class_path", None) if item is not None and not isinstance(item, str) else None
    return import_class(class_path) if class_path else None


def _substitute(item: Any) -> None:
    """Point a parsed `class_path` of a Lightning class in ATOMIC_SUBSTITUTES at its crash-safe subclass."""
    cls = _class_of(item)
    if cls in ATOMIC_SUBSTITUTES:
        item.class_path = ATOMIC_SUBSTITUTES[cls]


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
    """Entry point of `python -m ring_lightning` and the `ring-lightning` script.

    Every error is printed as one line on stderr: `ring_lightning: config error: ...` (exit 2) for a
    bad config or command line, `ring_lightning: error: <Type>: ...` (exit 1) for anything that fails
    after parsing. RING_LIGHTNING_DEBUG=1 raises instead (the full traceback).
    """
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
    except Exception as e:  # noqa: BLE001 - every run error is reported, in one line
        if os.environ.get(DEBUG_ENV):
            raise
        line = one_line(e, (ConfigError, ResumeError, *_run_errors()))
        sys.stderr.write(f"ring_lightning: error: {line} ({DEBUG_ENV}=1 shows the traceback)\n")
        sys.exit(1)
    finally:
        sys.argv = saved_argv
