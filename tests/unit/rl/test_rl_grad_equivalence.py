"""The C3PO loss layout is exact: gradients summed (or DDP-averaged) over simulated ranks and
micro-batches equal the gradient of the single-batch loss over the same Φ tokens (float64)."""

import pytest
import torch
from torch import nn

from ring_lightning.rl.advantages import assign_advantages
from ring_lightning.rl.batch import MicroBatch, Response, build_rank_batch, collate
from ring_lightning.rl.budget import select_all, select_budget, split_plan
from ring_lightning.rl.losses import policy_loss, token_logprobs_and_entropy

V = 11


class TinyCausal(nn.Module):
    """Causal toy LM: logits at t depend on tokens 0..t (running mean of embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 6)
        self.out = nn.Linear(6, V)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, V]
        h = self.emb(input_ids).cumsum(1)  # [B, T, d]
        h = h / torch.arange(1, input_ids.shape[1] + 1, dtype=h.dtype).unsqueeze(-1)
        return self.out(torch.tanh(h))


def make_responses(seed: int) -> list[Response]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, n) in enumerate([(3, 7), (2, 5), (4, 9), (1, 6), (2, 8), (3, 4), (2, 6), (5, 3)]):
        gen = lambda k: torch.randn(k, generator=g, dtype=torch.float64) * 0.3 - 1.5  # noqa: E731
        out.append(Response(
            prompt_ids=torch.randint(1, V, (p,), generator=g),
            response_ids=torch.randint(1, V, (n,), generator=g),
            reward=float(torch.rand(1, generator=g) > 0.5), group_id=i // 4,
            old_logprobs=gen(n), engine_logprobs=gen(n), ref_logprobs=gen(n)))
    return list(assign_advantages(out))


def micro_loss(model: nn.Module, mb: MicroBatch) -> torch.Tensor:
    logits = model(mb.input_ids)  # [B, T, V]
    logp, ent = token_logprobs_and_entropy(logits, mb.target_ids, temperature=0.9, chunk_size=5)
    loss, _ = policy_loss(logp, mb.old_logprobs_for(logp), mb.advantages, mb.loss_mask,
                          mb.normalizer, loss_agg=mb.loss_agg, ref_logprobs=mb.ref_logprobs,
                          kl_coef=0.1, entropy=ent, entropy_coef=0.05,
                          engine_logprobs=mb.engine_logprobs, tis_cap=1.2,
                          icepop_range=(0.6, 1.6), clip_eps_high=0.28)
    return loss


def grads(model: nn.Module, mbs) -> list[torch.Tensor]:
    model.zero_grad()
    for mb in mbs:
        micro_loss(model, mb).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.fixture()
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCausal().double()


@pytest.mark.parametrize("grad_reduce", ["sum", "mean"])
def test_two_ranks_two_micro_batches_equal_one_batch(model, grad_reduce):
    rs = make_responses(1)
    plan = select_budget([r.length for r in rs], 40)  # 7+5+9+6+8+4 = 39, then 1 of 6
    assert plan.n_tokens == 40 and plan.pieces[-1].end < rs[plan.pieces[-1].index].length
    reference = grads(model, [collate(rs, plan.pieces, plan.normalizer)])

    step = split_plan(plan, 2, [r.prompt_ids.numel() for r in rs], micro_batch_tokens=24,
                      grad_reduce=grad_reduce)
    assert step.num_micro_batches == 2
    assert [step.rank_tokens(k) for k in range(2)] == [20, 20]
    split = [p for rank in step.micro_batches for mb in rank for p in mb]
    assert len({p.index for p in split}) < len(split)  # one response is split across ranks
    per_rank = [grads(model, build_rank_batch(rs, step, k).micro_batches) for k in range(2)]
    for i, ref in enumerate(reference):
        total = per_rank[0][i] + per_rank[1][i]
        got = total if grad_reduce == "sum" else total / 2  # DDP averages over ranks
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert any(ref.abs().max() > 1e-3 for ref in reference)


def test_grpo_sequence_mean_is_layout_invariant(model):
    rs = make_responses(2)
    plan = select_all([r.length for r in rs])
    reference = grads(model, [collate(rs, plan.pieces, plan.normalizer, plan.loss_agg)])
    step = split_plan(plan, 2, [r.prompt_ids.numel() for r in rs], micro_batch_tokens=20)
    assert step.num_micro_batches > 1 and step.normalizer == len(rs) / 2
    per_rank = [grads(model, build_rank_batch(rs, step, k).micro_batches) for k in range(2)]
    for i, ref in enumerate(reference):
        torch.testing.assert_close((per_rank[0][i] + per_rank[1][i]) / 2, ref, atol=1e-6, rtol=0)


def test_empty_micro_batch_contributes_zero_gradient(model):
    rs = make_responses(3)
    dummy = collate(rs, [], normalizer=5.0)
    assert dummy.engine_logprobs.shape == (1, 1) and dummy.ref_logprobs.shape == (1, 1)
    g = grads(model, [dummy])
    assert all(t.abs().max() == 0 for t in g)
