"""The RL benchmark's pure pieces: TRL micro-batch sizing, the reward adapter TRL calls (our router on the
completion ids), median summaries, system names with thread counts and the shared engine's threads."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.bench_rl_step import summarize  # noqa: E402
from benchmarks.bench_trl import RouterRewardFunc, micro_batch_rows  # noqa: E402
from ring_lightning.data.synthetic.rl_tasks import rl_task_rows  # noqa: E402
from ring_lightning.models.loading import load_tokenizer  # noqa: E402
from ring_lightning.rewards.router import RewardRouter  # noqa: E402


def test_micro_batch_rows_is_the_largest_divisor_within_the_token_cap():
    assert micro_batch_rows(32, 114, 4096) == 32  # 35 rows fit; 32 divides 32
    assert micro_batch_rows(128, 210, 4096) == 16  # 19 fit; largest divisor of 128 <= 19
    assert micro_batch_rows(24, 210, 4096) == 12
    assert micro_batch_rows(8, 5000, 4096) == 1  # one row is over the cap: still one row
    with pytest.raises(ValueError, match="total_rows >= 1"):
        micro_batch_rows(0, 10, 100)


def test_router_reward_func_scores_completion_ids_like_our_engines():
    tok = load_tokenizer()
    rows = rl_task_rows("instruction", 2, seed=1, kinds=["lowercase"])
    stop = tok.encode("Q", add_special_tokens=False)
    assert len(stop) == 1
    lower = tok.encode("a calm sea", add_special_tokens=False)
    upper = tok.encode("A Calm Sea", add_special_tokens=False)
    func = RouterRewardFunc(RewardRouter(), rows, tok, eos_ids=[tok.eos_token_id, stop[0]])
    ids = [lower + stop, upper + stop, lower + [tok.eos_token_id], lower + stop + stop]
    row_ids = [rows[0].id, rows[1].id, rows[0].id, rows[1].id]
    out = func(prompts=None, completions=None, completion_ids=ids, row_id=row_ids)
    # A final EOS id is dropped before scoring (only the last one), so "a calm seaQ" is still upper-case.
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert func.calls[-1]["completions"] == 4
    assert func.calls[-1]["tokens"] == sum(len(i) for i in ids)
    assert func.calls[-1]["reward_sum"] == 2.0
    assert func.__name__ == "ring_lightning_rule_reward"


def _step(step, rollout, train, gen=100.0, loss=50.0, reward=0.5):
    return {"time/step": step, "time/rollout": rollout, "time/reward": 0.1, "time/train": train, "time/sync": 0.05,
            "cpu/step": step / 2, "rollout/generated_tokens": gen, "train/loss_tokens": loss, "reward/mean": reward}


def test_summarize_takes_medians_after_the_warmup_of_every_run():
    runs = [[_step(99.0, 90.0, 5.0, reward=0.0), _step(1.0, 0.5, 0.3), _step(2.0, 1.0, 0.6)],
            [_step(50.0, 40.0, 5.0), _step(3.0, 1.5, 0.9, reward=1.0)]]
    s = summarize(runs, warmup=1)
    assert s["steps"] == 3  # the first step of each run is left out
    assert s["s_step"] == 2.0 and s["s_rollout"] == 1.0 and s["s_train"] == 0.6
    assert s["s_other"] == pytest.approx(2.0 - (1.0 + 0.1 + 0.6 + 0.05))
    assert s["e2e_tok_s"] == pytest.approx(150.0 / 2.0)
    assert s["s_rest"] == pytest.approx(2.0 - 1.0 - 0.6)  # median of step - rollout - train: 0.2, 0.4, 0.6
    assert s["cpu_s_step"] == 1.0 and s["e2e_tok_cpu_s"] == pytest.approx(150.0 / 1.0)
    assert s["gen_tok_s"] == pytest.approx(100.0 / 1.0)
    assert (s["reward_first"], s["reward_last"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="no steps"):
        summarize([], warmup=1)


def test_system_names_take_an_optional_thread_count():
    import argparse

    import torch

    from benchmarks.bench_rl_step import torch_threads
    from benchmarks.rl_systems import DEFAULT_SYSTEMS, parse_system, system_arg

    assert parse_system("trl@2") == ("trl", 2) and parse_system("c3po-async-hf") == ("c3po-async-hf", None)
    assert all(parse_system(s) for s in DEFAULT_SYSTEMS)
    for bad in ("trl@0", "trl@x", "ppo", "c3po@"):
        with pytest.raises(ValueError, match="unknown RL system"):
            parse_system(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="trl@2"):
        system_arg("trl@two")
    from benchmarks.rl_systems import PRECISIONS, parse_variant

    assert parse_variant("c3po@2:bf16") == ("c3po", 2, "bf16") and parse_variant("trl:bf16w") == ("trl", None, "bf16w")
    assert parse_variant("c3po-async") == ("c3po-async", None, "fp32") and parse_system("trl@2:bf16") == ("trl", 2)
    for bad in ("c3po:fp16", "c3po@2:", "c3po:bf16@2"):
        with pytest.raises(ValueError, match=r"unknown RL system .*:<precision> \(fp32, bf16, bf16w\)"):
            parse_variant(bad)
    from benchmarks.bench_trl import TRL_PRECISIONS, _grpo_config

    assert set(TRL_PRECISIONS) == set(PRECISIONS)
    assert TRL_PRECISIONS["bf16"] == (True, torch.float32) and TRL_PRECISIONS["bf16w"] == (True, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        _grpo_config("out", per_device=1, accumulation=1, samples=2, max_tokens=4, temperature=1.0, kl_coef=0.0,
                     entropy_coef=0.0, router_aux_loss_coef=0.0, clip_eps=0.2, steps=1, lr=1e-5, warmup_steps=0,
                     grad_clip=1.0, seed=0, precision="fp16")
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_a_reused_shared_engine_takes_each_runs_thread_count(monkeypatch):
    """The vLLM engine restores the thread count it was built with after every generate / sync; the shared
    engine must restore the current run's (`name@N`), also after loading the run's weights."""
    import torch

    from benchmarks.bench_rl_step import torch_threads
    from benchmarks.shared_engine import SharedEngine

    class FakeEngine:
        _threads = 1

        def update_weights(self, named):
            self.loaded = [n for n, _ in named]
            torch._C.set_num_threads(self._threads)  # as the vLLM engine's sync does

    fake = FakeEngine()
    monkeypatch.setattr(SharedEngine, "_engine", fake)
    monkeypatch.setattr(SharedEngine, "_settings", SharedEngine.settings(torch.nn.Linear(2, 2), {}))
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        shared = SharedEngine(torch.nn.Linear(2, 2))
        assert fake._threads == before + 1 and torch.get_num_threads() == before + 1
    assert fake.loaded == ["weight", "bias"] and shared.engine is fake
    assert torch.get_num_threads() == before
    fake.close = lambda: torch._C.set_num_threads(fake._threads)  # the vLLM engine restores its own count
    SharedEngine.close_shared()
    assert SharedEngine._engine is None and torch.get_num_threads() == before


def test_lever_systems_parse_and_build_their_one_changed_knob(monkeypatch):
    """c3po-oldpass / c3po-nokl are c3po with recompute_old_logprobs=True / kl_coef=0; the thread syntax works."""
    import json

    import ring_lightning.cli as cli
    from benchmarks.bench_rl_step import RLWorkload, build
    from benchmarks.rl_systems import OURS, SYSTEMS, parse_system

    assert parse_system("c3po-oldpass@2") == ("c3po-oldpass", 2) and parse_system("c3po-nokl") == ("c3po-nokl", None)
    assert {"c3po-oldpass", "c3po-nokl", "c3po-async"} <= set(SYSTEMS)
    for name in ("c3po-oldpass", "c3po-nokl"):  # the docstring's system list names them
        assert f"`{name}`" in sys.modules["benchmarks.bench_rl_step"].__doc__
    seen = {}
    monkeypatch.setattr(cli, "RingLightningCLI", lambda args, run: seen.setdefault("args", args))
    w = RLWorkload(kl_coef=1e-3)

    def knobs(system):
        seen.clear()
        args = build(w, model="m", **OURS[system])
        obj = json.loads(next(a for a in args if a.startswith("--model.init_args.objective="))
                         .split("=", 1)[1])["init_args"]
        return obj["kl_coef"], next(a for a in args if "recompute_old_logprobs" in a).split("=")[1]

    assert knobs("c3po") == (1e-3, "false")
    assert knobs("c3po-oldpass") == (1e-3, "true")
    assert knobs("c3po-nokl") == (0.0, "false")


def test_vllm_kwargs_reach_the_vllm_systems_only(monkeypatch):
    """RLWorkload.vllm_kwargs become the shared vLLM engine's init_args (after its class_path); the
    HF-engine systems, whose engine has other arguments, do not get them."""
    import ring_lightning.cli as cli
    from benchmarks.bench_rl_step import RLWorkload, build
    from benchmarks.rl_systems import OURS

    monkeypatch.setattr(cli, "RingLightningCLI", lambda args, run: args)
    w = RLWorkload(vllm_kwargs={"enforce_eager": False, "max_num_seqs": 32})
    args = build(w, model="m", **OURS["c3po-async"])
    at = args.index("--data.init_args.engine.class_path=benchmarks.shared_engine.SharedEngine")
    assert args[at + 1:at + 3] == ["--data.init_args.engine.init_args.enforce_eager=false",
                                   "--data.init_args.engine.init_args.max_num_seqs=32"]
    for system in ("c3po-hf", "c3po-async-hf"):
        assert not [a for a in build(w, model="m", **OURS[system]) if "engine.init_args" in a]



def test_the_shared_engine_restarts_when_a_run_needs_other_engine_settings(monkeypatch):
    """One engine per dtype: a bf16 run after fp32 runs closes the fp32 engine and starts its own; dtype
    "auto" resolves to the policy's parameter dtype; the same settings reuse the engine."""
    import torch

    import benchmarks.shared_engine as se
    from benchmarks.shared_engine import SharedEngine

    events = []

    class FakeVLLM:
        def __init__(self, model, tokenizer=None, **kw):
            self.kw, self._threads = kw, torch.get_num_threads()
            events.append(("start", kw.get("dtype", "auto")))

        def update_weights(self, named):
            events.append(("load", len(list(named))))

        def close(self):
            events.append(("close", self.kw.get("dtype", "auto")))

    monkeypatch.setattr(se, "VLLMEngine", FakeVLLM)
    monkeypatch.setattr(SharedEngine, "_engine", None)
    monkeypatch.setattr(SharedEngine, "starts", [])
    fp32, bf16 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert SharedEngine.settings(fp32, {"enforce_eager": True}) == (("dtype", "'float32'"), ("enforce_eager", "True"))
    assert SharedEngine.settings(fp32, {"dtype": "bfloat16"}) == SharedEngine.settings(bf16, {})
    SharedEngine(fp32, enforce_eager=True)
    SharedEngine(fp32, enforce_eager=True)  # same settings: the running engine loads the run's weights
    SharedEngine(fp32, enforce_eager=True, dtype="bfloat16")  # bf16 engine for an fp32 trainer (bf16-mixed)
    SharedEngine(bf16, enforce_eager=True)  # "auto" = bfloat16: reused
    SharedEngine(fp32, enforce_eager=False)  # other arguments: restarted
    SharedEngine.close_shared()
    assert events == [("start", "auto"), ("load", 2), ("close", "auto"), ("start", "bfloat16"), ("load", 2),
                      ("close", "bfloat16"), ("start", "auto"), ("close", "auto")]
    assert [d for d, _ in SharedEngine.starts] == ["float32", "bfloat16", "float32"]
    assert SharedEngine._engine is None and SharedEngine._settings is None


def test_precision_variants_set_the_trainer_engine_and_module_dtypes(monkeypatch):
    """`:bf16` = Lightning bf16-mixed, plus a bfloat16 vLLM engine for the vLLM systems only (the HF engine
    generates with the trainer's model); `:bf16w` = the module's dtype bfloat16 (the engine follows)."""
    import ring_lightning.cli as cli
    from benchmarks.bench_rl_step import RLWorkload, build
    from benchmarks.rl_systems import OURS

    monkeypatch.setattr(cli, "RingLightningCLI", lambda args, run: args)
    w = RLWorkload(vllm_kwargs={"enforce_eager": False, "dtype": "float32"})
    knobs = lambda args: [a for a in args if "precision" in a or "dtype" in a]  # noqa: E731
    assert knobs(build(w, model="m", **OURS["c3po"])) == ["--data.init_args.engine.init_args.dtype=float32"]
    assert knobs(build(w, model="m", precision="bf16", **OURS["c3po"])) == [  # the variant's dtype last: it wins
        "--data.init_args.engine.init_args.dtype=float32", "--trainer.precision=bf16-mixed",
        "--data.init_args.engine.init_args.dtype=bfloat16"]
    assert knobs(build(w, model="m", precision="bf16", **OURS["c3po-hf"])) == ["--trainer.precision=bf16-mixed"]
    assert knobs(build(RLWorkload(), model="m", precision="bf16w", **OURS["c3po-async"])) == [
        "--model.init_args.dtype=bfloat16"]
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        build(w, model="m", precision="fp16", **OURS["c3po"])
