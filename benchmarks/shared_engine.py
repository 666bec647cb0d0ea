"""SharedEngine: one embedded VLLMEngine reused by several `trainer.fit` runs in one benchmark process.

The RL benchmarks alternate runs (C3PO, GRPO, TRL, C3PO, ...) so that all of them see the same
machine load; starting a vLLM engine per run would cost ~16 s or more each. Put this class in the
RL config's engine `class_path` (its init_args are exactly `VLLMEngine`'s, so the YAML's engine
settings carry over): the first construction starts a `VLLMEngine`; later ones with the same engine
settings (arguments, and the dtype "auto" resolves to) reuse it and load the new run's policy weights
into it (so every run starts on-policy) and the run's torch thread count; a run with other settings (e.g.
a bfloat16 engine after a float32 one) closes it and starts its own. `close()` does nothing, and
`SharedEngine.close_shared()` closes the engine at the end of the benchmark.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch

from ring_lightning.rollout.engine import Completion, SamplingConfig
from ring_lightning.rollout.vllm_engine import VLLMEngine


class SharedEngine:
    """A `RolloutEngine` proxy for the process-wide shared `VLLMEngine` (arguments: `VLLMEngine`'s)."""

    _engine: ClassVar[VLLMEngine | None] = None
    _settings: ClassVar[tuple | None] = None  # the running engine's `settings`
    starts: ClassVar[list[tuple[str, float]]] = []  # (engine dtype, seconds) of every start (a caller may reset it)

    @staticmethod
    def engine_dtype(model, engine_kwargs: dict[str, Any]) -> str:
        """The engine's dtype argument, "auto" resolved to an in-memory policy's parameter dtype."""
        dtype = engine_kwargs.get("dtype", "auto")
        if dtype == "auto" and isinstance(model, torch.nn.Module):
            return str(next(p.dtype for p in model.parameters() if p.is_floating_point())).removeprefix("torch.")
        return dtype

    @staticmethod
    def settings(model, engine_kwargs: dict[str, Any]) -> tuple:
        """What a reused engine must match: its arguments, with dtype "auto" resolved (`engine_dtype`)."""
        kw = {**engine_kwargs, "dtype": SharedEngine.engine_dtype(model, engine_kwargs)}
        return tuple(sorted((k, repr(v)) for k, v in kw.items()))

    def __init__(self, model, tokenizer=None, **engine_kwargs: Any) -> None:
        threads = torch.get_num_threads()  # this run's (bench_rl_step.torch_threads)
        dtype = SharedEngine.engine_dtype(model, engine_kwargs)
        settings = SharedEngine.settings(model, {**engine_kwargs, "dtype": dtype})
        if SharedEngine._engine is not None and settings != SharedEngine._settings:
            SharedEngine.close_shared()
        if SharedEngine._engine is None:
            t0 = time.perf_counter()
            SharedEngine._engine = VLLMEngine(model, tokenizer, **engine_kwargs)
            SharedEngine._settings = settings
            SharedEngine.starts.append((dtype, time.perf_counter() - t0))
        elif isinstance(model, torch.nn.Module):  # a new run's policy: the engine must hold its weights
            SharedEngine._engine.update_weights(model.named_parameters())
        else:
            raise TypeError("SharedEngine: a reused engine needs the run's in-memory policy, got "
                            f"{type(model).__name__}")
        self.engine = SharedEngine._engine
        # VLLMEngine restores the torch thread count it was built with around every generate / sync
        # (vLLM's CPU worker disables torch.set_num_threads); a reused engine must restore *this* run's
        # count instead, or a `name@N` system would run at the first run's count.
        if hasattr(self.engine, "_threads"):
            self.engine._threads = threads
        torch._C.set_num_threads(threads)  # the weight load above restored the previous run's count (vLLM may
        # have replaced torch.set_num_threads by a no-op)

    def __getattr__(self, name: str):  # last_sync, sleep_enabled, sleep_level, ...
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        return self.engine.generate(prompts, n, sampling)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.update_weights(named_tensors)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def close(self) -> None:
        """Nothing: the engine outlives the run (see `close_shared`)."""

    @classmethod
    def close_shared(cls) -> None:
        """Close the shared engine (end of the benchmark)."""
        if cls._engine is not None:
            threads = torch.get_num_threads()  # closing restores the last run's count: keep the caller's
            cls._engine.close()
            cls._engine, cls._settings = None, None
            torch._C.set_num_threads(threads)


SharedEngine.__init__.__signature__ = inspect.signature(VLLMEngine.__init__)  # jsonargparse: VLLMEngine's args
