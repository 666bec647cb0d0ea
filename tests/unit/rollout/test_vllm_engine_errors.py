"""VLLMEngine start failures name the engine, the knob and the fix; no engine is started here.

Settings vLLM cannot run are refused before the model loads (float64, a CPU KV cache beyond free
memory, a token budget below max_model_len, vLLM missing); vLLM's own config error (max_model_len above
the model's positions) comes from a real `vllm.LLM(...)` call that fails in its config stage; the
KV-cache-too-small text comes from vLLM's own checker function."""

from __future__ import annotations

import sys

import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.rollout import vllm_errors
from ring_lightning.rollout.engine import EngineError, EngineStartError, SamplingConfig
from ring_lightning.rollout.vllm_engine import VLLMEngine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """qwen3-moe-tiny on disk (max_position_embeddings=2048)."""
    model, tok = load_policy("qwen3-moe-tiny", seed=0)
    path = tmp_path_factory.mktemp("qwen3_moe_tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_float64_is_refused_with_the_fix():
    model, tok = load_policy("qwen3-moe-tiny", seed=0, dtype="float64")
    assert next(model.parameters()).dtype == torch.float64
    with pytest.raises(EngineStartError, match=r"vLLM cannot run dtype 'float64' \(the policy's parameter dtype; "
                                               r"dtype='auto'\); it runs float32, bfloat16 or float16\. Set the "
                                               r"engine's dtype to 'float32' .* or use .*HFEngine"):
        VLLMEngine(model, tok)
    with pytest.raises(EngineStartError, match=r"dtype 'fp64' \(the engine's dtype\)"):
        vllm_errors.check_dtype("fp64", "the engine's dtype")
    assert vllm_errors.check_dtype("bf16", "x") == "bfloat16" and vllm_errors.check_dtype("auto", "x") == "auto"


def test_cpu_kv_cache_beyond_free_memory_is_refused_before_the_model_loads(model_dir, monkeypatch):
    with pytest.raises(EngineStartError, match=r"VLLMEngine on CPU: a KV cache of 100000 GiB "
                                               r"\(cpu_kvcache_space_gib=100000\) does not fit in the [\d.]+ GiB of "
                                               r"free memory\. Lower cpu_kvcache_space_gib"):
        VLLMEngine(str(model_dir), cpu_kvcache_space_gib=100_000)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "100000")
    with pytest.raises(EngineStartError, match=r"\(VLLM_CPU_KVCACHE_SPACE=100000\) does not fit"):
        VLLMEngine(str(model_dir))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "lots")
    with pytest.raises(EngineStartError, match=r"VLLM_CPU_KVCACHE_SPACE='lots' is not a whole number of GiB"):
        VLLMEngine(str(model_dir))


def test_token_budget_knobs_are_checked(model_dir):
    with pytest.raises(EngineStartError, match=r"max_num_batched_tokens=128 < max_model_len=256 with chunked "
                                               r"prefill off .* raise max_num_batched_tokens to at least 256"):
        VLLMEngine(str(model_dir), max_model_len=256, max_num_seqs=32, max_num_batched_tokens=128)
    with pytest.raises(EngineStartError, match=r"max_num_batched_tokens=16 < max_num_seqs=32 .* lower max_num_seqs"):
        VLLMEngine(str(model_dir), max_model_len=256, max_num_seqs=32, max_num_batched_tokens=16,
                   enable_chunked_prefill=True)


def test_missing_vllm_names_the_install_and_the_fallback(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(EngineStartError, match=r"VLLMEngine needs vLLM, which cannot be imported here .*"
                                               r"pip install -e '\.\[cpu\]'.* or use .*HFEngine"):
        VLLMEngine(str(model_dir))


@pytest.mark.vllm
def test_max_model_len_beyond_the_model_is_vllms_error_explained(model_dir):
    with pytest.raises(EngineStartError) as info:
        VLLMEngine(str(model_dir), max_model_len=4096)
    msg = str(info.value)
    assert msg.startswith(f"VLLMEngine could not start on {model_dir}: max_model_len=4096 is longer than the model "
                          "allows (max_position_embeddings=2048 in its config.json). Set the engine's max_model_len "
                          "to at most 2048 (in the VLLMEngine init args (in an RL config: "
                          "data.init_args.engine.init_args.<knob>))"), msg
    assert "\n" not in msg
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in str(info.value.__cause__)  # vLLM's own error stays chained


def test_kv_cache_too_small_for_one_sequence_names_the_memory_knobs():
    from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory

    gib = 2**30
    with pytest.raises(ValueError) as info:  # vLLM's own check, with its own message
        _check_enough_kv_cache_memory(1 * gib, lambda: 4 * gib, 131072, lambda mem: 32640)
    knobs = dict(max_model_len=131072, max_num_seqs=4, gpu_memory_utilization=0.5, cpu_kvcache_space_gib=1)
    cpu = str(vllm_errors.start_error(info.value, "/m", knobs, on_cpu=True))
    assert cpu.startswith("VLLMEngine could not start on /m: the KV cache (1.0 GiB) cannot hold one sequence of "
                          "max_model_len=131072 tokens (needs 4.0 GiB). Out of KV-cache memory: raise "
                          "cpu_kvcache_space_gib (now 1 GiB; env VLLM_CPU_KVCACHE_SPACE) or lower max_model_len to "
                          "at most 32640"), cpu
    gpu = str(vllm_errors.start_error(info.value, "/m", knobs, on_cpu=False))
    assert "raise gpu_memory_utilization (now 0.5) or lower max_model_len to at most 32640" in gpu
    with pytest.raises(ValueError) as none_left:
        _check_enough_kv_cache_memory(0, lambda: gib, 2048, lambda mem: 0)
    assert "Raise gpu_memory_utilization (now 0.5)" in str(vllm_errors.start_error(none_left.value, "/m", knobs, False))
    oom = vllm_errors.start_error(torch.OutOfMemoryError("CUDA out of memory"), "/m", knobs, on_cpu=False)
    assert "out of memory" in str(oom) and "Lower gpu_memory_utilization (now 0.5;" in str(oom)
    other = str(vllm_errors.start_error(RuntimeError("boom\nmore"), "/m", knobs, on_cpu=True))
    assert other.startswith("VLLMEngine could not start on /m: RuntimeError: boom. Engine settings: max_model_len="
                            "131072, max_num_seqs=4,") and "HFEngine" in other


def test_closed_engine_and_error_types():
    assert issubclass(EngineStartError, EngineError) and issubclass(EngineStartError, ValueError)
    engine = VLLMEngine.__new__(VLLMEngine)  # what `close()` leaves behind
    engine.llm = None
    with pytest.raises(EngineError, match="the engine is closed"):
        engine.generate([[1, 2]], 1, SamplingConfig(max_tokens=2))
