"""Crash-safe checkpoints (ring_lightning/checkpointing.py): a process killed with SIGKILL while it saves
leaves the previous checkpoint loadable with its old values and nothing partial under the final name;
keep-last-N rotation, last.ckpt (copy and link) and distributed checkpoint directories stay loadable."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from ring_lightning import checkpointing
from ring_lightning.checkpointing import (AtomicCheckpointIO, AtomicModelCheckpoint, AtomicModelParallelStrategy,
                                          publish)

REPO = Path(__file__).resolve().parents[2]

class KillWhilePickled:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def save_then_die(path: Path, mode: str, big: dict) -> None:
    """In a forked child: save checkpoint 1 (w = 1), then die with SIGKILL while saving checkpoint 2
    (w = 2, 256 MB with `big`) onto the same path:
      pickle: while torch.save pickles the dict (the temporary file holds a partial zip);
      fsync:  after every byte is written, before the rename (the temporary file is complete);
      parent: the parent kills it once the temporary file has started to grow (mid-write)."""
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.full((4,), 1.0)}, path)
    second = {"step": 2, **big}
    if mode == "pickle":
        second["zz"] = KillWhilePickled()
    elif mode == "fsync":
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    io.save_checkpoint(second, path)
    os._exit(0)


def leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if checkpointing.TMP_MARK in p.name)


def temp_bytes(directory: Path) -> int:
    """Bytes in `directory`'s temporary files (0 before the directory or a temporary file exists)."""
    total = 0
    for p in leftovers(directory) if directory.is_dir() else []:
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # renamed meanwhile
            pass
    return total


@pytest.mark.parametrize("mode", ["pickle", "fsync", "parent"])
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, mode):
    path = tmp_path / "ckpts" / "model.ckpt"
    # tensors built here, before the fork (the child then only serialises; no thread pools after fork)
    big = {"w": torch.full((4,), 2.0), "more": [torch.full((2**20,), float(i)) for i in range(64)]}
    child = multiprocessing.get_context("fork").Process(target=save_then_die, args=(path, mode, big))
    child.start()
    if mode == "parent":
        deadline = time.monotonic() + 60
        while not (path.exists() and temp_bytes(path.parent) > 0):  # checkpoint 1 published, 2 begun
            assert time.monotonic() < deadline and child.exitcode is None, "the second save never started"
            time.sleep(0.0005)
        os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.full((4,), 1.0))
    assert [p.name for p in path.parent.iterdir() if checkpointing.TMP_MARK not in p.name] == ["model.ckpt"]
    (partial,) = leftovers(path.parent)  # the interrupted save's temporary file, never a .ckpt name
    assert partial.name.startswith(".model.ckpt.tmp-") and partial.suffix != ".ckpt"
    if mode == "fsync":  # fully written but not published: complete, yet not under the final name
        assert torch.load(partial, weights_only=True)["step"] == 2
    if mode == "parent":  # killed mid-write: the temporary file holds part of the 256 MB
        assert 0 < partial.stat().st_size < 256 * 2**20
    # the next save of that name clears the leftover and publishes the new checkpoint
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert leftovers(path.parent) == [] and torch.load(path, weights_only=True) == {"step": 3}


def test_a_failed_save_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "a.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"v": 2, "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1} and leftovers(tmp_path) == []
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"v": 3}, path, storage_options={"x": 1})


def test_publish_replaces_files_links_and_directories_in_one_step(tmp_path, monkeypatch):
    final = tmp_path / "last.ckpt"
    for exchange_supported in (True, False):
        if not exchange_supported:  # file systems without renameat2(RENAME_EXCHANGE): two renames
            monkeypatch.setattr(checkpointing, "_exchange", lambda a, b: False)
        for content in ("old", "new"):
            tmp = tmp_path / f".last.ckpt.tmp-{content}"
            tmp.mkdir()
            (tmp / "meta.pt").write_text(content)
            publish(tmp, final)
            assert (final / "meta.pt").read_text() == content
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
        file_tmp = tmp_path / ".last.ckpt.tmp-file"
        file_tmp.write_text("file")
        publish(file_tmp, final)  # a file over a directory
        assert final.read_text() == "file"
        final.unlink()


class Boring(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()


def boring_fit(tmp_path: Path, callbacks: list, max_steps: int, **kwargs) -> L.Trainer:
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=max_steps, logger=False,
                        callbacks=callbacks, plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, **kwargs)
    trainer.fit(Boring())
    return trainer


def test_keep_last_n_by_steps_and_by_wall_time_as_configured_for_ring_lite(tmp_path):
    """The two ModelCheckpoints of configs/ring_lite_2507/sft.yaml (as the CLI runs them), with the step
    interval scaled down to 2 and the time interval to 0 (a save at every step)."""
    config = yaml.safe_load((REPO / "configs" / "ring_lite_2507" / "sft.yaml").read_text())
    by_steps, by_time = [c["init_args"] for c in config["trainer"]["callbacks"]
                         if c["class_path"] == "lightning.pytorch.callbacks.ModelCheckpoint"]
    assert (by_steps["save_top_k"], by_steps["monitor"], by_steps["mode"]) == (3, "step", "max")
    assert by_time["train_time_interval"] == "0:30:00" and by_time["save_top_k"] == 1
    by_steps.update(dirpath=tmp_path / "steps", every_n_train_steps=2)
    by_time.update(dirpath=tmp_path / "timed", train_time_interval=timedelta(seconds=0))
    boring_fit(tmp_path, [AtomicModelCheckpoint(**by_steps), AtomicModelCheckpoint(**by_time)], max_steps=9)
    assert sorted(os.listdir(tmp_path / "steps")) == ["last.ckpt", "step-step=000004.ckpt", "step-step=000006.ckpt",
                                                      "step-step=000008.ckpt"]
    assert sorted(os.listdir(tmp_path / "timed")) == ["last.ckpt", "time-step=000009.ckpt"]
    assert os.readlink(tmp_path / "steps" / "last.ckpt") == "step-step=000008.ckpt"
    assert torch.load(tmp_path / "timed" / "last.ckpt", weights_only=False)["global_step"] == 9


@pytest.mark.parametrize("cls", [ModelCheckpoint, AtomicModelCheckpoint])
def test_last_link_survives_a_crash_between_rotation_and_relink(tmp_path, cls, monkeypatch):
    """save_last="link" with keep-last-1: Lightning deletes the old step checkpoint (the link's target)
    before it re-points last.ckpt; a crash in between leaves Lightning's last.ckpt dangling."""
    callback = cls(dirpath=tmp_path / "ckpt", filename="s-{step}", every_n_train_steps=1, save_top_k=1,
                   monitor="step", mode="max", save_last="link")
    real_link = cls._link_checkpoint

    def crash_at_step_3(trainer, filepath, linkpath):
        if trainer.global_step == 3:
            raise KeyboardInterrupt("simulated crash before re-linking last.ckpt")
        real_link(trainer, filepath, linkpath)

    monkeypatch.setattr(callback, "_link_checkpoint", crash_at_step_3)
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into a graceful exit
        boring_fit(tmp_path, [callback], max_steps=5)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_symlink()
    if cls is ModelCheckpoint:
        assert not last.exists()  # dangling: `--ckpt_path last` would silently start from scratch
        return
    assert os.readlink(last) == "s-step=2.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    # and a normal run rotates: only the newest step checkpoint remains, last points to it
    callback = AtomicModelCheckpoint(dirpath=tmp_path / "ok", filename="s-{step}", every_n_train_steps=1,
                                     save_top_k=1, monitor="step", mode="max", save_last="link")
    boring_fit(tmp_path, [callback], max_steps=4)
    assert sorted(os.listdir(tmp_path / "ok")) == ["last.ckpt", "s-step=4.ckpt"]
    assert os.readlink(tmp_path / "ok" / "last.ckpt") == "s-step=4.ckpt"


class ShardedBoring(Boring):
    def configure_model(self) -> None:  # ModelParallelStrategy requires it; nothing to shard here
        pass


def test_distributed_checkpoint_directories_are_published_whole(tmp_path):
    callback = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", filename="s-{step}", every_n_train_steps=2,
                                     save_top_k=1, monitor="step", mode="max", save_last=True)
    strategy = AtomicModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1,
                                           save_distributed_checkpoint=True, process_group_backend="gloo")
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, strategy=strategy, max_steps=4,
                        logger=False, callbacks=[callback], plugins=[AtomicCheckpointIO()],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    model = ShardedBoring()
    trainer.fit(model)
    ckpt = tmp_path / "ckpt"
    assert sorted(os.listdir(ckpt)) == ["last.ckpt", "s-step=4.ckpt"]
    assert (ckpt / "last.ckpt").is_dir() and (ckpt / "last.ckpt" / "meta.pt").is_file()
    from ring_lightning.callbacks.export import load_checkpoint_dict

    state = load_checkpoint_dict(ckpt / "last.ckpt")
    assert state["global_step"] == 4
    assert torch.equal(state["state_dict"]["layer.weight"], model.layer.weight.detach())
