"""Exact weight sync trainer -> embedded vLLM (CPU): checkpoint-format streaming (fused Qwen3-MoE
experts, FSDP2 shards), and SYNC PARITY after perturbing every weight, for an HF Qwen3-MoE policy and
the native BailingMoe policy (and a Qwen3-MoE whose experts vLLM pads); a broken sync is caught; tied
embeddings (Qwen2, Qwen3-MoE, Llama, BailingMoe) sync exactly and a stale tied head is named in the parity error.
A compiled engine (enforce_eager=False) syncs exactly too; a bf16 engine syncs to bf16 rounding.
One vLLM engine alive at a time (9 starts)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ring_lightning.models.loading import load_policy
from ring_lightning.rollout.parity import SyncParityError, SyncParityProbe
from ring_lightning.rollout.weight_sync import (
    CheckpointNamer,
    WeightSyncError,
    checkpoint_chunks,
    clean_name,
    layer_key,
)

from unit.rollout.tied_models import TIED, tied_policy

REPO = Path(__file__).resolve().parents[3]


def policy(preset: str, seed: int = 0, **overrides):
    return load_policy(preset, seed=seed, head_dim=32, **overrides)  # vLLM's CPU attention needs head_dim >= 32


# ------------------------------------------------------------------ trainer side (no engine)


def test_names_and_layer_groups():
    assert clean_name("_orig_mod.model.layers.3._checkpoint_wrapped_module.mlp.gate.weight") == \
        "model.layers.3.mlp.gate.weight"
    assert clean_name("module.lm_head.weight") == "lm_head.weight"
    assert layer_key("model.layers.12.mlp.experts.3.up_proj.weight") == "model.layers.12"
    assert layer_key("model.embed_tokens.weight") == "model.embed_tokens"


def test_qwen3_moe_chunks_equal_the_saved_checkpoint(tmp_path):
    """Fused in-memory experts ([E, 2I, H] gate|up, [E, H, I]) stream out as the per-expert tensors
    save_pretrained writes, one decoder layer per chunk, cast to the requested dtype."""
    model, _ = policy("qwen3-moe-tiny")
    assert tuple(model.model.layers[0].mlp.experts.gate_up_proj.shape) == (8, 128, 64)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    chunks = list(checkpoint_chunks(model.named_parameters(), CheckpointNamer(model)))
    streamed = dict(kv for chunk in chunks for kv in chunk)
    assert set(streamed) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(streamed[name], tensor), name
    assert len(chunks) == 2 + 3  # embed, 2 layers, final norm, lm_head
    for chunk in chunks:
        assert len({layer_key(n) for n, _ in chunk}) == 1
    gate_up = model.model.layers[1].mlp.experts.gate_up_proj
    assert torch.equal(streamed["model.layers.1.mlp.experts.5.gate_proj.weight"], gate_up[5, :64])
    assert torch.equal(streamed["model.layers.1.mlp.experts.5.up_proj.weight"], gate_up[5, 64:])
    half = dict(kv for c in checkpoint_chunks(model.named_parameters(), CheckpointNamer(model), torch.bfloat16)
                for kv in c)
    assert all(t.dtype == torch.bfloat16 for t in half.values())


def test_bailing_chunks_pass_through_with_checkpoint_names():
    model, _ = policy("bailing-tiny")
    namer = CheckpointNamer(model)
    assert not namer.active
    streamed = [n for chunk in checkpoint_chunks(model.named_parameters(), namer) for n, _ in chunk]
    assert streamed == [n for n, _ in model.named_parameters()]
    with pytest.raises(WeightSyncError, match="given twice"):
        list(checkpoint_chunks([("a.weight", torch.zeros(1)), ("a.weight", torch.zeros(1))], namer))


FSDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp

    def run(rank, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK=str(rank), WORLD_SIZE="2")
        dist.init_process_group("gloo", rank=rank, world_size=2)
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor
        from transformers.core_model_loading import revert_weight_conversion
        from ring_lightning.models.loading import load_policy
        from ring_lightning.rollout.weight_sync import CheckpointNamer, checkpoint_chunks
        model, _ = load_policy("qwen3-moe-tiny", seed=0, head_dim=32)
        ref = {k: v.clone() for k, v in revert_weight_conversion(model, dict(model.state_dict())).items()}
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert isinstance(model.model.layers[0].mlp.experts.gate_up_proj, DTensor)
        got = dict(kv for c in checkpoint_chunks(model.named_parameters(), CheckpointNamer(model)) for kv in c)
        ok = set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
        if rank == 0:
            open(out, "w").write(f"{ok} {len(got)}")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(sys.argv[1],), nprocs=2)
""")


def test_fsdp2_sharded_policy_streams_full_tensors(tmp_path):
    """Two CPU ranks (gloo) with a fully_shard-ed Qwen3-MoE: every rank gathers the same full,
    checkpoint-format tensors as the unsharded model's."""
    script, out = tmp_path / "fsdp_stream.py", tmp_path / "result.txt"
    script.write_text(FSDP_SCRIPT)
    with socket.socket() as sock:  # a free port for the two ranks' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out), port], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_text() == "True 69"


# ------------------------------------------------------------------ engine side


ENGINE_POLICIES = {
    "qwen3-moe-tiny": ("qwen3-moe-tiny", {}),
    "bailing-tiny": ("bailing-tiny", {}),
    # expert width 48: vLLM's CPU MoE kernel zero-pads it to 64, so a sync must re-pad as well as re-pack
    "qwen3-moe-tiny-padded": ("qwen3-moe-tiny", {"moe_intermediate_size": 48}),
}


@pytest.fixture(scope="module", params=list(ENGINE_POLICIES))
def synced(request):
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    preset, overrides = ENGINE_POLICIES[request.param]
    model, tok = policy(preset, **overrides)
    engine = VLLMEngine(model, tok, max_model_len=256, max_num_seqs=16, seed=0)
    if overrides:
        w13 = engine.llm.apply_model(lambda m: tuple(m.model.layers[0].mlp.experts.routed_experts.w13_weight.shape))
        assert w13 == [(8, 2 * 64, 64)]  # the kernel holds padded experts
    yield preset, model, engine
    engine.close()


def probe_diff(engine, model, step: int) -> tuple[float, float]:
    probe = SyncParityProbe(num_prompts=6, prompt_len=8, max_tokens=24, seed=step, mean_threshold=float("inf"),
                            max_threshold=float("inf"))
    m = probe.check(engine, model, step)
    return m["rollout/sync_logprob_diff_mean"], m["rollout/sync_logprob_diff_max"]


def perturb_all(model, seed: int) -> set[str]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return {n for n, _ in model.named_parameters()}


def test_fresh_in_memory_engine_matches_trainer(synced):
    _, model, engine = synced
    assert engine.num_syncs == 1  # started from dummy weights + one exact sync
    mean, mx = probe_diff(engine, model, 0)
    assert mean <= 1e-5 and mx <= 1e-4, (mean, mx)


def test_sync_parity_over_three_successive_syncs(synced):
    preset, model, engine = synced
    n_tensors = sum(len(c) for c in checkpoint_chunks(model.named_parameters(), CheckpointNamer(model)))
    for round_ in range(1, 4):
        names = perturb_all(model, seed=round_)
        kinds = ("experts", "mlp.gate", "embed" if preset.startswith("qwen") else "word_embeddings",
                 "norm", "lm_head")
        assert all(any(k in n for n in names) for k in kinds)
        stale_mean, _ = probe_diff(engine, model, round_)
        assert stale_mean > 1e-2  # the perturbation is visible before the sync
        engine.update_weights(model.named_parameters())
        assert engine.last_sync.tensors == n_tensors
        mean, mx = probe_diff(engine, model, round_)
        assert mean <= 1e-5 and mx <= 1e-4, (preset, round_, mean, mx)


def test_a_compiled_engine_syncs_exactly_too():
    """enforce_eager=False (torch.compile of vLLM's CPU model; the mid benchmark's setting): the
    compiled graph reads the weights the sync loads in place, nothing is constant-folded."""
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    model, tok = policy("qwen3-moe-tiny")
    engine = VLLMEngine(model, tok, max_model_len=256, max_num_seqs=16, seed=0, enforce_eager=False)
    try:
        mean, mx = probe_diff(engine, model, 0)
        assert mean <= 1e-5 and mx <= 1e-4, (mean, mx)
        perturb_all(model, seed=1)
        assert probe_diff(engine, model, 1)[0] > 1e-2  # stale before the sync
        engine.update_weights(model.named_parameters())
        mean, mx = probe_diff(engine, model, 1)
        assert mean <= 1e-5 and mx <= 1e-4, (mean, mx)
    finally:
        engine.close()


def test_a_bf16_engine_syncs_from_fp32_master_weights_to_bf16_rounding():
    """A bfloat16 engine fed by an fp32 trainer (bf16-mixed on CPU, the benchmarks' `:bf16` variants): every
    sync casts, and the engine then matches the trainer to bf16 rounding (measured here: mean 1.9e-3, max
    1.1e-2), far inside the probe's bf16 thresholds (0.05 / 1.5), which still catch a stale engine (0.18)."""
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    model, tok = policy("qwen3-moe-tiny")
    engine = VLLMEngine(model, tok, max_model_len=256, max_num_seqs=16, seed=0, dtype="bfloat16")
    try:
        assert engine.dtype == torch.bfloat16 and {p.dtype for p in model.parameters()} == {torch.float32}
        mean, mx = probe_diff(engine, model, 0)
        assert mean <= 1e-2 and mx <= 0.1, (mean, mx)
        perturb_all(model, seed=1)
        probe = SyncParityProbe(num_prompts=6, prompt_len=8, max_tokens=24)  # default thresholds: bf16's
        with pytest.raises(SyncParityError, match="VLLMEngine disagrees"):
            probe.check(engine, model, step=1)
        engine.update_weights(model.named_parameters())
        assert probe.check(engine, model, step=1)["rollout/sync_logprob_diff_mean"] <= 1e-2
    finally:
        engine.close()


def test_broken_sync_is_caught_and_a_full_sync_recovers(synced):
    _, model, engine = synced
    perturb_all(model, seed=10)
    router = "model.layers.1.mlp.gate.weight"
    with pytest.raises(WeightSyncError, match=r"without new weights: \['model\.layers\.1\.mlp\.gate\.weight'\]"):
        engine.update_weights((n, p) for n, p in model.named_parameters() if n != router)
    probe = SyncParityProbe(num_prompts=6, prompt_len=8, max_tokens=24)
    with pytest.raises(SyncParityError, match="VLLMEngine disagrees"):  # the stale router shows
        probe.check(engine, model, step=10)
    expert = next(n for n, _ in model.named_parameters() if "experts" in n)

    def corrupted():
        for n, p in model.named_parameters():
            yield n, (p + 0.5 * torch.randn_like(p)) if n == expert else p

    engine.update_weights(corrupted())  # loads fine, but one expert is wrong
    with pytest.raises(SyncParityError, match=r"VLLMEngine .* at step 11"):
        probe.check(engine, model, step=11)
    engine.update_weights(model.named_parameters())
    mean, mx = probe_diff(engine, model, 12)
    assert mean <= 1e-5 and mx <= 1e-4
    with pytest.raises(WeightSyncError, match="failed after"):
        engine.update_weights([("model.not_a_layer.weight", torch.zeros(3))])
    engine.update_weights(model.named_parameters())  # the engine is usable again after a failed sync
    assert probe_diff(engine, model, 13)[1] <= 1e-4


# ------------------------------------------------------------------ tied embeddings (issue 20)


def test_tied_head_kernel_is_rebuilt_and_a_quantized_one_refused():
    """No engine: a head aliasing the loaded embedding gets its CPU GEMM rebuilt from the new weight."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    from ring_lightning.rollout.weight_sync import _refresh_tied_layers, _tied_layers

    model = torch.nn.Module()
    model.embed, model.head = torch.nn.Module(), torch.nn.Module()
    model.embed.weight = model.head.weight = torch.nn.Parameter(torch.randn(96, 64), requires_grad=False)
    model.head.quant_method = UnquantizedEmbeddingMethod()
    assert [n for n, _ in _tied_layers(model, {"embed.weight"})] == ["head"]
    assert _tied_layers(model, {"embed.weight", "head.weight"}) == [] and _tied_layers(model, set()) == []
    _refresh_tied_layers(model, {"embed.weight"})
    x = torch.randn(3, 64)
    assert torch.allclose(model.head.cpu_linear(x, model.head.weight, None), x @ model.head.weight.T, atol=1e-5)
    model.head.quant_method = object()
    with pytest.raises(WeightSyncError, match=r"head shares its weight .* uses object"):
        _refresh_tied_layers(model, {"embed.weight"})


@pytest.fixture(scope="module", params=TIED)
def tied_synced(request):
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    model, tok = tied_policy(request.param)
    engine = VLLMEngine(model, tok, max_model_len=256, max_num_seqs=16, seed=0)
    yield request.param, model, engine
    engine.close()


def test_tied_embeddings_sync_exactly(tied_synced):
    """The trainer yields only `embed_tokens.weight`; vLLM skips `lm_head.weight` and aliases the
    embedding, but on CPU the head's prepacked GEMM was built from the start-up weights and must be
    rebuilt after each sync (before: mean |Δlogprob| 0.13, max 0.46 at step 0)."""
    kind, model, engine = tied_synced
    mean, mx = probe_diff(engine, model, 0)
    assert mean <= 1e-5 and mx <= 1e-4, (kind, mean, mx)
    for round_ in (1, 2):
        perturb_all(model, seed=round_)  # the shared embedding/head changes too
        assert probe_diff(engine, model, round_)[0] > 1e-2
        engine.update_weights(model.named_parameters() if round_ == 1 else model.state_dict().items())
        mean, mx = probe_diff(engine, model, round_)
        assert mean <= 1e-5 and mx <= 1e-4, (kind, round_, mean, mx)
    sharing = engine.llm.apply_model(  # vLLM's head is the embedding's Parameter
        lambda m: sorted(type(e).__name__ for e in m.modules() if getattr(e, "weight", None) is m.lm_head.weight))
    assert sharing == [["ParallelLMHead", "VocabParallelEmbedding"]]


def test_parity_error_names_a_stale_tied_head_and_the_differing_groups(tied_synced, monkeypatch):
    from ring_lightning.rollout import weight_sync

    kind, model, engine = tied_synced
    perturb_all(model, seed=7)
    monkeypatch.setattr(weight_sync, "_refresh_tied_layers", lambda *a: None)  # the bug this fixes
    engine.update_weights(model.named_parameters())
    probe = SyncParityProbe(num_prompts=6, prompt_len=8, max_tokens=24)
    with pytest.raises(SyncParityError) as err:
        probe.check(engine, model, step=3)
    msg = str(err.value)
    assert "trainer embeddings tied (tie_word_embeddings=True); engine lm_head is the input embedding" in msg
    assert re.search(r"stale head kernel .*: lm_head \(max \|Δlogit\| \d", msg), msg
    assert "no compared weight group differs" in msg and "untie the embeddings" in msg
    monkeypatch.undo()
    engine.update_weights(model.named_parameters())  # a real sync rebuilds the head's kernel
    assert probe_diff(engine, model, 4)[1] <= 1e-4
    with torch.no_grad():
        model.model.norm.weight.add_(0.25)  # not synced: the engine keeps the old final norm
    with pytest.raises(SyncParityError) as err:
        probe.check(engine, model, step=4)
    msg = str(err.value)
    assert "weights differing engine vs trainer: model.norm (max |Δ| 0.25)" in msg, msg
    assert "stale head kernel" not in msg and "pass every trainer parameter to update_weights" in msg
