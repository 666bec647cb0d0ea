"""Shutting an embedded vLLM engine down without taking the trainer's process group with it.

Not a Ring-lite topic (arXiv 2506.14731 does not describe its engine mechanics); this is about
running vLLM inside the training process (see `vllm_engine.py`). vLLM 0.32's in-process engine
shutdown (`EngineCore.shutdown` -> `cleanup_dist_env_and_memory` -> `destroy_distributed_environment`)
calls `torch.distributed.destroy_process_group()` whenever a default process group exists — also
when that group is the trainer's (DDP / FSDP2 under torchrun), which vLLM only joined. Measured here:
a gloo group initialised before `VLLMEngine(...)` is gone after `close()`, so every later collective of
the trainer (Lightning's teardown, a `validate` / `test` after `fit`, the next rollout's
all-reduces) fails with "Default process group has not been initialized". When the default group
predates the engine, `keep_default_process_group` skips destroying it (vLLM's own subgroups are still
destroyed). A group vLLM created itself (a single-process run) is vLLM's to destroy, as before.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["default_group_exists", "keep_default_process_group", "reset_vllm_parallel_state"]
log = logging.getLogger(__name__)


def default_group_exists() -> bool:
    """Whether torch's default process group is initialised (call before the engine starts)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextmanager
def keep_default_process_group(keep: bool) -> Iterator[None]:
    """While the block runs, `torch.distributed.destroy_process_group()` of the default group is a
    no-op if `keep` (explicit non-default groups are destroyed as usual)."""
    import torch.distributed as dist

    if not keep or not dist.is_available():
        yield
        return
    original = dist.destroy_process_group

    def destroy(group=None):
        if group is None or group is dist.group.WORLD:
            log.debug("VLLMEngine shutdown: keeping the trainer's default process group")
            return
        original(group)

    dist.destroy_process_group = destroy
    try:
        yield
    finally:
        dist.destroy_process_group = original


def reset_vllm_parallel_state(keep_default_group: bool) -> None:
    """After a failed `LLM(...)`, vLLM's process-wide parallel groups stay half-built (a dense model's
    failed start leaves no expert-parallel group, and the next MoE engine's start then fails);
    a normal `close()` cleans them up, a failed start does not."""
    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is None or getattr(state, "_WORLD", None) is None:  # vLLM failed before building its groups
        return
    try:
        with keep_default_process_group(keep_default_group):
            state.cleanup_dist_env_and_memory()  # what vLLM's own engine shutdown runs
    except Exception as e:  # noqa: BLE001 - the start error being raised matters more
        log.warning("VLLMEngine: cleaning up vLLM's parallel state after a failed start failed: %s", e)
