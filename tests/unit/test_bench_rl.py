"""The RL benchmark's pure pieces: TRL micro-batch sizing, the reward adapter TRL calls (our router on the
completion ids), median summaries, and the GPU smoke script's arguments / no-CUDA exit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.bench_rl_step import summarize  # noqa: E402
from benchmarks.bench_trl import RouterRewardFunc, micro_batch_rows  # noqa: E402
from benchmarks.gpu_smoke import rl_args, sft_args  # noqa: E402
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
    assert s["cpu_s_step"] == 1.0 and s["e2e_tok_cpu_s"] == pytest.approx(150.0 / 1.0)
    assert s["gen_tok_s"] == pytest.approx(100.0 / 1.0)
    assert (s["reward_first"], s["reward_last"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="no steps"):
        summarize([], warmup=1)


def test_gpu_smoke_stops_at_once_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_smoke.py")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300)
    assert r.returncode == 2
    assert "needs a CUDA GPU" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("part", ["sft", "rl"])
def test_gpu_smoke_arguments_are_valid_configs(part):
    """The smoke's `fit` arguments parse against the GPU configs (no GPU needed to validate them)."""
    args = sft_args(layers=3) if part == "sft" else rl_args(layers=3, prompts=16, phi=4096)
    r = subprocess.run([sys.executable, "-m", "ring_lightning", "fit", *args, "--print_config"], capture_output=True,
                       text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "num_hidden_layers: 3" in out and "model: ring-lite-2507" in out and "data_parallel_size: 1" in out
    assert "callbacks: []" in out and "max_steps:" in out
    if part == "sft":
        assert "- synthetic:mixed" in out and "val: null" in out and "mixed_precision: bf16" in out
    else:
        assert "task: arithmetic_steps" in out and "token_budget: 4096" in out and "prompts_per_step: 16" in out
        assert "RL_DATA" not in out and ".jsonl" not in out  # no prompt / held-out file is needed


def test_system_names_take_an_optional_thread_count():
    import argparse

    import torch

    from benchmarks.bench_rl_step import DEFAULT_SYSTEMS, parse_system, system_arg, torch_threads

    assert parse_system("trl@2") == ("trl", 2) and parse_system("c3po-async-hf") == ("c3po-async-hf", None)
    assert all(parse_system(s) for s in DEFAULT_SYSTEMS)
    for bad in ("trl@0", "trl@x", "ppo", "c3po@"):
        with pytest.raises(ValueError, match="unknown RL system"):
            parse_system(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="trl@2"):
        system_arg("trl@two")
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
