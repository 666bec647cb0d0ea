"""The CLI's guidance, in process: "did you mean", one-line run errors, the harmless-noise filter,
save_last on by default and `--ckpt_path last` resolved before anything is built."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from ring_lightning import cli
from ring_lightning.cli_messages import did_you_mean, one_line, quiet_known_noise

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart" / "sft.yaml"
KEYS = ["trainer.max_steps", "trainer.max_epochs", "trainer.min_steps", "model", "data"]


@pytest.mark.parametrize("message, suffix", [
    ("unknown key(s) on the command line: --trainer.max_step=2", "; did you mean --trainer.max_steps?"),
    ("unknown key(s) on the command line: --trainer.max_epoc 3", "; did you mean --trainer.max_epochs?"),
    ("trainer.max_stepz: unknown key", "; did you mean trainer.max_steps?"),
    ("model.init_args.lrr: unknown key (not an argument of ring_lightning.modules.sft.SFTModule)",
     "; did you mean model.init_args.lr?"),
    ("data.init_args.micro_batch_tokenz: unknown key (not an argument of ring_lightning.data.sft.SFTDataModule)",
     "; did you mean data.init_args.micro_batch_tokens?"),
    ("unknown key(s) on the command line: --zzz=1", ""),  # nothing close: no guess
    ("trainer.max_steps: Expected a <class 'int'>. Got value: many", ""),
])
def test_did_you_mean_names_the_nearest_key(message, suffix):
    assert did_you_mean(message, KEYS) == suffix


def _raise_here():
    raise KeyError("no such column")


def test_one_line_errors_name_type_message_and_where_unexpected_ones_came_from():
    try:
        _raise_here()
    except KeyError as e:
        line = one_line(e)
    assert line.startswith("KeyError: 'no such column' (raised at ") and "test_cli_guidance.py:" in line
    assert one_line(cli.ResumeError("first\n  second"), (cli.ResumeError,)) == "ResumeError: first second"


def test_known_harmless_noise_is_silenced_and_the_rest_is_kept(caplog):
    quiet_known_noise()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()  # re-applies the ignores over "always"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("Total length of `list` across ranks is zero. Please make sure this was your intention.")
        warnings.warn("this RL step trained on 41.2% of the tokens it sampled")
    assert [str(w.message) for w in seen] == ["this RL step trained on 41.2% of the tokens it sampled"]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        rank_zero.info("💡 Tip: For seamless cloud logging ... litlogger")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    caplog.clear()
    triton = logging.getLogger("vllm.triton_utils.importing")
    with caplog.at_level(logging.INFO, logger=triton.name):
        triton.warning("Triton is installed, but doesn't include CPU backend. Disabling Triton.")
        triton.warning("Triton kernels failed to compile")
    assert [r.getMessage() for r in caplog.records] == ["Triton kernels failed to compile"]


def _trainer(tmp_path, monkeypatch, callbacks, *extra):
    monkeypatch.chdir(REPO)
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"]["callbacks"] = callbacks
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return cli.RingLightningCLI(args=["-c", str(path), "--trainer.logger=false",
                                      f"--trainer.default_root_dir={tmp_path}", *extra], run=False).trainer


def test_save_last_is_on_unless_the_config_says_otherwise(tmp_path, monkeypatch):
    mc = "lightning.pytorch.callbacks.ModelCheckpoint"
    trainer = _trainer(tmp_path, monkeypatch, [{"class_path": mc, "init_args": {"every_n_train_steps": 5}},
                                               {"class_path": mc, "init_args": {"save_last": False, "dirpath": "x"}}])
    assert [c.save_last for c in trainer.checkpoint_callbacks] == [True, False]
    trainer = _trainer(tmp_path, monkeypatch, [])  # Lightning's default checkpoint, with last.ckpt
    (default,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert default.save_last is True and type(default).__name__ == "AtomicModelCheckpoint"
    assert not [c for c in _trainer(tmp_path, monkeypatch, [], "--trainer.enable_checkpointing=false").callbacks
                if isinstance(c, ModelCheckpoint)]


def test_ckpt_path_last_finds_an_earlier_logger_version_or_is_an_error(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    calls = []
    trainer = Trainer(logger=CSVLogger(tmp_path, name="csv"), callbacks=[ModelCheckpoint(save_last=True)],
                      default_root_dir=tmp_path)
    with pytest.raises(cli.ResumeError, match=r"^--ckpt_path last: no last checkpoint in .*csv/version_\*/checkpoints "
                                              r"\(no checkpoint there yet\)\. Pass a checkpoint file"):
        cli._resume_checked(trainer, lambda **kw: calls.append(kw), {"ckpt_path": "last"})
    (tmp_path / "csv" / "version_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "csv" / "version_0" / "checkpoints" / "epoch=0-step=4.ckpt").write_text("x")
    with pytest.raises(cli.ResumeError, match=r"only other checkpoints: .*epoch=0-step=4\.ckpt"):
        cli._resume_checked(trainer, lambda **kw: calls.append(kw), {"ckpt_path": "last"})
    last = tmp_path / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    last.write_text("x")
    cli._resume_checked(trainer, lambda **kw: calls.append(kw), {"ckpt_path": "last", "model": None})
    assert calls == [{"ckpt_path": str(last), "model": None}]  # version_1 is this run's: the last is in version_0


def test_a_config_typo_is_reported_before_any_module_is_built(monkeypatch):
    import functools

    from ring_lightning.modules.sft import SFTModule

    @functools.wraps(SFTModule.__init__)  # the same signature: jsonargparse still reads the real arguments
    def built(*args, **kwargs):
        raise AssertionError("SFTModule was built although the command line has a typo")

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(SFTModule, "__init__", built)
    with pytest.raises(cli.ConfigError, match=r"^unknown key\(s\) on the command line: --trainer\.max_stepz=1; "
                                              r"did you mean --trainer\.max_steps\?$"):
        cli.RingLightningCLI(args=["-c", str(QUICKSTART), "--trainer.max_stepz=1"], run=False)
    with pytest.raises(cli.ConfigError, match="SFTModule was built"):  # the patch bites once parsing succeeds
        cli.RingLightningCLI(args=["-c", str(QUICKSTART), "--trainer.max_steps=1"], run=False)


def test_main_prints_any_run_error_as_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def fails():
        raise RuntimeError("selector has no candidate\nsecond line")

    monkeypatch.setattr(cli, "RingLightningCLI", fails)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", "x.yaml"])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ring_lightning: error: RuntimeError: selector has no candidate second line (raised at ")
    assert line.endswith("test_cli_guidance.py:" + str(fails.__code__.co_firstlineno + 1) + ") "
                         "(RING_LIGHTNING_DEBUG=1 shows the traceback)")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="selector has no candidate"):
        cli.main(["fit", "-c", "x.yaml"])
