"""RolloutDataModule, PromptStream and the built-in RL tasks, with a deterministic fake engine and
reward (the engine seam is a protocol; the real vLLM engine and router run in the integration test)."""

import ast
import operator
import time
import warnings
from collections import Counter

import pytest
import torch
from unit.rl_fixtures import FakeEngine, ParityReward

from ring_lightning.data.rollouts.stream import PromptSource, PromptStream
from ring_lightning.data.synthetic.rl_tasks import RL_TASKS, rl_task_rows
from ring_lightning.data.rollouts.datamodule import RolloutDataModule, RolloutRequest
from ring_lightning.rl.objectives import C3PO, GRPO
from ring_lightning.models.loading import load_tokenizer

TOK = load_tokenizer()


def make_dm(phi=60, mode="c3po", overflow="drop", L=4, K=4, world=1, rank=0, logprob_fn=None, mbt=None, **kw):
    sources = kw.pop("sources", {"arith": PromptSource(task="arithmetic_steps", size=40),
                                 "count": PromptSource(task="countdown", size=40)})
    dm = RolloutDataModule(sources=sources, engine=kw.pop("engine", FakeEngine()), reward=ParityReward(),
                           prompts_per_step=L, samples_per_prompt=K, max_response_tokens=12, **kw)
    dm.setup("fit")
    objective = C3PO(token_budget=phi, overflow=overflow) if mode == "c3po" else GRPO()
    dm.bind(None, TOK, objective, micro_batch_tokens=mbt, rank=rank, world_size=world, logprob_fn=logprob_fn)
    return dm


def loss_tokens(batch) -> int:
    return sum(mb.num_loss_tokens for mb in batch.micro_batches)


def _eval(node):
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return ops[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError(node)


def test_rl_tasks_rows_are_valid_deterministic_and_correct():
    for task in RL_TASKS:
        rows = rl_task_rows(task, 30, seed=3)
        assert len(rows) == 30 and len({r.id for r in rows}) == 30
        assert [r.to_dict() for r in rows] == [r.to_dict() for r in rl_task_rows(task, 30, seed=3)]
        assert {r.domain for r in rows} <= {"math", "logic", "instruction"}
    rows = rl_task_rows("arithmetic_steps", 50, min_ops=1, max_ops=1, max_operand=9)
    for r in rows:
        expr = r.meta["expression"]
        assert sum(expr.count(c) for c in "+-*") == 1
        assert int(r.answer) == _eval(ast.parse(expr, mode="eval"))
        assert "\\boxed{}" in r.prompt_text
    instr = rl_task_rows("instruction", 20)
    assert all(r.instructions and r.instructions[0]["id"] for r in instr)
    only = rl_task_rows("instruction", 40, kinds=["lowercase", "no_comma"])
    assert {r.instructions[0]["id"] for r in only} == {"change_case:english_lowercase", "punctuation:no_comma"}
    with pytest.raises(ValueError, match="unknown built-in RL task"):
        rl_task_rows("chess", 3)
    with pytest.raises(ValueError, match="only .* distinct prompts"):
        rl_task_rows("arithmetic_steps", 500, min_ops=1, max_ops=1, max_operand=2)


def test_prompt_stream_mixture_epochs_stages_and_resume():
    a = rl_task_rows("arithmetic_steps", 50)
    b = rl_task_rows("countdown", 50)
    stream = PromptStream({"a": a, "b": b}, {"mix": {"a": 3, "b": 1}, "only_b": {"b": 1}}, "mix", seed=5)
    first = stream.draw(400)
    counts = Counter(r.meta["task"] for r in first)
    assert 0.68 < counts["arithmetic"] / 400 < 0.82
    ids_a = [r.id for r in first if r.meta["task"] == "arithmetic"]
    assert len(set(ids_a[:50])) == 50  # no repeat within an epoch of a source
    state = stream.state_dict()
    cont = [r.id for r in stream.draw(30)]
    other = PromptStream({"a": a, "b": b}, {"mix": {"a": 3, "b": 1}, "only_b": {"b": 1}}, "mix", seed=5)
    other.load_state_dict(state)
    assert [r.id for r in other.draw(30)] == cont
    other.set_stage("only_b")
    assert {r.meta["task"] for r in other.draw(20)} == {"countdown"}
    with pytest.raises(KeyError, match="unknown RL stage 'nope'"):
        other.set_stage("nope")
    with pytest.raises(ValueError, match="unknown prompt sources"):
        PromptStream({"a": a}, {"s": {"zzz": 1}}, "s")
    with pytest.raises(ValueError, match="has 50 rows but had 49"):
        bad = dict(state, sizes={"a": 49, "b": 50})
        other.load_state_dict(bad)


def test_c3po_step_has_exactly_phi_tokens_and_metrics():
    dm = make_dm(phi=60, mbt=48)
    for _ in range(3):
        batch = dm.next_rollout()
        assert loss_tokens(batch) == 60 == batch.budget
        assert batch.metrics["budget/loss_tokens"] == 60
        assert batch.metrics["budget/responses_truncated"] <= 1
        for mb in batch.micro_batches:
            assert mb.normalizer == 60.0 and mb.loss_agg == "token_sum_over_constant"
            assert mb.input_ids.numel() <= 48 or mb.input_ids.shape[0] == 1
        m = batch.metrics
        assert m["rollout/prompts"] == 4 and m["rollout/responses"] == 16
        assert 0 <= m["reward/mean"] <= 1
        assert m.get("reward/math/count", 0) + m.get("reward/logic/count", 0) == 16
        assert m["budget/responses_used"] + m["budget/responses_dropped"] == 16
    # the request stream is a ticket per step, never data
    it = iter(dm.train_dataloader())
    assert next(it) == RolloutRequest(0) and next(it) == RolloutRequest(1)


def test_short_step_refills_then_errors_when_still_short():
    dm = make_dm(phi=500, L=4, K=4)  # 16 responses × ≤12 tokens < 500: needs more prompts
    batch = dm.next_rollout()
    assert loss_tokens(batch) == 500
    assert batch.metrics["rollout/refill_rounds"] >= 1
    assert batch.metrics["rollout/prompts"] == 4 * (1 + batch.metrics["rollout/refill_rounds"])
    dm = make_dm(phi=5000, L=4, K=4, max_refill_rounds=2)
    with pytest.raises(RuntimeError, match="short of its token budget after 2 extra sampling rounds"):
        dm.next_rollout()


def test_carry_over_puts_unused_responses_first_with_trainer_old_logprobs():
    calls = []

    def logprob_fn(responses):
        calls.append(len(responses))
        return [torch.full((r.length,), -2.0) for r in responses]

    dm = make_dm(phi=40, overflow="carry", logprob_fn=logprob_fn)
    first = dm.next_rollout()
    carried = dm.sampler_state.carried
    assert first.metrics["budget/responses_carried"] == len(carried) > 0 and calls[0] == len(carried)
    assert all(r.age == 1 and torch.equal(r.old_logprobs, torch.full((r.length,), -2.0)) for r in carried)
    second = dm.next_rollout()
    assert loss_tokens(second) == 40
    assert second.responses[0] is carried[0]
    row0 = [mb for mb in second.micro_batches if 0 in mb.sample_index.tolist()][0]
    b = row0.sample_index.tolist().index(0)
    assert bool(row0.old_known[b]) and torch.all(row0.old_logprobs[b][row0.loss_mask[b]] == -2.0)
    # carried responses are at most max_carry_age old: the ones not used at step 2 are dropped
    assert all(r.age == 1 for r in dm.sampler_state.carried)


def test_carried_leftovers_are_capped_so_every_step_trains_fresh_responses():
    """16 responses of ~7 tokens against Φ = 40: the leftovers hold more than Φ. Uncapped, step 2 (and
    every later one) trained only on one-step-old responses; capped at half of Φ, >= 20 fresh tokens."""
    dm = make_dm(phi=40, overflow="carry", logprob_fn=lambda rs: [torch.full((r.length,), -2.0) for r in rs])
    first = dm.next_rollout()
    leftover = first.metrics["rollout/generated_tokens"] - 40
    assert leftover > 40  # the situation of the bug
    for _ in range(3):
        held = sum(r.length for r in dm.sampler_state.carried)
        assert 0 < held <= 20
        batch = dm.next_rollout()
        fresh = sum(int(mb.loss_mask[b].sum()) for mb in batch.micro_batches for b, i in enumerate(mb.sample_index)
                    if i >= 0 and batch.responses[int(i)].age == 0)
        assert loss_tokens(batch) == 40 and fresh >= 20
    with pytest.raises(ValueError, match="max_carry_fraction must be in"):
        C3PO(max_carry_fraction=1.5)


def test_used_token_fraction_and_prompts_covered_are_logged_and_a_low_fraction_warns_once():
    dm = make_dm(phi=20, min_used_token_fraction=0.5)
    with pytest.warns(UserWarning, match=r"trained on .* min_used_token_fraction=0.5\): .*token_budget"):
        batch = dm.next_rollout()
    m = batch.metrics
    groups = {batch.responses[i].group_id for mb in batch.micro_batches for i in mb.sample_index.tolist() if i >= 0}
    assert m["budget/used_token_fraction"] == pytest.approx(20 / m["rollout/generated_tokens"])
    assert m["budget/prompts_covered"] == pytest.approx(len(groups) / 4) and 0 < len(groups) < 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run, not every step
        assert dm.next_rollout().metrics["budget/used_token_fraction"] < 0.5
    full = make_dm(mode="grpo").next_rollout().metrics
    assert full["budget/used_token_fraction"] == 1.0 and full["budget/prompts_covered"] == 1.0


def test_a_stage_switch_drops_the_carried_responses_of_the_old_stage():
    """Carried responses belong to the old stage's prompts and reward: they must not train the next stage."""
    dm = make_dm(phi=40, overflow="carry", logprob_fn=lambda rs: [torch.full((r.length,), -2.0) for r in rs],
                 stages={"one": {"arith": 1.0}, "two": {"count": 1.0}})
    dm.next_rollout()
    assert dm.sampler_state.carried and all(r.prompt_id.startswith("arith") for r in dm.sampler_state.carried)
    dm.set_stage("two")
    assert dm.sampler_state.carried == ()
    batch = dm.next_rollout()
    assert all(r.age == 0 and not r.prompt_id.startswith("arith") for r in batch.responses)


def test_grpo_uses_every_response_with_a_sequence_count_normaliser():
    dm = make_dm(mode="grpo")
    batch = dm.next_rollout()
    lengths = sum(r.length for r in batch.responses)
    assert loss_tokens(batch) == lengths == batch.budget
    assert {mb.loss_agg for mb in batch.micro_batches} == {"seq_mean_token_mean"}
    assert batch.micro_batches[0].normalizer == 16.0


def test_data_parallel_ranks_split_prompts_and_budget():
    full = make_dm(phi=64, L=4, world=1)
    r0, r1 = make_dm(phi=64, L=4, world=2, rank=0), make_dm(phi=64, L=4, world=2, rank=1)
    b0, b1 = r0.next_rollout(), r1.next_rollout()
    assert loss_tokens(b0) == loss_tokens(b1) == 32
    assert b0.micro_batches[0].normalizer == 32.0
    ids0 = {r.prompt_id for r in b0.responses}
    ids1 = {r.prompt_id for r in b1.responses}
    assert not ids0 & ids1 and ids0 | ids1 == {r.prompt_id for r in full.next_rollout().responses}
    with pytest.raises(ValueError, match="divisible by the 2 data-parallel ranks"):
        make_dm(phi=63, L=4, world=2)


def test_stage_and_stream_position_are_checkpointed():
    kw = dict(sources={"a": PromptSource(task="arithmetic_steps", size=30),
                       "b": PromptSource(task="countdown", size=30)},
              stages={"reasoning": {"a": 1.0}, "general": {"b": 1.0}})
    dm = make_dm(**kw)
    dm.next_rollout()
    dm.set_stage("general")
    assert dm.stage == "general"
    state = dm.state_dict()
    expected = [r.prompt_id for r in dm.next_rollout().responses]
    fresh = RolloutDataModule(sources=kw["sources"], stages=kw["stages"], engine=FakeEngine(), reward=ParityReward(),
                              prompts_per_step=4, samples_per_prompt=4, max_response_tokens=12)
    fresh.load_state_dict(state)  # before setup, as Lightning may restore it
    fresh.setup("fit")
    fresh.bind(None, TOK, C3PO(token_budget=60))
    assert fresh.stage == "general"
    assert [r.prompt_id for r in fresh.next_rollout().responses] == expected
    assert all(pid.startswith("countdown") for pid in expected)


def test_background_sampling_is_at_most_max_staleness_behind():
    eng = FakeEngine()
    dm = make_dm(phi=40, max_staleness=1, engine=eng)
    seen = []
    try:
        for step in range(4):
            batch = dm.next_rollout()
            seen.append(batch.metrics["rollout/staleness_max"])
            assert loss_tokens(batch) == 40
            for r in batch.responses:
                if r.age > 0:  # stale: trains with the behaviour policy's (engine) logprobs as π_old
                    assert torch.equal(r.old_logprobs, r.engine_logprobs)
            deadline = time.monotonic() + 30
            while dm.sampler.ahead.queued == 0 and time.monotonic() < deadline:  # let the worker sample ahead
                time.sleep(0.01)
            dm.sync_weights(iter(()), version=step + 1)
    finally:
        dm.teardown()
    # step 0 has nothing older; later steps use the batch sampled ahead with the previous weights
    assert seen == [0.0, 1.0, 1.0, 1.0]
    assert eng.generated_at[:4] == [0, 0, 1, 2]


def test_validation_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        PromptSource().load("x")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "1", "domain": "math", "prompt": "2+2?"}\n')
    dm = RolloutDataModule(sources={"f": PromptSource(path=str(bad))}, engine=FakeEngine(), reward=ParityReward())
    with pytest.raises(Exception, match="row 0.*answer"):
        dm.setup("fit")

    class Strict(ParityReward):
        def validate(self, row, where):
            raise ValueError(f"{where}: no verifier for {row.domain}")

    dm = RolloutDataModule(sources={"a": PromptSource(task="countdown", size=5)}, engine=FakeEngine(), reward=Strict())
    with pytest.raises(ValueError, match=r"built-in task 'countdown' row 0 \(source 'a', stage 'default'\)"):
        dm.setup("fit")
    with pytest.raises(RuntimeError, match="before bind"):
        RolloutDataModule(sources={"a": PromptSource(task="countdown", size=5)}).next_rollout()


def test_engine_sleeps_after_each_rollout_and_is_woken_before_any_use():
    eng = FakeEngine()
    dm = make_dm(engine=eng)
    dm.next_rollout()
    assert (eng.sleeps, eng.wakes) == (1, 0)  # strictly on-policy: asleep while the trainer runs
    with dm.exclusive_engine() as e:  # e.g. held-out evaluation
        assert e is eng and eng.wakes == 1
    dm.next_rollout()  # already awake: no second wake
    assert (eng.sleeps, eng.wakes) == (2, 1)
    dm.next_rollout()  # asleep since the last rollout: woken before generating
    assert (eng.sleeps, eng.wakes) == (3, 2)
    # a skipped optimizer step: the weights did not change, so no transfer, only a wake
    assert dm.keep_weights(iter(())) is False and eng.version == 0 and eng.wakes == 3
    dm.next_rollout()
    dm.sync_weights(iter(()), version=7)
    assert eng.version == 1 and dm.weight_version == 7 and eng.wakes == 4
    # an engine whose sleep discards its weights (vLLM sleep level 2) gets them back
    eng.sleep_enabled, eng.sleep_level = True, 2
    dm.next_rollout()
    assert dm.keep_weights(iter(())) is True and eng.version == 2 and dm.weight_version == 7


def test_background_sampling_refuses_an_engine_that_shares_the_trainer_model():
    from ring_lightning.models.loading import load_policy
    from ring_lightning.rollout.hf_engine import HFEngine

    policy, tok = load_policy("qwen3-tiny")
    with pytest.raises(ValueError, match=r"max_staleness=1 .*HFEngine generates with the trainer's own model.*"
                                         r"copy_model: true"):
        make_dm(max_staleness=1, engine=lambda p, t: HFEngine(policy, t))
    shared = FakeEngine()
    shared.shares_trainer_model = True
    with pytest.raises(ValueError, match="FakeEngine generates with the trainer's own model"):
        make_dm(max_staleness=1, engine=shared)
    dm = make_dm(max_staleness=0, engine=shared)  # on-policy: fine
    assert dm.next_rollout().metrics["rollout/staleness_max"] == 0
    class LengthReward:  # real model text: reward its length parity
        def __call__(self, rows, texts):
            from ring_lightning.rewards.base import RewardResult

            return [RewardResult(float(len(t) % 2 == 0)) for t in texts]

    dm = make_dm(phi=20, max_staleness=1, engine=lambda p, t: HFEngine(policy, tok, copy_model=True))
    dm.reward = LengthReward()
    try:
        batch = dm.next_rollout()
        assert sum(mb.num_loss_tokens for mb in batch.micro_batches) == 20
    finally:
        dm.teardown()
