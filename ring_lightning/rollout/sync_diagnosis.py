"""Which parameter groups disagree after a failed sync parity probe (for `SyncParityError` messages).

Not in the Ring-lite report: the probe (`parity.py`) says *that* the engine's log-probabilities differ
from the trainer's; this says *where*. For each trainer parameter group (`weight_sync.layer_key`:
`model.embed_tokens`, `model.layers.3`, `lm_head`, ...) the engine's copy is compared with the
trainer's checkpoint-format tensor where the engine keeps it in that layout (embeddings, norms, heads;
on CPU vLLM repacks linear and expert weights into kernel layouts, which are counted as not
comparable). Tied embeddings get their own line: the trainer's and the engine's tie status, and a
check that each head's compute kernel (vLLM's prepacked CPU GEMM) agrees with its own weight.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["tie_status", "compare_tensors", "vllm_head_kernel_errors", "format_groups"]


def tie_status(model: nn.Module) -> str:
    """'tied' / 'untied' for the trainer's input and output embeddings, with the config flag."""
    model = getattr(model, "_orig_mod", model)
    flag = getattr(getattr(model, "config", None), "tie_word_embeddings", None)
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return f"trainer embeddings: unknown (tie_word_embeddings={flag})"
    shared = out is not None and out.weight is inp.weight
    return f"trainer embeddings {'tied' if shared else 'untied'} (tie_word_embeddings={flag})"


def compare_tensors(engine: dict[str, torch.Tensor], trainer: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per-name max |engine - trainer| where the engine holds the tensor in the trainer's layout.

    Vocab-padded engine tensors (more rows) are compared on the trainer's rows. Returns
    {name: {"diff": float | None}}; None = not comparable (absent in the engine, or repacked).
    """
    out: dict[str, dict] = {}
    for name, ref in trainer.items():
        got = engine.get(name)
        if got is None or got.ndim != ref.ndim or got.shape[1:] != ref.shape[1:] or got.shape[0] < ref.shape[0]:
            out[name] = {"diff": None}
            continue
        got = got[:ref.shape[0]] if got.ndim else got
        out[name] = {"diff": (got.float().cpu() - ref.to(got.dtype).float().cpu()).abs().max().item()}
    return out


def vllm_head_kernel_errors(model: nn.Module) -> dict[str, float]:
    """Max |kernel(x) - x·Wᵀ| for each vLLM vocab layer (embedding / lm_head) with a CPU GEMM kernel."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    errors: dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    for name, layer in model.named_modules():
        if not isinstance(layer, VocabParallelEmbedding) or not hasattr(layer, "cpu_linear"):
            continue
        w = layer.weight
        x = torch.randn((2, w.shape[1]), generator=g).to(w.dtype)
        with torch.no_grad():
            want = torch.nn.functional.linear(x.float(), w.float())
            got = layer.cpu_linear(x, w, None).float()
        errors[name] = (got - want).abs().max().item()
    return errors


def format_groups(per_name: dict[str, dict], tol: float = 0.0, limit: int = 6) -> str:
    """One line: groups whose compared tensors differ by more than `tol`, and how much was compared."""
    from ring_lightning.rollout.weight_sync import layer_key

    groups: dict[str, float] = {}
    compared = 0
    for name, res in per_name.items():
        if res["diff"] is None:
            continue
        compared += 1
        key = layer_key(name)
        groups[key] = max(groups.get(key, 0.0), res["diff"])
    bad = sorted(((d, k) for k, d in groups.items() if not d <= tol), reverse=True)
    head = (f"weights differing engine vs trainer: " + ", ".join(f"{k} (max |Δ| {d:.3g})" for d, k in bad[:limit])
            + (" ..." if len(bad) > limit else "")) if bad else "no compared weight group differs"
    return f"{head} ({compared} of {len(per_name)} tensors comparable; repacked kernel weights are not)"


# ----------------------------------------------------------------------------- vLLM (worker side)


def _vllm_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


def _compare_chunk(worker, chunk: list[tuple[str, torch.Tensor]]) -> dict[str, dict]:
    params = _vllm_params(worker.get_model())
    return compare_tensors({n: params[n].data for n, _ in chunk if n in params}, dict(chunk))


def _engine_tie_and_kernels(worker) -> tuple[bool | None, dict[str, float]]:
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    model = worker.get_model()
    head = getattr(model, "lm_head", None)
    embeds = [m for m in model.modules() if type(m) is VocabParallelEmbedding]  # the input embedding(s)
    tied = None if head is None or not embeds else any(head.weight is e.weight for e in embeds)
    return tied, vllm_head_kernel_errors(model)


def diagnose_vllm(engine, model: nn.Module) -> list[str]:
    """Lines for a `SyncParityError`: tie status (trainer, engine), stale head kernels, and the trainer
    parameter groups whose engine copy differs (exact comparison in the engine's dtype)."""
    from ring_lightning.rollout.weight_sync import checkpoint_chunks

    tied, kernels = engine.llm.collective_rpc(_engine_tie_and_kernels)[0]
    lines = [f"{tie_status(model)}; engine lm_head {'is' if tied else 'is not'} the input embedding"
             if tied is not None else tie_status(model)]
    stale = {k: v for k, v in kernels.items() if not v <= 1e-3}
    if stale:
        lines.append("stale head kernel (its prepacked GEMM no longer matches its weight): "
                     + ", ".join(f"{k} (max |Δlogit| {v:.3g})" for k, v in stale.items()))
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):  # gathering is a collective a lone rank would hang in
        return lines + ["weights not compared: the policy is sharded (FSDP2); compare an unsharded copy"]
    skip = {"lm_head.weight"} if getattr(getattr(model, "config", None), "norm_head", False) else set()
    per_name: dict[str, dict] = {}
    named = ((n, p) for n, p in getattr(model, "_orig_mod", model).named_parameters(remove_duplicate=False))
    for chunk in checkpoint_chunks(named, engine._namer, engine.dtype):
        chunk = [(n, t) for n, t in chunk if n not in skip]  # NormHead: the engine stores the normalised head
        if chunk:
            per_name.update(engine.llm.collective_rpc(_compare_chunk, args=(chunk,))[0])
    lines.append(format_groups(per_name))
    return lines
