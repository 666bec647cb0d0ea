"""Collate (alignment, padding, loss mask on the selected slice), advantages kept through
truncation, carry-over with old logprobs, validation errors."""

import pytest
import torch

from ring_lightning.rl.advantages import assign_advantages
from ring_lightning.rl.batch import Response, build_rank_batch, carry_over, collate
from ring_lightning.rl.budget import Piece, select_budget, split_plan


def T(*xs, dtype=torch.long):
    return torch.tensor(xs, dtype=dtype)


def test_collate_aligns_targets_and_masks_only_the_piece():
    r0 = Response(prompt_ids=T(11, 12), response_ids=T(21, 22, 23), reward=1.0, group_id=0,
                  advantage=0.5, old_logprobs=T(-1.0, -2.0, -3.0, dtype=torch.float32))
    r1 = Response(prompt_ids=T(13), response_ids=T(31, 32), reward=0.0, group_id=0,
                  advantage=-0.5)
    mb = collate([r0, r1], [Piece(0, 1, 3), Piece(1, 0, 2)], normalizer=4.0, pad_id=0)
    # r0: s = [11, 12, 21, 22, 23]; r1: s = [13, 31, 32]; T = 5 - 1
    assert mb.input_ids.tolist() == [[11, 12, 21, 22], [13, 31, 0, 0]]
    assert mb.target_ids.tolist() == [[12, 21, 22, 23], [31, 32, 0, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    # r0's piece is response tokens 1..2 (22, 23) -> target positions 2, 3
    assert mb.loss_mask.tolist() == [[False, False, True, True], [True, True, False, False]]
    assert mb.advantages.tolist() == [[0, 0, 0.5, 0.5], [-0.5, -0.5, 0, 0]]
    assert mb.old_known.tolist() == [True, False]
    assert mb.old_logprobs[0].tolist() == [0, 0, -2.0, -3.0]
    cur = torch.full((2, 4), -0.25, requires_grad=True)
    old = mb.old_logprobs_for(cur)
    assert old.tolist() == [[0, 0, -2.0, -3.0], [-0.25] * 4] and not old.requires_grad
    assert mb.engine_logprobs is None and mb.ref_logprobs is None
    assert mb.sample_index.tolist() == [0, 1] and mb.num_loss_tokens == 4
    assert mb.normalizer == 4.0


def test_empty_micro_batch_is_a_dummy_row_without_loss():
    mb = collate([], [], normalizer=2.0, pad_id=7)
    assert mb.input_ids.tolist() == [[7]] and mb.attention_mask.tolist() == [[1]]
    assert mb.num_loss_tokens == 0 and mb.sample_index.tolist() == [-1]


def test_truncated_response_keeps_full_group_advantage():
    # one group of 4 with rewards [1, 0, 0, 1]: advantages ±sqrt(3)/2 from the *full* group
    rs = [Response(prompt_ids=T(1), response_ids=torch.arange(2, 2 + n), reward=rw, group_id=0)
          for n, rw in [(4, 1.0), (4, 0.0), (4, 0.0), (4, 1.0)]]
    rs = assign_advantages(rs)
    plan = select_budget([r.length for r in rs], 10)  # 4 + 4 + 2 of the third
    assert plan.pieces[-1] == Piece(2, 0, 2)
    mb = collate(rs, plan.pieces, plan.normalizer)
    row = mb.advantages[2][mb.loss_mask[2]]
    assert row.tolist() == pytest.approx([-0.866025, -0.866025], abs=1e-5)
    assert mb.num_loss_tokens == 10


def test_carried_responses_come_first_next_step_with_their_old_logprobs():
    def fresh(gid, n, base):
        return Response(prompt_ids=T(1, 2), response_ids=torch.arange(3, 3 + n), reward=0.0,
                        group_id=gid, engine_logprobs=torch.full((n,), base))

    step1 = [fresh(0, 3, -0.1), fresh(0, 3, -0.2), fresh(0, 3, -0.3), fresh(0, 3, -0.4)]
    plan1 = select_budget([r.length for r in step1], 6, overflow="carry")
    assert plan1.carried == (2, 3)
    carried = carry_over(step1, plan1.carried)
    assert [r.age for r in carried] == [1, 1]
    assert carried[0].old_logprobs.tolist() == pytest.approx([-0.3] * 3)  # behaviour policy
    step2 = list(carried) + [fresh(1, 3, -0.5), fresh(1, 3, -0.6)]
    plan2 = select_budget([r.length for r in step2], 6, order="random", seed=3,
                          n_carried_in=len(carried))
    assert [p.index for p in plan2.pieces] == [0, 1]
    mb = collate(step2, plan2.pieces, plan2.normalizer)
    assert mb.old_known.tolist() == [True, True]
    assert mb.old_logprobs[mb.loss_mask].tolist() == pytest.approx([-0.3] * 3 + [-0.4] * 3)
    # too old: a second carry-over past max_age=1 drops them
    assert carry_over(step2, (0, 1), max_age=1) == ()


def test_carry_without_any_behaviour_logprobs_is_an_error():
    r = Response(prompt_ids=T(1), response_ids=T(2), reward=0.0, group_id=0, prompt_id="row-9")
    with pytest.raises(ValueError, match="row-9.*neither old_logprobs nor engine_logprobs"):
        carry_over([r], (0,))


def test_build_rank_batch_and_errors():
    rs = [Response(prompt_ids=T(1), response_ids=torch.arange(2, 2 + n), reward=0.0, group_id=0,
                   ref_logprobs=torch.zeros(n)) for n in (4, 3, 5)]
    step = split_plan(select_budget([4, 3, 5], 12), 2, [1, 1, 1])
    b1 = build_rank_batch(rs, step, rank=1)
    assert len(b1.micro_batches) == 1 and b1.budget == 12 and b1.world_size == 2
    assert b1.micro_batches[0].num_loss_tokens == 6 and b1.micro_batches[0].normalizer == 6.0
    with pytest.raises(ValueError, match="rank 2 outside"):
        build_rank_batch(rs, step, rank=2)
    mixed = [rs[0], rs[1].replace(ref_logprobs=None)]
    with pytest.raises(ValueError, match="responses \\[1\\] lack ref_logprobs"):
        collate(mixed, [Piece(0, 0, 4), Piece(1, 0, 3)], 1.0)
    with pytest.raises(ValueError, match="response 0 is invalid"):
        collate([rs[0].replace(valid=False)], [Piece(0, 0, 4)], 1.0)
    with pytest.raises(ValueError, match="runs past its 4 tokens"):
        collate(rs, [Piece(0, 0, 5)], 1.0)


def test_response_validation_names_the_field():
    with pytest.raises(ValueError, match="old_logprobs must be a 1-D float tensor of length 2"):
        Response(prompt_ids=T(1), response_ids=T(2, 3), reward=0.0, group_id=0,
                 old_logprobs=torch.zeros(3))
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        Response(prompt_ids=T(), response_ids=T(2), reward=0.0, group_id=0)
