"""FSDP2 for HF causal LMs: shard before materialising, load from rank 0, gather for export.

Ring-lite (arXiv 2506.14731) trains a 16.8B-parameter MoE; the report does not describe its
distributed setup. We use PyTorch FSDP2 (`fully_shard`) through Lightning's ModelParallelStrategy
with data parallelism only (tensor_parallel_size must be 1): every decoder layer (the model's
`_no_split_modules` classes) is its own FSDP unit, then the root (embeddings, final norm, head).

Only rank 0 ever holds the full model: it builds (preset, seeded) or loads (checkpoint) the policy on
CPU, every rank builds the architecture on the meta device, shards it, allocates its shard on its
device, and the weights are broadcast shard-wise from rank 0 (`set_model_state_dict(...,
broadcast_from_rank0=True)`). Buffers (e.g. rotary inverse frequencies, which are not in the state
dict) are broadcast from rank 0 too. The same seed therefore gives the same initial weights as a
single-process run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig


def build_sharded_policy(load_full: Callable[[], nn.Module], config: PretrainedConfig, dtype: torch.dtype,
                         mesh, device: torch.device, mixed_precision: str = "none") -> nn.Module:
    """A `fully_shard`-ed policy whose weights equal `load_full()` on rank 0.

    Args:
        load_full: builds or loads the full policy on CPU; called on rank 0 only.
        config: the policy's config (to build the meta-device skeleton on every rank).
        dtype: parameter dtype.
        mesh: Lightning's device mesh with "data_parallel" and "tensor_parallel" dimensions.
        device: this rank's device.
        mixed_precision: "bf16" = bfloat16 compute, float32 gradient reduction; "none" = param dtype.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if mesh["tensor_parallel"].size() != 1:
        raise ValueError(f"SFTModule supports data parallelism only: set ModelParallelStrategy(tensor_parallel_size=1) "
                         f"(got {mesh['tensor_parallel'].size()})")
    dp_mesh = mesh["data_parallel"]
    rank0 = dist.get_rank() == 0
    full = load_full() if rank0 else None
    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(config, dtype=dtype)
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if mixed_precision == "bf16" else MixedPrecisionPolicy())
    block_names = set(getattr(policy, "_no_split_modules", None) or [])
    blocks = [m for m in policy.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(policy).__name__} names no decoder-layer class in `_no_split_modules`; "
                         "cannot shard it per layer")
    for block in blocks:
        fully_shard(block, mesh=dp_mesh, mp_policy=mp)
    fully_shard(policy, mesh=dp_mesh, mp_policy=mp)
    # MoE: an expert idle on one rank has no gradient there; reduce zeros for it so every rank joins
    # the same reduce-scatter (otherwise the collectives mismatch and the job aborts).
    policy.set_reduce_scatter_unused_params(True)
    policy.to_empty(device=device)
    full_state = full.state_dict() if rank0 else {}
    set_model_state_dict(policy, full_state,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True))
    full_buffers = dict(full.named_buffers()) if rank0 else {}
    for name, buf in policy.named_buffers():
        if rank0:
            buf.copy_(full_buffers[name].to(device=buf.device, dtype=buf.dtype))
        dist.broadcast(buf, src=0)
    del full
    return policy


def gather_full_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU: on rank 0 under FSDP2 ({} elsewhere; collective), else local."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in policy.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}
