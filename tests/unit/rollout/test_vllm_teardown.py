"""Closing an embedded vLLM engine keeps the trainer's default process group (vLLM 0.32's in-process
shutdown destroys any default group, also one it only joined)."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ring_lightning.models.loading import load_policy  # noqa: E402
from ring_lightning.rollout.engine import SamplingConfig  # noqa: E402
from ring_lightning.rollout.vllm_engine import VLLMEngine  # noqa: E402
from ring_lightning.rollout.vllm_teardown import default_group_exists, keep_default_process_group  # noqa: E402


def _trainer_group(tmp_path) -> bool:
    """A one-rank gloo default group, as a DDP / FSDP2 trainer would have; True if created here."""
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    return True


def test_keep_default_process_group_only_spares_the_default_group(tmp_path):
    created = _trainer_group(tmp_path)
    try:
        original = dist.destroy_process_group
        with keep_default_process_group(True):
            sub = dist.new_group([0])
            dist.destroy_process_group(sub)  # a subgroup (vLLM's own) is destroyed as usual
            dist.destroy_process_group()  # the default group is kept
            assert default_group_exists()
        assert dist.destroy_process_group is original
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]
        with keep_default_process_group(False):
            dist.destroy_process_group()
        assert not default_group_exists()
        created = False
    finally:
        if created:
            dist.destroy_process_group()


def test_engine_close_keeps_a_process_group_that_predates_it(tmp_path):
    created = _trainer_group(tmp_path)
    try:
        model, tok = load_policy("qwen3-moe-tiny", head_dim=32, output_router_logits=False)
        engine = VLLMEngine(model, tok)
        try:
            out = engine.generate([[5, 6, 7]], 2, SamplingConfig(max_tokens=4, seed=0))
            assert [len(c.token_ids) for c in out[0]] == [4, 4]
        finally:
            engine.close()
        assert default_group_exists()  # before the fix: destroyed by vLLM's shutdown
        t = torch.full((3,), 2.0)
        dist.all_reduce(t)  # the trainer's next collective still works
        assert t.tolist() == [2.0, 2.0, 2.0]
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
