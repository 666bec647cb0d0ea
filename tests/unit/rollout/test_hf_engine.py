"""HFEngine: batched transformers.generate behind the RolloutEngine protocol (no vLLM needed)."""

from __future__ import annotations

import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.rollout.engine import EngineError, RolloutEngine, SamplingConfig
from ring_lightning.rollout.hf_engine import HFEngine, eos_token_ids
from ring_lightning.rollout.parity import sequence_logprobs


def sharp_policy(seed: int = 0):
    """qwen3-moe-tiny with a 8x lm_head: peaked next-token distributions, so greedy decoding has no
    near-ties and the choice of a stop token / string below is robust."""
    model, tok = load_policy("qwen3-moe-tiny", seed=seed, head_dim=32)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.eval(), tok


@pytest.fixture(scope="module")
def policy():
    return sharp_policy()


@pytest.fixture(scope="module")
def prompts(policy):
    _, tok = policy
    return [tok.encode("The answer is"), tok.encode("Once upon a time"), tok.encode("x")]


def test_protocol_and_eos_ids(policy):
    model, tok = policy
    engine = HFEngine(model, tok)
    assert isinstance(engine, RolloutEngine)
    by_name = HFEngine("qwen3-tiny")  # a preset name: model + shipped tokenizer
    assert by_name.tokenizer.eos_token == "<|im_end|>" and by_name.model.config.model_type == "qwen3"
    assert engine.eos_ids == (2,)
    model.config.eos_token_id = [2, 7]
    try:
        assert eos_token_ids(tok, model.config) == (2, 7)
    finally:
        model.config.eos_token_id = 2


def test_n_samples_seeded_reproducible_and_rng_untouched(policy, prompts):
    model, tok = policy
    engine = HFEngine(model, tok, max_batch_size=4)  # 9 rows -> 3 batches
    s = SamplingConfig(temperature=1.0, max_tokens=12, seed=7)
    state = torch.random.get_rng_state()
    a = engine.generate(prompts, 3, s)
    assert torch.equal(torch.random.get_rng_state(), state)  # the trainer's RNG is not consumed
    b = engine.generate(prompts, 3, s)
    c = engine.generate(prompts, 3, SamplingConfig(temperature=1.0, max_tokens=12, seed=8))
    assert [len(g) for g in a] == [3, 3, 3]
    ids = lambda out: [[comp.token_ids for comp in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({comp.token_ids for comp in a[0]}) > 1  # the n samples of a prompt differ
    for g in a:
        for comp in g:
            assert len(comp.logprobs) == len(comp.token_ids) > 0
            kept = comp.token_ids[:-1] if comp.finish_reason == "stop" else comp.token_ids
            assert comp.text == tok.decode(kept, skip_special_tokens=True)
    assert model.training is False


def test_logprobs_equal_trainer_forward(policy, prompts):
    model, tok = policy
    engine = HFEngine(model, tok)
    out = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_tokens=16, seed=3))
    comps = [c for g in out for c in g]
    ref = sequence_logprobs(model, [p for p in prompts for _ in range(2)], [c.token_ids for c in comps])
    diff = torch.cat([(torch.tensor(c.logprobs) - r).abs() for c, r in zip(comps, ref)])
    assert diff.max().item() <= 1e-4, diff.max()


def test_temperature_does_not_change_reported_logprobs(policy, prompts):
    """Logprobs are of the untempered distribution: a hot sample's tokens score as under T=1."""
    model, tok = policy
    out = HFEngine(model, tok).generate(prompts[:1], 2, SamplingConfig(temperature=2.5, max_tokens=10, seed=1))
    ref = sequence_logprobs(model, [prompts[0]] * 2, [c.token_ids for c in out[0]])
    for c, r in zip(out[0], ref):
        assert torch.allclose(torch.tensor(c.logprobs), r, atol=1e-4)


def test_eos_and_stop_strings_set_finish_reason(policy, prompts):
    model, tok = policy
    engine = HFEngine(model, tok)
    greedy = SamplingConfig(temperature=0.0, max_tokens=12)
    full = engine.generate(prompts[:1], 1, greedy)[0][0]
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    # EOS: declare the 4th greedy token an EOS id (config eos_token_id list) -> ends there, "stop".
    k = next(i for i in range(3, 12) if full.token_ids[i] not in full.token_ids[:i])
    model.config.eos_token_id = [2, full.token_ids[k]]
    try:
        ended = HFEngine(model, tok).generate(prompts[:1], 1, greedy)[0][0]
    finally:
        model.config.eos_token_id = 2
    assert ended.finish_reason == "stop"
    assert ended.token_ids == full.token_ids[:k + 1]
    assert ended.logprobs == pytest.approx(full.logprobs[:k + 1], abs=1e-5)
    assert ended.text == tok.decode(full.token_ids[:k])  # the EOS token is not in the text
    # Stop string: the text of a later greedy token; text is cut before it, tokens keep it.
    j = next(i for i in range(2, 12) if (s := tok.decode([full.token_ids[i]]).strip()).isalnum()
             and s not in tok.decode(full.token_ids[:i]))
    stop = tok.decode([full.token_ids[j]]).strip()
    cut = engine.generate(prompts[:1], 1, SamplingConfig(temperature=0.0, max_tokens=12, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.token_ids == full.token_ids[:j + 1]
    assert cut.text == full.text[:full.text.index(stop)]


def test_update_weights_copies_foreign_tensors_and_skips_own(policy):
    model, tok = policy
    other, _ = load_policy("qwen3-moe-tiny", seed=1, head_dim=32)
    engine = HFEngine(model, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.update_weights(model.named_parameters())  # own tensors: nothing changes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    try:
        engine.update_weights((f"_orig_mod.{k}", v) for k, v in other.named_parameters())
        for k, v in other.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        with pytest.raises(KeyError, match="not a parameter"):
            engine.update_weights([("model.nope.weight", torch.zeros(1))])
    finally:
        model.load_state_dict(before)


def test_rejects_bad_arguments(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="needs its tokenizer"):
        HFEngine(model)
    with pytest.raises(ValueError, match="max_batch_size"):
        HFEngine(model, tok, max_batch_size=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        HFEngine(model, tok).generate([[5], []], 1, SamplingConfig(max_tokens=2))


def test_generate_failures_are_engine_errors_naming_the_knob(policy, monkeypatch):
    model, tok = policy
    engine = HFEngine(model, tok, max_batch_size=4)

    def fail_with(exc):
        def generate(*args, **kwargs):
            raise exc
        monkeypatch.setattr(model, "generate", generate)

    fail_with(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"))
    with pytest.raises(EngineError, match=r"HFEngine.generate: out of memory on a batch of up to 4 rows x 3 prompt "
                                          r"tokens \+ max_tokens=5 .* lower max_batch_size") as info:
        engine.generate([[5, 6, 7], [8]], 3, SamplingConfig(max_tokens=5))
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    fail_with(RuntimeError("device-side assert"))
    with pytest.raises(EngineError, match=r"HFEngine.generate failed on 6 rows \(max_tokens=5\): RuntimeError: "
                                          r"device-side assert"):
        engine.generate([[5, 6, 7], [8]], 3, SamplingConfig(max_tokens=5))
    monkeypatch.undo()
    assert model.training is False  # the model's mode is restored on failure too
    assert len(engine.generate([[5]], 1, SamplingConfig(max_tokens=2))[0]) == 1


def test_sampling_settings_are_checked_where_they_are_given():
    with pytest.raises(ValueError, match=r"SamplingConfig: temperature=-1\.0 \(must be >= 0; 0 = greedy\); top_p=0\.0 "
                                         r"\(must be in \(0, 1\]\); max_tokens=0 \(must be >= 1"):
        SamplingConfig(temperature=-1.0, top_p=0.0, max_tokens=0)
    assert SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=1).temperature == 0.0


def test_copy_model_samples_from_a_private_copy_kept_exact_by_update_weights(prompts):
    model, tok = sharp_policy(seed=3)
    model.train()
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    shared, private = HFEngine(model, tok), HFEngine(model, tok, copy_model=True)
    assert shared.shares_trainer_model and not private.shares_trainer_model
    assert not HFEngine("qwen3-tiny").shares_trainer_model  # loaded by the engine: its own model
    assert private.model is not model and model.training  # the trainer's mode and grads are left alone
    assert torch.equal(model.lm_head.weight.grad, torch.ones_like(model.lm_head.weight))
    assert private.model.lm_head.weight.grad is None
    assert not any(p.requires_grad for p in private.model.parameters())
    s = SamplingConfig(temperature=1.0, max_tokens=10, seed=11)
    ids = lambda out: [[comp.token_ids for comp in g] for g in out]  # noqa: E731
    assert ids(private.generate(prompts, 2, s)) == ids(shared.generate(prompts, 2, s))
    with torch.no_grad():  # an optimizer step on the trainer's model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = shared.generate(prompts, 2, s)
    stale = private.generate(prompts, 2, s)
    assert ids(stale) != ids(after)  # the copy still holds the old weights
    private.update_weights(model.named_parameters())
    synced = private.generate(prompts, 2, s)
    assert ids(synced) == ids(after)
    for g_a, g_b in zip(after, synced):
        for a, b in zip(g_a, g_b):
            # same weights; kernels may differ in the last bits (the copy needs no grad)
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    for (name, p), (_, q) in zip(model.named_parameters(), private.model.named_parameters()):
        assert torch.equal(p, q), name
        assert p.data_ptr() != q.data_ptr()


def test_copy_model_refuses_a_sharded_policy(monkeypatch):
    import ring_lightning.rollout.hf_engine as hf

    model, tok = load_policy("qwen3-tiny")

    class FakeDTensor(torch.nn.Parameter):
        pass

    monkeypatch.setattr("torch.distributed.tensor.DTensor", FakeDTensor)
    model.lm_head.weight = FakeDTensor(model.lm_head.weight.detach().clone())
    with pytest.raises(ValueError, match="copy_model=True.*unsharded.*VLLMEngine"):
        hf.HFEngine(model, tok, copy_model=True)
