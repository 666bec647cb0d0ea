"""rl/logits.py: logprobs, entropy, router aux losses and parameter gradients at the loss positions
equal the full-logits path (`token_logprobs_and_entropy(model(...).logits, ...)`) to float32
round-off, for BailingMoe (NormHead and plain head), HF Qwen3-MoE and HF Qwen2, on a micro-batch
with prompt positions, right padding and a truncated piece; no [N, V] tensor is kept for backward;
FSDP2 (two CPU ranks) gives the unsharded full-path gradients; unsupported heads are refused by name."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from ring_lightning.models.loading import load_policy
from ring_lightning.models.router_losses import num_experts, router_aux_losses
from ring_lightning.rl.batch import Response, collate
from ring_lightning.rl.budget import Piece
from ring_lightning.rl.logits import head_logprobs_and_entropy, masked_logprobs_and_entropy
from ring_lightning.rl.losses import token_logprobs_and_entropy


def qwen2_tiny():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0)
    return Qwen2ForCausalLM(cfg)


def build(name: str):
    if name == "qwen2-tiny":
        return qwen2_tiny()
    return load_policy(name, seed=0)[0]


def micro_batch(vocab: int):
    """3 rows: a whole response, a truncated middle piece (start 2, end 5 of 8), a short row (padded)."""
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g)  # noqa: E731
    rs = [Response(prompt_ids=ids(5), response_ids=ids(6), reward=1.0, group_id=0, advantage=0.7),
          Response(prompt_ids=ids(3), response_ids=ids(8), reward=0.0, group_id=0, advantage=-0.4),
          Response(prompt_ids=ids(2), response_ids=ids(3), reward=1.0, group_id=1, advantage=0.2)]
    mb = collate(rs, [Piece(0, 0, 6), Piece(1, 2, 5), Piece(2, 0, 3)], normalizer=9.0)
    assert mb.loss_mask.sum() == 12 and (~mb.loss_mask & mb.attention_mask.bool()).any()
    assert (mb.attention_mask == 0).any()  # padding present
    return mb


def full_path(model, mb, with_aux):
    kwargs = dict(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                  use_cache=False)
    if with_aux and num_experts(model) > 0:
        kwargs["output_router_logits"] = True
    out = model(**kwargs)
    logp, ent = token_logprobs_and_entropy(out.logits, mb.target_ids)
    return out, logp, ent


def scalar_loss(model, mb, out, logp, ent):
    m = mb.loss_mask.to(logp)
    loss = (mb.advantages * logp * m).sum() / mb.normalizer + 0.05 * (ent * m).sum() / mb.normalizer
    aux = router_aux_losses(out, model, token_mask=mb.attention_mask, aux_loss_coef=0.1, z_loss_coef=0.01)
    return loss + aux["loss"] if aux else loss, aux


def run(model, mb, fn):
    model.zero_grad(set_to_none=True)
    out, logp, ent = fn(model, mb)
    loss, aux = scalar_loss(model, mb, out, logp, ent)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent.detach(), {k: v.detach() for k, v in aux.items()}, grads


@pytest.mark.parametrize("name", ["bailing-tiny", "bailing-tiny-nonorm", "qwen3-moe-tiny", "qwen2-tiny"])
def test_masked_path_equals_full_logits_path(name):
    model = build(name).train()
    mb = micro_batch(model.config.vocab_size)
    full = run(model, mb, lambda m, b: full_path(m, b, True))
    new = run(model, mb, lambda m, b: masked_logprobs_and_entropy(m, b, with_aux=True, chunk_tokens=5))
    mask = mb.loss_mask
    torch.testing.assert_close(new[0][mask], full[0][mask], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new[1][mask], full[1][mask], rtol=1e-6, atol=1e-6)
    assert (new[0][~mask] == 0).all() and (new[1][~mask] == 0).all()
    assert (full[0][~mask] != 0).any()  # the full path does have values there
    assert new[2].keys() == full[2].keys()
    assert bool(new[2]) == (num_experts(model) > 0)
    for k in full[2]:
        torch.testing.assert_close(new[2][k], full[2][k], rtol=1e-6, atol=0)
    assert new[3].keys() == full[3].keys() and len(full[3]) >= 10  # experts no token chose have none
    for n, g in full[3].items():
        torch.testing.assert_close(new[3][n], g, rtol=1e-5, atol=1e-6, msg=f"gradient of {n}")


def test_matches_under_activation_checkpointing():
    """RLModule's `activation_checkpointing: true` (HF gradient checkpointing of the decoder layers)."""
    model = build("bailing-tiny").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mb = micro_batch(model.config.vocab_size)
    full = run(model, mb, lambda m, b: full_path(m, b, True))[3]
    new = run(model, mb, lambda m, b: masked_logprobs_and_entropy(m, b, with_aux=True, chunk_tokens=5))[3]
    assert new.keys() == full.keys()
    for n, g in full.items():
        torch.testing.assert_close(new[n], g, rtol=1e-5, atol=1e-6, msg=f"gradient of {n}")


def test_no_grad_path_matches_and_keeps_no_graph():
    model = build("bailing-tiny").eval()
    mb = micro_batch(model.config.vocab_size)
    with torch.no_grad():
        _, logp_full, ent_full = full_path(model, mb, False)
        out, logp, ent = masked_logprobs_and_entropy(model, mb, chunk_tokens=4)
    assert not logp.requires_grad and out.logits.shape == (3, 1, model.config.vocab_size)
    torch.testing.assert_close(logp[mb.loss_mask], logp_full[mb.loss_mask], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent[mb.loss_mask], ent_full[mb.loss_mask], rtol=1e-6, atol=1e-6)


def test_dummy_micro_batch_gives_zeros_and_zero_head_gradient():
    """A rank's empty micro-batch (loss mask all 0) still backpropagates through the head (zeros),
    as the full path does, so every rank's backward reaches the same parameters."""
    model = build("bailing-tiny-nonorm").train()
    mb = collate([], [], 1.0)
    out, logp, ent = masked_logprobs_and_entropy(model, mb, with_aux=True)
    assert logp.shape == (1, 1) and float((logp.abs() + ent.abs()).sum().detach()) == 0.0
    loss, _ = scalar_loss(model, mb, out, logp, ent)
    loss.backward()
    assert model.lm_head.weight.grad is not None and float(model.lm_head.weight.grad.abs().sum()) == 0.0


def _largest_saved(fn) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_backward_keeps_no_vocab_sized_chunk_activations():
    """Checkpointed chunks: nothing of [rows, V] is saved for backward (the full path saves [B*T, V])."""
    V, H, N = 500, 8, 40
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    t = torch.randint(0, V, (N,))
    full = _largest_saved(lambda: token_logprobs_and_entropy((h @ w.T).unsqueeze(0), t.unsqueeze(0)))
    chunked = _largest_saved(lambda: head_logprobs_and_entropy(h, w, None, t, chunk_tokens=8))
    assert full == N * V
    assert chunked == V * H  # the head weight; no [8, V] logits


def test_chunking_does_not_change_values_or_gradients():
    V, H, N = 97, 6, 23
    g = torch.Generator().manual_seed(0)
    h0, w0 = torch.randn(N, H, generator=g, dtype=torch.float64), torch.randn(V, H, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (N,), generator=g)
    res = []
    for chunk in (1, 7, 23, 1000):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        lp, ent = head_logprobs_and_entropy(h, w, None, t, chunk_tokens=chunk, temperature=0.8)
        (lp.sum() + 0.3 * ent.sum()).backward()
        res.append((lp.detach(), ent.detach(), h.grad, w.grad))
    for other in res[1:]:
        for a, b in zip(res[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chunk_tokens must be positive"):
        head_logprobs_and_entropy(h0, w0, None, t, chunk_tokens=0)


def test_unsupported_model_type_is_refused_by_name():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    mb = micro_batch(50)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        masked_logprobs_and_entropy(model, mb)


def test_a_model_without_a_decoder_body_is_refused():
    base = qwen2_tiny().model  # the decoder itself: no head, get_decoder() is itself
    with pytest.raises(ValueError, match=r"Qwen2Model.get_decoder\(\) gives no decoder body"):
        masked_logprobs_and_entropy(base, micro_batch(300))


def test_a_forward_that_runs_the_decoder_twice_is_refused():
    model = qwen2_tiny()
    plain = model.forward
    model.forward = lambda **kw: (model.model(input_ids=kw["input_ids"]), plain(**kw))[1]
    with pytest.raises(RuntimeError, match="the decoder of Qwen2ForCausalLM ran 2 times in one forward"):
        masked_logprobs_and_entropy(model, micro_batch(300))


def test_declared_logit_transform_is_refused():
    model = qwen2_tiny()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=r"'qwen2' config declares \['final_logit_softcapping'\]"):
        masked_logprobs_and_entropy(model, micro_batch(300))


FSDP_SCRIPT = r"""
import os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from unit.rl.test_logits import build, micro_batch, scalar_loss
from ring_lightning.rl.logits import masked_logprobs_and_entropy

def worker(rank, name, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (2,))
    model = build(name).train()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    mb = micro_batch(model.config.vocab_size)
    for _ in range(2):  # the second step reuses the FSDP state
        model.zero_grad(set_to_none=True)
        o, lp, ent = masked_logprobs_and_entropy(model, mb, with_aux=True, chunk_tokens=5)
        scalar_loss(model, mb, o, lp, ent)[0].backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save(grads, out)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=tuple(sys.argv[1:]), nprocs=2)
"""


def test_fsdp2_two_ranks_match_unsharded_full_path(tmp_path):
    """Root params (embedding, norm, head) are unsharded by the root forward the path runs through."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script, out = tmp_path / "fsdp_logits.py", tmp_path / "grads.pt"
    script.write_text(FSDP_SCRIPT)
    tests_dir = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{tests_dir}{os.pathsep}{tests_dir.parent}", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "bailing-tiny", port, str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)
    model = build("bailing-tiny").train()
    mb = micro_batch(model.config.vocab_size)
    ref = run(model, mb, lambda m, b: full_path(m, b, True))[3]
    assert got.keys() == ref.keys()
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, rtol=1e-5, atol=1e-6, msg=f"gradient of {n}")
