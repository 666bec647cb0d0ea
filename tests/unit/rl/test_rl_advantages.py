"""Group advantages, hand-computed: ddof, zero-std groups, invalid samples, Dr.GRPO, RLOO."""

import math

import pytest
import torch

from ring_lightning.rl.advantages import assign_advantages, group_advantages
from ring_lightning.rl.batch import Response

S3 = math.sqrt(3) / 2  # 0.5 / sqrt(1/3): deviation 0.5 over the sample std of [1, 0, 0, 1]


def test_sample_std_two_interleaved_groups():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([7, 7, 3, 7, 7, 3])  # arbitrary ids, interleaved
    adv = group_advantages(rewards, groups)
    # group 7: [1, 0, 0, 1], mean 0.5, sample std sqrt(1/3) -> ±sqrt(3)/2
    # group 3: [3, 5], mean 4, sample std sqrt(2) -> ∓1/sqrt(2)
    expect = [S3, -S3, -1 / math.sqrt(2), -S3, S3, 1 / math.sqrt(2)]
    torch.testing.assert_close(adv, torch.tensor(expect), atol=1e-5, rtol=0)


def test_population_std_and_grid_shape():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), std_ddof=0)
    assert adv.shape == (2, 4)
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]),
                               atol=1e-5, rtol=0)


def test_zero_std_group_is_exactly_zero():
    # 0.1 * 3 is not exactly representable: the mean is off by an ulp, but the advantage must be 0.
    adv = group_advantages(torch.tensor([[0.1, 0.1, 0.1]], dtype=torch.float64), eps=1e-12)
    assert adv.abs().max().item() == 0.0


def test_invalid_samples_excluded_from_statistics_and_zeroed():
    rewards = torch.tensor([1.0, 0.0, 100.0, float("nan")])
    valid = torch.tensor([True, True, False, False])
    adv = group_advantages(rewards, torch.tensor([0, 0, 0, 0]), valid=valid)
    r2 = 1 / math.sqrt(2)  # valid [1, 0]: mean 0.5, sample std sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([r2, -r2, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_single_valid_sample_gets_zero():
    adv = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]),
                           valid=torch.tensor([True, False]))
    assert adv.tolist() == [0.0, 0.0]


def test_non_finite_valid_reward_is_an_error():
    with pytest.raises(ValueError, match="non-finite rewards at valid samples \\[1\\]"):
        group_advantages(torch.tensor([1.0, float("inf")]), torch.tensor([0, 0]))


def test_dr_grpo_and_leave_one_out():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(group_advantages(r, scale="none"),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5]]))
    # RLOO: 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(group_advantages(r, scale="none", baseline="leave_one_out"),
                               torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="need group_ids"):
        group_advantages(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.tensor([[1.0, 0.0]]), scale="max")


def test_assign_advantages_uses_group_and_valid():
    def resp(reward, group, valid=True):
        return Response(prompt_ids=torch.tensor([1]), response_ids=torch.tensor([2, 3]),
                        reward=reward, group_id=group, valid=valid)

    rs = [resp(1, 0), resp(0, 0), resp(0, 0), resp(1, 0), resp(1, 1), resp(0, 1, valid=False)]
    out = assign_advantages(rs)
    assert [r.advantage for r in out] == pytest.approx([S3, -S3, -S3, S3, 0, 0], abs=1e-5)
    assert out[0].response_ids is rs[0].response_ids  # copies share the token tensors
