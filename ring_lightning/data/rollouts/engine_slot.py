"""The RL data module's rollout engine: built lazily from the trainer's policy, its weight version, its
sleep state, and the lock that keeps weight syncs, direct use and (background) generation apart.

Ring-lite (arXiv 2506.14731, §3.2) samples on-policy: the engine must hold the trainer's current
weights whenever it generates. Choices made here (the report describes no engine mechanics):

* Built once per `bind` from the policy by a factory (`(policy, tokenizer) -> RolloutEngine`), or an
  engine instance handed in (then owned by the caller and never closed here).
* `version` is the optimizer step whose weights the engine holds; the LightningModule compares it with
  its own to decide whether a sync is needed (e.g. after a checkpoint load, before evaluating).
* Sleep / wake: the slot remembers that *it* put the engine to sleep and wakes it before any use
  (generation, weight sync, `exclusive`), so no caller has to track it. An engine whose sleep
  discards weights (`sleep_enabled` and `sleep_level >= 2`, as `VLLMEngine`) gets the weights
  again in `keep` (the step was skipped, the weights did not change, but the engine lost them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ring_lightning.rollout.engine import RolloutEngine

EngineFactory = Callable[[Any, Any], RolloutEngine]  # (policy, tokenizer) -> engine


class EngineSlot:
    """One rollout engine with its lock, weight version and sleep state.

    Args:
        factory: an engine factory `(policy, tokenizer) -> RolloutEngine`, or an engine instance.
    """

    def __init__(self, factory: EngineFactory | RolloutEngine | None) -> None:
        self.factory = factory
        self.engine: RolloutEngine | None = None
        self.owned = False
        self.version = 0
        self.asleep = False
        self.lock = threading.Lock()

    def build(self, policy: Any, tokenizer: Any) -> bool:
        """Build the engine unless there is one; True when it was built here from `policy` (so it
        already holds the policy's weights)."""
        if self.engine is not None:
            return False
        if self.factory is None:
            raise ValueError("RolloutDataModule needs an `engine` (class_path of a RolloutEngine, e.g. "
                             "ring_lightning.rollout.vllm_engine.VLLMEngine)")
        self.owned = not isinstance(self.factory, RolloutEngine)
        self.engine = self.factory(policy, tokenizer) if self.owned else self.factory
        return self.owned

    def wake(self) -> None:
        """Wake the engine if the slot put it to sleep (call under `lock`)."""
        if self.asleep:
            self.engine.wake()
            self.asleep = False

    def sleep(self) -> None:
        """Release the engine's accelerator memory (`RolloutEngine.sleep`; takes the lock)."""
        with self.lock:
            self.engine.sleep()
            self.asleep = True

    def sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (waits for an in-flight generation)."""
        with self.lock:
            self.wake()
            self.engine.update_weights(named_tensors)
            self.version = version

    def keep(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bool:
        """The weights did not change: no transfer unless the engine's sleep discarded them (then they
        are loaded again). Returns whether it synced."""
        with self.lock:
            engine = self.engine
            lost = self.asleep and getattr(engine, "sleep_enabled", False) and getattr(engine, "sleep_level", 1) >= 2
            self.wake()
            if lost:
                engine.update_weights(named_tensors)
            return bool(lost)

    @contextmanager
    def exclusive(self) -> Iterator[RolloutEngine]:
        """The awake engine, while no one else uses it."""
        with self.lock:
            self.wake()
            yield self.engine

    def close(self) -> None:
        """Close an engine built here (an instance handed in belongs to the caller) and forget it."""
        if self.engine is not None and self.owned:
            self.engine.close()
        self.engine, self.asleep = None, False
