"""The real entry point, `python -m ring_lightning`, in subprocesses run from the repository root.

Each launch imports torch + lightning (seconds), so launches that only parse run concurrently and
assertions are grouped per launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ring_lightning import cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart" / "sft.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("RING_LIGHTNING_DEBUG", None)


def launch(*commands: list[str], timeout: float = 600, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Run `python -m ring_lightning ARGS` for each ARGS concurrently (cwd = repo root)."""
    procs = [subprocess.Popen([sys.executable, "-m", "ring_lightning", *args], cwd=REPO, env={**ENV, **(env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def test_help_lists_subcommands_options_and_the_project_classes_by_short_name():
    top, fit, model, data, short = launch(["--help"], ["fit", "--help"], ["fit", "--model.help", "SFTModule"],
                                          ["fit", "--data.help", "RolloutDataModule"],
                                          ["fit", "--model", "SFTModule", "--data", "SFTDataModule",
                                           "--data.train=[synthetic:addition]", "--print_config"])
    assert top.returncode == 0, top.stderr
    for word in ("fit", "validate", "test", "predict", "prepare", "pipeline", "SFTModule", "RolloutDataModule"):
        assert word in top.stdout
    assert fit.returncode == 0, fit.stderr
    for option in ("--trainer.max_steps", "--trainer.callbacks", "--model", "--data", "--print_config",
                   "ring_lightning.modules.sft.SFTModule", "ring_lightning.modules.rl.RLModule",
                   "ring_lightning.data.sft.SFTDataModule", "ring_lightning.data.rollouts.RolloutDataModule"):
        assert option in fit.stdout, option
    assert "short names work" in " ".join(fit.stdout.split())
    assert model.returncode == 0, model.stderr
    # the SFTModule constructor is the schema: its Args docstring becomes the help
    assert "--model.lr" in model.stdout and "peak learning rate" in model.stdout
    assert "--model.mixed_precision" in model.stdout
    assert data.returncode == 0 and "--data.sources" in data.stdout, data.stderr
    assert short.returncode == 0, short.stderr
    config = yaml.safe_load(short.stdout)
    assert config["model"]["class_path"] == "ring_lightning.modules.sft.SFTModule"
    assert config["data"]["class_path"] == "ring_lightning.data.sft.SFTDataModule"


def test_config_files_compose_and_dotted_overrides_win(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(QUICKSTART.read_text())
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({
        "model": {"init_args": {"lr": 0.5, "weight_decay": 0.05}},
        "data": {"init_args": {"micro_batch_tokens": 512, "tokenizer": None}},
        "trainer": {"max_steps": 99},
    }))
    (result,) = launch(["fit", "-c", str(base), "-c", str(override), "--model.init_args.lr=0.125",
                        "--trainer.max_steps=7", "--print_config"])
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"] == "ring_lightning.modules.sft.SFTModule"
    assert config["model"]["init_args"]["lr"] == 0.125  # command line beats both files
    assert config["model"]["init_args"]["weight_decay"] == 0.05  # second file beats first
    assert config["model"]["init_args"]["model"] == "bailing-quickstart"  # first file kept where not overridden
    assert config["data"]["init_args"]["micro_batch_tokens"] == 512
    assert config["trainer"]["max_steps"] == 7
    assert config["trainer"]["accelerator"] == "cpu"


def test_config_errors_print_one_line_naming_the_key_or_file(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data:\n  init_args:\n    micro_batch_tokenz: 3\n")
    runs = launch(
        ["fit", "-c", str(QUICKSTART), "--model.init_args.learning_rate=0.1"],
        ["fit", "-c", str(QUICKSTART), "--trainer.max_steps=many"],
        ["fit", "-c", str(tmp_path / "missing.yaml")],
        ["fit", "-c", str(QUICKSTART), "-c", str(bad_yaml)],
        ["fit", "-c", str(QUICKSTART), "--model.init_args.model=no-such-preset"],
        ["fit", "-c", str(QUICKSTART), "--trainer.max_step=2"],  # no prefix abbreviations
        ["fit", "-c", str(QUICKSTART), "--model.init_args.lrr=0.1"],
    )
    expected = [
        "model.init_args.learning_rate: unknown key",
        "trainer.max_steps: Expected a <class 'int'>. Got value: many",
        f"config file not found: {tmp_path / 'missing.yaml'}",
        "data.init_args.micro_batch_tokenz: unknown key (not an argument of ring_lightning.data.sft.SFTDataModule); "
        "did you mean data.init_args.micro_batch_tokens?",
        "model 'no-such-preset' is neither a preset",
        "unknown key(s) on the command line: --trainer.max_step=2; did you mean --trainer.max_steps?",
        "model.init_args.lrr: unknown key (not an argument of ring_lightning.modules.sft.SFTModule); "
        "did you mean model.init_args.lr?",
    ]
    for run, needle in zip(runs, expected):
        assert run.returncode == 2, (run.args, run.stderr[-2000:])
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ring_lightning: config error:")]
        assert len(errors) == 1 and needle in errors[0], (run.args, run.stderr[-2000:])
        assert "Traceback" not in run.stderr and "usage:" not in run.stderr


def test_fit_runs_with_overrides_and_a_repo_root_callback(tmp_path):
    summary = tmp_path / "throughput.json"
    (run,) = launch([
        "fit", "-c", str(QUICKSTART),
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--model.init_args.lr=0.01",
        "--data.init_args.micro_batch_tokens=256", "--data.init_args.synthetic_train_rows=64",
        "--data.init_args.synthetic_val_rows=4", "--data.init_args.shuffle_buffer=0",
        "--trainer.callbacks+=callbacks.throughput.ThroughputLogger",
        "--trainer.callbacks.init_args.output", str(summary),
    ])  # the quickstart config's logs follow --trainer.default_root_dir
    assert run.returncode == 0, run.stderr[-4000:]
    # the repo-root plug-in ran: one summary line per training micro-batch
    stats = json.loads(summary.read_text())
    assert stats["batches"] == 2 and stats["tokens"] > 0 and stats["tokens_per_s"] > 0
    (config_file,) = tmp_path.rglob("config.yaml")  # beside the first logger's files, under default_root_dir
    saved = yaml.safe_load(config_file.read_text())
    assert saved["trainer"]["max_steps"] == 2
    assert saved["model"]["init_args"]["lr"] == 0.01 and saved["data"]["init_args"]["micro_batch_tokens"] == 256
    assert yaml.safe_load((config_file.parent / "hparams.yaml").read_text())["lr"] == 0.01  # the module got it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = tmp_path.rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert [e.value for e in events.Scalars("train/lr")][0] == pytest.approx(0.01)
    assert "throughput/tokens_per_s" in scalars and "val/loss" in scalars


def test_extra_commands_dispatch_before_lightning(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("fake_prepare")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fake_prepare", fake)
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "prepare", ("fake_prepare", "help"))
    cli.main(["prepare", "--input", "x.jsonl"])
    assert seen["argv"] == ["--input", "x.jsonl"]

    fake.main = lambda argv: 3
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare"])
    assert exit_info.value.code == 3

    monkeypatch.setitem(cli.EXTRA_COMMANDS, "pipeline", ("ring_lightning.no_such_module", "help"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pipeline", "--help"])
    assert exit_info.value.code == 2
    assert "the 'pipeline' command is not available" in capsys.readouterr().err


@pytest.mark.parametrize("message, expected", [
    ('Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
     "    - Problem with given class_path 'a.B':\n        Parser key \"lr\":\n"
     "          Expected a <class 'float'>. Got value: x\n    - Expected a <class 'NoneType'>",
     "model.init_args.lr: Expected a <class 'float'>. Got value: x"),
    ("Group 'trainer' does not accept option 'max_stepz'", "trainer.max_stepz: unknown key"),
    ('Parser key "config": File does not exist: \'/x.yaml\'', "config file not found: /x.yaml"),
])
def test_concise_error_extracts_key_and_problem(message, expected):
    assert cli.concise_error(message) == expected


def test_fit_writes_checkpoints_atomically_by_default(monkeypatch):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ring_lightning.checkpointing import AtomicCheckpointIO, AtomicModelCheckpoint, AtomicModelParallelStrategy

    monkeypatch.chdir(REPO)
    base = ["-c", str(QUICKSTART), "--trainer.logger=false"]

    def trainer(*extra: str):
        return cli.RingLightningCLI(args=[*base, *extra], run=False).trainer

    default = trainer("--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
                      "--trainer.strategy.save_distributed_checkpoint=true")
    assert type(default.strategy) is AtomicModelParallelStrategy
    assert type(default.strategy.checkpoint_io) is AtomicCheckpointIO
    assert [type(c) for c in default.callbacks if isinstance(c, ModelCheckpoint)] == [AtomicModelCheckpoint]
    # a CheckpointIO of the user's own is kept (the callback stays the crash-safe one)
    own = trainer("--trainer.plugins=lightning.fabric.plugins.io.TorchCheckpointIO")
    assert type(own.strategy.checkpoint_io) is TorchCheckpointIO
    assert [type(c) for c in own.callbacks if isinstance(c, ModelCheckpoint)] == [AtomicModelCheckpoint]
    # opting out gives Lightning's own classes
    plain = trainer("--atomic_checkpoints=false")
    assert type(plain.strategy.checkpoint_io) is TorchCheckpointIO
    assert [type(c) for c in plain.callbacks if isinstance(c, ModelCheckpoint)] == [ModelCheckpoint]


def test_progress_bar_reads_epoch_without_the_minus_two_of_step_limited_runs(monkeypatch):
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

    from ring_lightning.callbacks.progress import StepProgressBar

    monkeypatch.chdir(REPO)
    base = ["-c", str(QUICKSTART), "--trainer.logger=false"]

    def bars(*extra: str):
        trainer = cli.RingLightningCLI(args=[*base, *extra], run=False).trainer
        return trainer, [c for c in trainer.callbacks if isinstance(c, ProgressBar)]

    trainer, found = bars()  # sft.yaml: max_steps only
    assert [type(c) for c in found] == [StepProgressBar]
    trainer.fit_loop.max_epochs = -1  # what `fit` sets when only max_steps limits the run
    found[0]._trainer = trainer  # set by `fit` (setup)
    assert found[0]._get_train_description(0).strip() == "Epoch 0"
    lightning_bar = RichProgressBar()
    lightning_bar._trainer = trainer
    assert lightning_bar._get_train_description(0).strip() == "Epoch 0/-2"  # what ours avoids
    trainer, found = bars("--trainer.max_epochs=3")
    found[0]._trainer = trainer
    assert found[0]._get_train_description(1).strip() == "Epoch 1/2"  # an epoch limit is shown as Lightning does
    _, found = bars("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar")
    assert [type(c) for c in found] == [TQDMProgressBar]  # the user's own bar is kept, none added
    trainer, found = bars("--trainer.enable_progress_bar=false")
    assert found == [] and trainer.progress_bar_callback is None


def test_save_last_by_default_and_ckpt_path_last_resumes_or_fails_in_one_line(tmp_path):
    """A config whose ModelCheckpoint does not set save_last still writes last.ckpt; `--ckpt_path last`
    resumes from it although the new run logs into a new version_N; with no checkpoint it is one error line."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update({
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"every_n_train_steps": 1, "save_top_k": 0}}],
        "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv"}}],
        "limit_val_batches": 0, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run")})
    config["data"]["init_args"].update({"micro_batch_tokens": 256, "synthetic_train_rows": 64, "shuffle_buffer": 0})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    first, fresh = launch(["fit", "-c", str(path), "--trainer.max_steps=2"],
                          ["fit", "-c", str(path), "--trainer.default_root_dir", str(tmp_path / "fresh"),
                           "--trainer.logger=false", "--ckpt_path", "last"])
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert fresh.returncode == 1, fresh.stderr[-3000:]
    errors = [line for line in fresh.stderr.splitlines() if line.startswith("ring_lightning: error:")]
    assert errors == [f"ring_lightning: error: ResumeError: --ckpt_path last: no last checkpoint in {tmp_path}/fresh/"
                      "checkpoints (no checkpoint there yet). Pass a checkpoint file as --ckpt_path, or drop "
                      "--ckpt_path to start from step 0 (RING_LIGHTNING_DEBUG=1 shows the traceback)"]
    assert "Traceback" not in fresh.stderr
    (resumed,) = launch(["fit", "-c", str(path), "--trainer.max_steps=3", "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in resumed.stderr
    import csv

    with (tmp_path / "run" / "csv" / "version_1" / "metrics.csv").open() as f:
        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})
    assert steps == [2]  # only the third optimizer step ran: steps 0 and 1 came from the checkpoint
