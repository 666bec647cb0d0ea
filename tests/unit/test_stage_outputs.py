"""stage_outputs.py: the RL export takes the checkpoint of the highest step, exports are made
KV-cache ready, the SFT token count is read from an RL checkpoint."""

from __future__ import annotations

import json
import time

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
