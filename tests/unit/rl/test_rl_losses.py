"""Policy loss and token logprobs/entropy against hand-computed values."""

import math

import pytest
import torch

from ring_lightning.rl.losses import policy_loss, token_logprobs_and_entropy

L = math.log


def lp(*ratios):
    """Current logprobs with old = 0, so exp(logp - old) is the given ratio."""
    return torch.tensor([[L(r) for r in ratios]], dtype=torch.float64, requires_grad=True)


def test_clipped_surrogate_inside_and_outside_the_clip_range():
    logp = lp(1.5, 1.5, 0.5, 0.5, 1.1)
    old = torch.zeros(1, 5, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss, m = policy_loss(logp, old, adv, mask, normalizer=10.0)
    # per token: -min(1.5, 1.2) = -1.2 ; -min(-1.5, -1.2) = 1.5 ; -min(-0.5, -0.8) = 0.8 ;
    #            -min(0.5, 0.8) = -0.5 ; -min(2.2, 2.2) = -2.2   -> sum -1.6, / 10
    assert loss.item() == pytest.approx(-0.16)
    assert m["clip/high_frac"].item() == pytest.approx(1 / 5)
    assert m["clip/low_frac"].item() == pytest.approx(1 / 5)
    assert m["ratio/max"].item() == pytest.approx(1.5)
    assert m["ratio/min"].item() == pytest.approx(0.5)
    loss.backward()
    # clipped tokens (0 and 2) carry no gradient; d(-r A)/dlogp = -r A elsewhere, / 10
    torch.testing.assert_close(logp.grad, torch.tensor([[0, 0.15, 0, -0.05, -0.22]],
                                                       dtype=torch.float64))


def test_asymmetric_clip_higher():
    logp = lp(1.5, 0.5)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    loss, _ = policy_loss(logp, torch.zeros(1, 2, dtype=torch.float64), adv,
                          torch.ones(1, 2), normalizer=1.0, clip_eps_low=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.28 + 0.8)


def test_k3_kl_value_and_gradient():
    logp = torch.tensor([[L(0.5)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[L(0.25)]], dtype=torch.float64)
    loss, m = policy_loss(logp, None, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1),
                          normalizer=1.0, ref_logprobs=ref, kl_coef=1.0)
    # d = ref - logp = log 0.5 ; k3 = 0.5 - log 0.5 - 1 = 0.193147
    assert m["kl/ref_k3_mean"].item() == pytest.approx(0.5 + L(2) - 1)
    assert loss.item() == pytest.approx(0.5 + L(2) - 1)
    loss.backward()  # d k3 / d logp = 1 - exp(ref - logp) = 0.5
    assert logp.grad.item() == pytest.approx(0.5)


def test_aggregations_hand_case():
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)  # ratio 1 (on-policy)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)  # [B]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # per-token pg = -A: row 0: -1, -1, -1 ; row 1: 2
    seq, _ = policy_loss(logp, None, adv, mask, 2.0, loss_agg="seq_mean_token_mean")
    assert seq.item() == pytest.approx((-1 + 2) / 2)
    tok, _ = policy_loss(logp, None, adv, mask, 8.0)
    assert tok.item() == pytest.approx((-3 + 2) / 8)
    mean, _ = policy_loss(logp, None, adv, mask, 123.0, loss_agg="token_mean")
    assert mean.item() == pytest.approx((-3 + 2) / 4)


def test_entropy_bonus_sign():
    logp = torch.zeros(1, 2, dtype=torch.float64)
    ent = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    loss, m = policy_loss(logp, None, torch.zeros(1), torch.ones(1, 2), 1.0, entropy=ent,
                          entropy_coef=0.5)
    assert loss.item() == pytest.approx(-1.5)
    assert m["entropy/mean"].item() == pytest.approx(1.5)
    assert m["loss/entropy_bonus"].item() == pytest.approx(-1.5)


def test_truncated_importance_sampling_weights():
    logp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    eng = torch.tensor([[-L(2.0), -L(0.5), 0.0]], dtype=torch.float64)  # π_old/π_eng = 2, .5, 1
    loss, m = policy_loss(logp, old, torch.ones(1, 3), torch.ones(1, 3), 1.0,
                          engine_logprobs=eng, tis_cap=1.5)
    assert loss.item() == pytest.approx(-(1.5 + 0.5 + 1.0))
    assert m["tis/capped_frac"].item() == pytest.approx(1 / 3)
    assert m["tis/weight_mean"].item() == pytest.approx(1.0)


def test_icepop_masks_tokens_outside_the_range():
    logp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    eng = torch.tensor([[-L(2.0), -L(0.5), 0.0, -L(1.2)]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 4), 1.0, engine_logprobs=eng,
                          icepop_range=(0.8, 1.25))
    assert loss.item() == pytest.approx(-(3.0 + 4.0))  # only tokens 2 and 3 survive
    assert m["icepop/masked_frac"].item() == pytest.approx(0.5)
    loss.backward()
    assert logp.grad.tolist() == [[0.0, 0.0, -3.0, -4.0]]


def test_mismatch_options_need_engine_logprobs():
    with pytest.raises(ValueError, match="need engine_logprobs"):
        policy_loss(torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), 1.0, tis_cap=2.0)


def test_logprobs_and_entropy_hand_case_and_temperature():
    logits = torch.tensor([[[0.0, L(3.0)]]], dtype=torch.float64)  # p = [0.25, 0.75]
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(L(0.75))
    assert ent.item() == pytest.approx(-(0.25 * L(0.25) + 0.75 * L(0.75)))
    # temperature 0.5 doubles the logits: p ∝ [1, 9]
    logp, _ = token_logprobs_and_entropy(logits, torch.tensor([[1]]), temperature=0.5)
    assert logp.item() == pytest.approx(L(0.9))


def test_chunked_matches_naive_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    w1, w2 = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g,
                                                                              dtype=torch.float64)
    before = logits.detach().clone()
    logp, ent = token_logprobs_and_entropy(logits, targets, temperature=0.7, chunk_size=3)
    (logp * w1 + ent * w2).sum().backward()
    assert torch.equal(logits.detach(), before)  # in-place chunk math never touches the input
    got = logits.grad.clone()
    logits.grad = None
    lsm = torch.log_softmax(logits / 0.7, -1)
    ref_lp = lsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(lsm.exp() * lsm).sum(-1)
    torch.testing.assert_close(logp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    (ref_lp * w1 + ref_ent * w2).sum().backward()
    torch.testing.assert_close(got, logits.grad)


def test_bf16_logits_are_upcast_and_fp32_input_is_not_mutated():
    logits = torch.randn(1, 3, 5).to(torch.bfloat16)
    logp, ent = token_logprobs_and_entropy(logits, torch.zeros(1, 3, dtype=torch.long))
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    x = torch.randn(2, 4, 6, requires_grad=True)  # float32: the chunk copy must still be a copy
    before = x.detach().clone()
    lp32, ent32 = token_logprobs_and_entropy(x, torch.ones(2, 4, dtype=torch.long), chunk_size=4)
    (lp32.sum() + ent32.sum()).backward()
    assert torch.equal(x.detach(), before) and x.grad.dtype == torch.float32


def _sgd_step(param, loss_fn, lr=0.5):
    loss = loss_fn(param)
    loss.backward()
    with torch.no_grad():
        param -= lr * param.grad
    param.grad = None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_advantage_sign_moves_sampled_token_logprob(sign):
    logits = torch.tensor([[[0.3, -0.2, 0.1, 0.0]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[2]])
    before = token_logprobs_and_entropy(logits, target)[0].item()

    def loss_fn(z):
        logp, ent = token_logprobs_and_entropy(z, target)
        return policy_loss(logp, None, torch.tensor([sign], dtype=torch.float64),
                           torch.ones(1, 1), 1.0, entropy=ent, ref_logprobs=logp.detach())[0]

    _sgd_step(logits, loss_fn)
    after = token_logprobs_and_entropy(logits, target)[0].item()
    assert (after - before) * sign > 1e-3


def test_entropy_term_alone_raises_entropy():
    logits = torch.tensor([[[2.0, -1.0, 0.5, 0.0]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0]])
    before = token_logprobs_and_entropy(logits, target)[1].item()

    def loss_fn(z):
        logp, ent = token_logprobs_and_entropy(z, target)
        return policy_loss(logp, None, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1),
                           1.0, entropy=ent, entropy_coef=1.0)[0]

    _sgd_step(logits, loss_fn)
    assert token_logprobs_and_entropy(logits, target)[1].item() > before + 1e-3


def test_non_finite_values_at_masked_positions_do_not_leak():
    logp = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ent = torch.tensor([[1.0, float("nan")]], dtype=torch.float64)
    adv = torch.tensor([[1.0, float("inf")]], dtype=torch.float64)
    loss, m = policy_loss(logp, None, adv, torch.tensor([[True, False]]), 1.0, entropy=ent,
                          entropy_coef=0.5)
    assert loss.item() == pytest.approx(-1.0 - 0.5)
    assert m["entropy/mean"].item() == pytest.approx(1.0)
    loss.backward()
    assert logp.grad.tolist() == [[-1.0, 0.0]]


def test_icepop_does_not_change_the_sequence_denominator():
    logp = torch.zeros(1, 2, dtype=torch.float64)
    eng = torch.tensor([[0.0, -L(3.0)]], dtype=torch.float64)  # token 1: π_old/π_eng = 3, masked
    loss, _ = policy_loss(logp, torch.zeros(1, 2, dtype=torch.float64),
                          torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 2), 1.0,
                          loss_agg="seq_mean_token_mean", engine_logprobs=eng,
                          icepop_range=(0.5, 2.0))
    assert loss.item() == pytest.approx(-2.0 / 2)  # one surviving token over the 2 of the sequence
