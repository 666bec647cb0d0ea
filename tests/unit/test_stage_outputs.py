"""stage_outputs.py: the RL export takes the checkpoint of the highest step, exports are made
KV-cache ready, the SFT token count is read from an RL checkpoint."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ring_lightning.stage_outputs import ckpt_sft_tokens, enable_kv_cache, fresh_export, latest_checkpoint


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    end, periodic = tmp_path / "end" / "last.ckpt", tmp_path / "last.ckpt"
    torch.save({"global_step": 20}, periodic)
    assert latest_checkpoint([end, periodic]) == str(periodic)  # no end checkpoint (yet)
    end.parent.mkdir()
    torch.save({"global_step": 25}, end)
    assert latest_checkpoint([end, periodic]) == str(end)
    torch.save({"global_step": 30}, periodic)  # a later attempt trained further
    assert latest_checkpoint([end, periodic]) == str(periodic)
    assert latest_checkpoint([tmp_path / "a.ckpt", tmp_path / "b.ckpt"]) == str(tmp_path / "b.ckpt")


def test_enable_kv_cache_and_sft_tokens(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"use_cache": False, "hidden_size": 8}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"use_cache": False, "eos_token_id": 2}))
    started = time.time()
    enable_kv_cache(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"use_cache": True, "hidden_size": 8}
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"use_cache": True, "eos_token_id": 2}
    assert fresh_export(tmp_path, started) and not fresh_export(tmp_path, started + 60)
    enable_kv_cache(tmp_path / "missing")  # nothing to fix: no error
    torch.save({"c3po": {"sft_tokens": 1234}}, tmp_path / "rl.ckpt")
    torch.save({"c3po": {}}, tmp_path / "none.ckpt")
    assert ckpt_sft_tokens(str(tmp_path / "rl.ckpt")) == 1234 and ckpt_sft_tokens(str(tmp_path / "none.ckpt")) is None


def _mapped_files(address: int) -> list[str]:
    """Files mapped at `address` in this process (/proc/self/maps)."""
    hits = []
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi and len(parts) >= 6:
            hits.append(parts[5])
    return hits


def test_checkpoint_metadata_maps_files_and_reads_fsdp2_directories_meta(tmp_path):
    from ring_lightning.callbacks.token_efficiency import read_sft_tokens
    from ring_lightning.checkpointing import checkpoint_metadata

    f = tmp_path / "big.ckpt"
    torch.save({"global_step": 7, "state_dict": {"w": torch.ones(1 << 20)}, "sft_tokens_seen": 99}, f)
    meta = checkpoint_metadata(f)
    assert meta["global_step"] == 7
    w = meta["state_dict"]["w"]
    assert str(f) in _mapped_files(w.data_ptr())  # weights stay in the file (memory-mapped), not copied
    assert read_sft_tokens(f) == 99
    # an FSDP2 (ModelParallelStrategy) checkpoint is a directory; its non-tensor entries are in meta.pt
    sharded = tmp_path / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    torch.save({"global_step": 12, "c3po": {"sft_tokens": 555}, "sft_tokens_seen": 555}, sharded / "meta.pt")
    (sharded / "__0_0.distcp").write_bytes(b"shard")
    assert checkpoint_metadata(sharded)["global_step"] == 12
    assert latest_checkpoint([sharded, f]) == str(sharded)
    assert ckpt_sft_tokens(str(sharded)) == 555 and read_sft_tokens(sharded) == 555
    step_dir = tmp_path / "step=3"
    step_dir.mkdir()
    torch.save({"sft_tokens_seen": 3}, step_dir / "meta.pt")
    assert read_sft_tokens(step_dir) == 3
    with pytest.raises(FileNotFoundError, match="without meta.pt is not a Lightning distributed checkpoint"):
        checkpoint_metadata(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint_metadata(tmp_path / "nope.ckpt")
