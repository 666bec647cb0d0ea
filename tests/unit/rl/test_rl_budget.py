"""C3PO budget selection and its layout over ranks / micro-batches, on hand-made lengths."""

import random

import pytest

from ring_lightning.rl.budget import Piece, select_all, select_budget, split_plan


def P(i, s, e):
    return Piece(i, s, e)


def test_exactly_phi_tokens_last_truncated():
    plan = select_budget([5, 3, 4, 6], 10)
    assert plan.pieces == (P(0, 0, 5), P(1, 0, 3), P(2, 0, 2))
    assert plan.n_tokens == 10 and plan.shortfall == 0 and not plan.need_more
    assert plan.dropped == (2, 3) and plan.carried == () and plan.normalizer == 10.0


def test_budget_ending_on_a_response_boundary_truncates_nothing():
    plan = select_budget([5, 3, 4, 6], 8)
    assert plan.pieces == (P(0, 0, 5), P(1, 0, 3)) and plan.dropped == (2, 3)


def test_carry_returns_unused_whole_responses_and_drops_truncated_tail():
    plan = select_budget([5, 3, 4, 6], 10, overflow="carry")
    assert plan.carried == (3,) and plan.dropped == (2,)


def test_shortest_first_and_ineligible():
    assert select_budget([5, 3, 4, 6], 10, order="shortest_first").pieces == (
        P(1, 0, 3), P(2, 0, 4), P(0, 0, 3))
    plan = select_budget([5, 3, 4, 6], 10, eligible=[True, False, True, True])
    assert plan.pieces == (P(0, 0, 5), P(2, 0, 4), P(3, 0, 1)) and plan.excluded == (1,)
    assert select_budget([0, 4], 3).excluded == (0,)  # empty responses are never selected


def test_random_order_is_reproducible_and_seeded():
    lengths = [3] * 12
    a = select_budget(lengths, 9, order="random", seed=5)
    assert a == select_budget(lengths, 9, order="random", seed=5)
    perm = list(range(12))
    random.Random(5).shuffle(perm)
    assert [p.index for p in a.pieces] == perm[:3]
    assert [p.index for p in a.pieces] != [0, 1, 2]
    orders = {tuple(p.index for p in select_budget(lengths, 9, order="random", seed=s).pieces)
              for s in range(5)}
    assert len(orders) > 1


def test_carried_in_responses_come_first_even_in_random_order():
    plan = select_budget([2, 2, 3, 3, 3, 3], 6, order="random", seed=1, n_carried_in=2)
    assert [p.index for p in plan.pieces[:2]] == [0, 1]
    assert plan.n_tokens == 6


def test_shortfall_signals_need_more_and_split_refuses():
    plan = select_budget([2, 3], 10)
    assert plan.need_more and plan.shortfall == 5 and plan.n_tokens == 5
    with pytest.raises(ValueError, match="5 tokens short"):
        split_plan(plan, 1, [1, 1])


def test_split_across_two_ranks_at_token_boundary():
    plan = select_budget([4, 3, 5], 12)
    step = split_plan(plan, 2, [2, 2, 2])
    assert step.micro_batches == (((P(0, 0, 4), P(1, 0, 2)),), ((P(1, 2, 3), P(2, 0, 5)),))
    assert step.normalizer == 6.0  # mean-reduced gradients: Φ / world
    assert split_plan(plan, 2, [2, 2, 2], grad_reduce="sum").normalizer == 12.0


def test_split_across_three_ranks():
    step = split_plan(select_budget([4, 3, 5], 12), 3, [1, 1, 1])
    assert step.micro_batches == (((P(0, 0, 4),),), ((P(1, 0, 3), P(2, 0, 1)),),
                                  ((P(2, 1, 5),),))
    assert [step.rank_tokens(r) for r in range(3)] == [4, 4, 4]


def test_phi_must_divide_by_world_size():
    with pytest.raises(ValueError, match="phi=10 is not divisible by world_size=3"):
        split_plan(select_budget([5, 5, 5], 10), 3, [1, 1, 1])


def test_micro_batches_respect_cap_and_equal_count_per_rank():
    lengths = [30, 2, 2, 2, 2, 2, 2, 2, 20, 16]
    prompts = [4] * len(lengths)
    plan = select_budget(lengths, 64)  # 30 + 7 * 2 + 20 = 64; response 9 dropped
    step = split_plan(plan, 2, prompts, micro_batch_tokens=24)
    assert [step.rank_tokens(r) for r in range(2)] == [32, 32]
    # rank 0: rows 33 (over the cap: alone) and 5; rank 1: row 23 alone, then rows of 5 four at a
    # time (4 x 5 <= 24); rank 0 is padded with an empty micro-batch to 3
    assert step.micro_batches == (
        ((P(0, 0, 30),), (P(1, 0, 2),), ()),
        ((P(8, 0, 20),), (P(2, 0, 2), P(3, 0, 2), P(4, 0, 2), P(5, 0, 2)),
         (P(6, 0, 2), P(7, 0, 2))),
    )
    assert step.num_micro_batches == 3


def test_micro_batch_hand_layout():
    # rows (prompt 2 + end - 1): 6, 3, 3, 2 ; cap 6 -> [6], [3, 3], [2]
    plan = select_budget([5, 2, 2, 1], 10)
    step = split_plan(plan, 1, [2, 2, 2, 2], micro_batch_tokens=6)
    assert step.micro_batches == (((P(0, 0, 5),), (P(1, 0, 2), P(2, 0, 2)), (P(3, 0, 1),)),)
    # two ranks: rank 0 gets [0], rank 1 gets [1, 2, 3]; rank 0 is padded with an empty one
    step2 = split_plan(select_budget([5, 2, 2, 1], 10), 2, [2, 2, 2, 2], micro_batch_tokens=6)
    assert step2.micro_batches == (((P(0, 0, 5),), ()),
                                   ((P(1, 0, 2), P(2, 0, 2)), (P(3, 0, 1),)))


def test_grpo_select_all_and_sequence_split():
    plan = select_all([5, 3, 4, 6], eligible=[True, True, False, True])
    assert plan.pieces == (P(0, 0, 5), P(1, 0, 3), P(3, 0, 6))
    assert plan.loss_agg == "seq_mean_token_mean" and plan.normalizer == 3.0
    step = split_plan(plan, 2, [1, 1, 1, 1])
    assert step.micro_batches == (((P(3, 0, 6),),), ((P(0, 0, 5), P(1, 0, 3)),))
    assert step.normalizer == 1.5
