"""NonFiniteGuard: skip decisions, counters, abort message, checkpoint state."""

import math

import pytest
import torch

from ring_lightning.modules.nonfinite import NonFiniteError, NonFiniteGuard


def test_finite_steps_pass_and_reset_the_run():
    g = NonFiniteGuard(max_consecutive=3, where="SFTModule")
    assert g.step_ok(torch.tensor(1.0), 2.0, step=0)
    assert not g.step_ok(torch.tensor(float("nan")), 2.0, step=1)
    assert (g.skipped_total, g.consecutive) == (1, 1)
    assert not g.step_ok(1.0, math.inf, step=2)
    assert (g.skipped_total, g.consecutive) == (2, 2)
    assert g.step_ok(1.0, 1.0, step=3)  # a finite step ends the run of bad ones
    assert (g.skipped_total, g.consecutive) == (2, 0)
    assert g.metrics() == {"train/nonfinite_skipped": 2.0, "train/nonfinite_consecutive": 0.0}


def test_aborts_after_max_consecutive_with_a_clear_message():
    g = NonFiniteGuard(max_consecutive=2, where="RLModule")
    assert not g.step_ok(float("nan"), 1.0, step=7)
    with pytest.raises(NonFiniteError, match=r"RLModule: 2 optimizer steps in a row .* global step 8: loss=1, grad_norm=inf"):
        g.step_ok(1.0, float("inf"), step=8)


def test_disabled_guard_applies_everything():
    g = NonFiniteGuard(max_consecutive=0)
    assert g.step_ok(float("nan"), float("nan"), step=0)
    assert g.skipped_total == 0
    with pytest.raises(ValueError, match="max_consecutive"):
        NonFiniteGuard(max_consecutive=-1)


def test_drop_grads_leaves_adamw_state_untouched():
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    moments = [opt.state[p]["exp_avg"].clone() for p in lin.parameters()]
    lin(torch.full((1, 3), float("nan"))).sum().backward()
    NonFiniteGuard.drop_grads(lin)
    opt.step()
    for k, v in lin.state_dict().items():
        assert torch.equal(v, before[k])
    for p, m in zip(lin.parameters(), moments):
        assert torch.equal(opt.state[p]["exp_avg"], m)


def test_state_round_trip():
    g = NonFiniteGuard()
    g.step_ok(float("nan"), 1.0, step=0)
    h = NonFiniteGuard()
    h.load_state_dict(g.state_dict())
    assert (h.skipped_total, h.consecutive) == (1, 1)


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    from ring_lightning.modules.rng_state import collect_rng_states, restore_rng_states

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"rng": collect_rng_states()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    states = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]  # as Lightning resumes
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert restore_rng_states(states)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert not restore_rng_states(None)
