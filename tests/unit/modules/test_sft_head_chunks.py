"""SFTModule(head_chunk_tokens=k): the chunked output head gives the full-logits path's loss, parameter
gradients and router aux losses (BailingMoe with NormHead and plain head, HF Qwen3-MoE) for chunks
of 1, 3 and more than the target rows; the forward keeps one logits position and no head call sees
more than k rows (forward and recompute); bad knob values and unsupported heads are refused by name."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import ring_lightning.rl.logits as rl_logits
from ring_lightning.data.sft.packing import TokenizedDoc, collate_packed
from ring_lightning.modules.sft import SFTModule


def rand_doc(n: int, seed: int, assistant: bool = True) -> TokenizedDoc:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (n,), generator=g).tolist()
    return TokenizedDoc(tuple(ids), tuple(assistant and i >= n // 3 for i in range(n)))


def batch():
    """Three packed documents (one without targets) and right padding: 24 target rows."""
    b = collate_packed([rand_doc(20, 1), rand_doc(12, 2, assistant=False), rand_doc(15, 3)], 64, pad_id=0)
    assert int(b.num_loss_tokens) == 24 and int(b.num_padding) > 0
    return b


def loss_and_grads(model: str, head_chunk_tokens: int | None, **kwargs):
    module = SFTModule(model=model, seed=0, head_chunk_tokens=head_chunk_tokens, **kwargs)
    module.configure_model()
    ce, n, aux, load = module._forward(batch())
    (ce + n * aux["loss"]).backward()
    grads = {k: p.grad.clone() for k, p in module.policy.named_parameters() if p.grad is not None}
    return ce.detach(), {k: v.detach() for k, v in aux.items()}, load, grads


@pytest.mark.parametrize("model", ["bailing-tiny", "bailing-tiny-nonorm", "qwen3-moe-tiny"])
def test_chunked_head_equals_the_full_logits_path(model):
    ref_ce, ref_aux, ref_load, ref_grads = loss_and_grads(model, None)
    assert "lm_head.weight" in ref_grads and len(ref_grads) > 10
    for chunk in (1, 3, 1000):
        ce, aux, load, grads = loss_and_grads(model, chunk)
        assert ce.dtype == torch.float32
        torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=1e-5)
        assert aux.keys() == ref_aux.keys() and {"loss", "load_balance_loss_unscaled", "z_loss_unscaled"} <= aux.keys()
        for key, value in aux.items():
            torch.testing.assert_close(value, ref_aux[key], rtol=1e-6, atol=1e-8, msg=key)
        assert torch.equal(load, ref_load)  # the same routing
        assert grads.keys() == ref_grads.keys()  # atol: float32 round-off of chunk sums (entries up to ~11)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-5, msg=f"{chunk}: {name}")


def test_chunked_head_with_activation_checkpointing_keeps_loss_and_gradients():
    ref_ce, _, _, ref_grads = loss_and_grads("bailing-tiny", None)
    ce, _, _, grads = loss_and_grads("bailing-tiny", 4, activation_checkpointing=True)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("model", ["bailing-tiny", "qwen3-moe-tiny"])
def test_chunked_head_never_builds_the_full_logits(model, monkeypatch):
    rows, positions = [], []
    real = rl_logits._chunk_ce

    def counting(h, weight, bias, targets):
        rows.append(h.shape[0])
        return real(h, weight, bias, targets)

    monkeypatch.setattr(rl_logits, "_chunk_ce", counting)
    module = SFTModule(model=model, seed=0, head_chunk_tokens=5)
    module.configure_model()
    module.policy.register_forward_hook(lambda _m, _a, out: positions.append(out.logits.shape[1]))
    ce, n, aux, _ = module._forward(batch())
    assert positions == [1]  # the model's own logits: the last position only
    assert rows == [5, 5, 5, 5, 4]  # 24 target rows, 5 at a time
    (ce + n * aux["loss"]).backward()
    assert rows[5:] == [4, 5, 5, 5, 5]  # backward recomputes chunk by chunk (last first)


def test_a_batch_without_targets_gives_zero_loss_and_a_graph():
    module = SFTModule(model="qwen3-tiny", seed=0, head_chunk_tokens=4)
    module.configure_model()
    ce, n, _, _ = module._forward(collate_packed([rand_doc(12, 2, assistant=False)], 16, pad_id=0))
    assert float(ce.detach()) == 0.0 and float(n) == 0.0 and ce.requires_grad
    ce.backward()
    assert float(module.policy.lm_head.weight.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("value", [0, -4, True])
def test_invalid_head_chunk_tokens_is_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"head_chunk_tokens must be >= 1 or None, got {value!r}"):
        SFTModule(model="bailing-tiny", head_chunk_tokens=value)


def test_unsupported_model_type_is_refused_by_name(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=1105, n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp_path / "gpt2")
    module = SFTModule(model=str(tmp_path / "gpt2"), tokenizer=None, head_chunk_tokens=8)
    with pytest.raises(ValueError, match=r"head_chunk_tokens=8\): rl/logits.py: model_type 'gpt2' is not supported"):
        module.configure_model()
    plain = SFTModule(model=str(tmp_path / "gpt2"), tokenizer=None)  # the full-logits path takes any head
    plain.configure_model()
    assert plain.policy.config.model_type == "gpt2"
