"""Parameter counts (total / active per token) and training FLOPs of MoE policies, and model FLOPs
utilisation (MFU) — the CPU-independent part of `benchmarks/gpu_check.py` — and the measured CPU matmul
peak (`measure_matmul_peak`) that `benchmarks/run.py` reports CPU training FLOP/s against.

Conventions (stated because MFU figures are only comparable under the same ones):

* Total parameters: every parameter of the model (`sum(p.numel())`), embeddings included.
* Active parameters (per token): total minus the routed experts a token does not use, i.e. routed
  expert weights count `top_k / num_experts` of their size; shared experts, dense layers,
  attention, routers, norms and both embedding tables count fully. This is how the Ring-lite report
  (arXiv 2506.14731, §2) counts "2.75B activated of 16.8B total" for Ring-lite / Ling-lite-1.5.
* Training FLOPs: 6 x N x tokens (forward 2N, backward 4N; Kaplan et al. 2020, PaLM appendix B),
  with N = active parameters *without the input embedding table* (a lookup, not a matmul; the
  output head is a matmul and counts). The attention score / value products (12 x layers x
  hidden x sequence per token) are left out, as in the "6N" convention the brief asks for; they
  add ~1.5% for Ring-lite at 4k tokens and more at long context, so MFU here is a lower bound.
* Peak FLOPs: dense (no 2:4 sparsity) bf16 tensor-core peak of the GPU, from `PEAK_TFLOPS` by
  device name, or given explicitly.

A model is counted on the meta device (`meta_model`), so a 16.8B-parameter preset costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity). Matched as a
# case-insensitive substring of `torch.cuda.get_device_name()`; the first match wins, so the more
# specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / HBM3
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),  # AWS A10G is clocked below the A10
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (no bf16 on Volta)
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
)

_NUM_EXPERTS_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
_TOP_K_FIELDS = ("num_experts_per_tok", "moe_topk", "top_k")


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of one model.

    Attributes:
        total: all parameters.
        active: parameters one token uses (routed experts scaled by top_k / num_experts).
        routed_experts: parameters of the routed experts (all of them).
        input_embedding: parameters of the input embedding table.
    """

    total: int
    active: int
    routed_experts: int
    input_embedding: int

    @property
    def active_matmul(self) -> int:
        """Active parameters that are matmul weights per token: `active` without the input embedding."""
        return self.active - self.input_embedding


def _config_int(config, fields: tuple[str, ...]) -> int:
    for f in fields:
        value = getattr(config, f, None)
        if value:
            return int(value)
    return 0


def is_routed_expert(name: str) -> bool:
    """A parameter of the routed experts: a name with an `experts` component (`mlp.experts.3.up_proj.weight`,
    fused `mlp.experts.gate_up_proj`); `shared_experts` / `shared_expert` are not routed."""
    return "experts" in name.split(".")


def count_params(model: nn.Module) -> ParamCount:
    """Total and per-token active parameters of a causal LM (real or meta tensors)."""
    config = getattr(model, "config", None)
    n_experts = _config_int(config, _NUM_EXPERTS_FIELDS)
    top_k = _config_int(config, _TOP_K_FIELDS)
    total = routed = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if is_routed_expert(name):
            routed += p.numel()
    if routed and not (n_experts and top_k):
        raise ValueError(f"{type(model).__name__} has routed-expert parameters but its config names no expert "
                         f"count / top-k (looked for {_NUM_EXPERTS_FIELDS} and {_TOP_K_FIELDS})")
    if routed and routed % n_experts:
        raise ValueError(f"{type(model).__name__}: routed-expert parameters ({routed}) are not divisible by "
                         f"num_experts={n_experts}; the expert naming is not the one count_params knows")
    active = total - routed + (routed // n_experts * top_k if routed else 0)
    emb = model.get_input_embeddings()
    return ParamCount(total=total, active=active, routed_experts=routed,
                      input_embedding=emb.weight.numel() if emb is not None else 0)


def meta_model(model: str, **overrides) -> nn.Module:
    """The model of a preset name or checkpoint directory built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    from ring_lightning.models.loading import build_config

    config = build_config(model, **overrides)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def preset_params(model: str, **overrides) -> ParamCount:
    """`count_params` of a preset (or checkpoint directory) with config overrides, e.g.
    `preset_params("ring-lite-2507", num_hidden_layers=2)`."""
    return count_params(meta_model(model, **overrides))


def train_flops(params: ParamCount, tokens: int | float) -> float:
    """Model FLOPs of training on `tokens` tokens (forward + backward): 6 x active matmul params x tokens."""
    return 6.0 * params.active_matmul * float(tokens)


def forward_flops(params: ParamCount, tokens: int | float) -> float:
    """Model FLOPs of a forward pass only (generation, reference logprobs): 2 x active matmul params x tokens."""
    return 2.0 * params.active_matmul * float(tokens)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU by name (`PEAK_TFLOPS`), None when unknown."""
    low = device_name.lower()
    for key, value in PEAK_TFLOPS:
        if key.lower() in low:
            return value
    return None


def mfu(flops: float, seconds: float, peak_tflops_per_device: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of `devices` GPUs."""
    if seconds <= 0 or peak_tflops_per_device <= 0 or devices < 1:
        raise ValueError(f"mfu needs seconds > 0, a positive peak and devices >= 1; got {seconds}, "
                         f"{peak_tflops_per_device}, {devices}")
    return flops / seconds / (peak_tflops_per_device * 1e12 * devices)


def measure_matmul_peak(threads: int | None = None, n: int = 2048, reps: int = 3,
                        dtype: torch.dtype = torch.float32) -> float:
    """The machine's measured matmul FLOP/s on CPU: the best of `reps` timed `torch.matmul` of two n x n
    matrices (2 n^3 FLOPs each) after one warm-up, with `threads` torch intra-op threads (None: as set).
    The best, not the median: the peak this process can reach; load from other processes only lowers it."""
    import time

    if n < 1 or reps < 1:
        raise ValueError(f"measure_matmul_peak needs n >= 1 and reps >= 1, got n={n}, reps={reps}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g, dtype=dtype), torch.randn(n, n, generator=g, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n**3 / best
