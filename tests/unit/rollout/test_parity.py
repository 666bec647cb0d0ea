"""Parity metrics: train/inference mismatch (hand-computed), the sync probe's schedule and its verdicts
(with HFEngine, so no vLLM start is needed here), for untied and tied-embedding policies, and the
parameter groups a parity error names."""

from __future__ import annotations

import math

import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.rollout.hf_engine import HFEngine
from ring_lightning.rollout.parity import SyncParityError, SyncParityProbe, sequence_logprobs, train_infer_mismatch
from unit.rollout.tied_models import TIED, tied_policy


def test_train_infer_mismatch_hand_computed():
    p = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))  # trainer
    q = torch.log(torch.tensor([[0.25, 0.25, 0.1], [0.2, 0.2, 0.3]]))  # engine
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the 0.9 / 0.1 token is padding
    m = train_infer_mismatch(p, q, mask)
    # r = p/q on real tokens: 2, 1, 0.5, 1 ; k3 = r - 1 - ln r
    k3 = [(2 - 1 - math.log(2)), 0.0, (0.5 - 1 - math.log(0.5)), 0.0]
    assert m["rollout/train_infer_kl"] == pytest.approx(sum(k3) / 4, rel=1e-5)
    assert m["rollout/train_infer_ratio_max"] == pytest.approx(2.0, rel=1e-6)
    assert m["rollout/train_infer_ratio_min"] == pytest.approx(0.5, rel=1e-6)
    same = train_infer_mismatch(p, p)
    assert same == {"rollout/train_infer_kl": 0.0, "rollout/train_infer_ratio_max": 1.0,
                    "rollout/train_infer_ratio_min": 1.0}
    with pytest.raises(ValueError, match="shape"):
        train_infer_mismatch(p, q[:, :2])
    with pytest.raises(ValueError, match="no tokens"):
        train_infer_mismatch(p, q, torch.zeros_like(mask))


def test_probe_schedule():
    probe = SyncParityProbe(always_first=2, every_n_syncs=3)
    due = []
    for _ in range(10):
        probe.syncs_seen += 1
        due.append(probe.due())
    assert [k + 1 for k, d in enumerate(due) if d] == [1, 2, 3, 6, 9]
    never = SyncParityProbe(always_first=1, every_n_syncs=0)
    never.syncs_seen = 5
    assert not never.due()


def test_sequence_logprobs_match_unbatched_forward():
    model, tok = load_policy("qwen3-tiny", seed=0)
    model.train()  # restored after the call
    prompts, comps = [[5, 6, 7], [9]], [[11, 12], [13, 14, 15, 16]]
    got = sequence_logprobs(model, prompts, comps)
    assert model.training
    for p, c, g in zip(prompts, comps, got):
        with torch.no_grad():
            model.eval()
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            model.train()
        want = torch.stack([logp[len(p) - 1 + t, c[t]] for t in range(len(c))])
        assert torch.allclose(g, want, atol=1e-5)


def test_probe_passes_in_sync_and_raises_when_out_of_sync():
    model, tok = load_policy("qwen3-moe-tiny", seed=0, head_dim=32)
    other, _ = load_policy("qwen3-moe-tiny", seed=1, head_dim=32)
    probe = SyncParityProbe(num_prompts=3, prompt_len=6, max_tokens=8, always_first=1, every_n_syncs=0)
    metrics = probe.after_sync(HFEngine(model, tok), model, step=1)
    assert set(metrics) == {"rollout/sync_logprob_diff_mean", "rollout/sync_logprob_diff_max"}
    assert metrics["rollout/sync_logprob_diff_max"] <= 1e-4
    assert probe.after_sync(HFEngine(model, tok), other, step=2) is None  # not due
    with pytest.raises(SyncParityError, match=r"HFEngine .* at step 7"):
        probe.check(HFEngine(other, tok), model, step=7)


@pytest.mark.parametrize("kind", TIED)
def test_tied_policy_syncs_into_an_engine_copy_by_state_dict(kind):
    """state_dict() names the tied head (`lm_head.weight`) besides the embedding; both are accepted."""
    model, tok = tied_policy(kind)
    engine = HFEngine(model, tok, copy_model=True)
    probe = SyncParityProbe(num_prompts=3, prompt_len=6, max_tokens=8)
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        embed.add_(torch.randn_like(embed) * 0.05)
    with pytest.raises(SyncParityError):
        probe.check(engine, model, step=1)  # the copy is stale before the sync
    engine.update_weights(model.state_dict().items())
    assert engine.model.get_output_embeddings().weight is engine.model.get_input_embeddings().weight
    assert probe.check(engine, model, step=2)["rollout/sync_logprob_diff_max"] <= 1e-4


@pytest.mark.parametrize("kind", TIED)
def test_parity_error_names_the_groups_that_differ(kind):
    model, tok = tied_policy(kind)
    engine = HFEngine(model, tok, copy_model=True)
    with torch.no_grad():  # changed in the trainer, not synced
        model.model.norm.weight.add_(0.5)
        model.model.layers[1].input_layernorm.weight.add_(0.25)
    with pytest.raises(SyncParityError) as err:
        SyncParityProbe(num_prompts=3, prompt_len=6, max_tokens=8).check(engine, model, step=5)
    msg = str(err.value)
    assert "trainer embeddings tied (tie_word_embeddings=True); engine copy: embeddings tied" in msg
    assert "weights differing engine vs trainer: model.norm (max |Δ| 0.5), model.layers.1 (max |Δ| 0.25)" in msg
    n = len(dict(model.named_parameters(remove_duplicate=False)))
    assert f"({n} of {n} tensors comparable" in msg
    assert "pass every trainer parameter to update_weights" in msg


def test_parity_error_on_the_shared_model_says_so():
    model, tok = load_policy("qwen3-tiny", seed=0)
    other, _ = load_policy("qwen3-tiny", seed=1)
    with pytest.raises(SyncParityError) as err:
        SyncParityProbe(num_prompts=2, prompt_len=6, max_tokens=8).check(HFEngine(other, tok), model, step=1)
    msg = str(err.value)
    assert "engine copy: embeddings untied" in msg and "model.embed_tokens" in msg and "lm_head" in msg
    shared = HFEngine(model, tok)
    assert shared.diagnose_sync(model) == ["trainer embeddings untied (tie_word_embeddings=False); the engine "
                                           "samples from the trainer's model object itself"]
