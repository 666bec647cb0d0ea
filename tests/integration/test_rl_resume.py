"""Exact resume of C3PO RL after `kill -9`, with the real CLI and the embedded vLLM engine (seeded sampling).

Run U: `python -m ring_lightning fit -c cfg` for 6 steps (checkpoint every 2, `overflow: carry` so the
carry-over buffer is non-empty in every checkpoint; Φ=400 > the carried tokens, so fresh responses
are trained too). Run K: the same config in a subprocess, SIGKILLed
while it waits at the start of step 5 (step 4's checkpoint written). Run R: `fit -c cfg --ckpt_path last`
on K's checkpoints. R's steps 5-6 must log the same metrics as U's (model, optimizer, LR schedule, RNG,
prompt-stream position, carried responses, token counters, weight version all restored), and K's steps
1-4 U's (runs are reproducible across processes). U and R run in this process (one engine start each);
all three use one torch thread so float reductions agree. Also: `validate -c cfg --ckpt_path step=4`
reproduces the held-out numbers U logged at step 4 (the engine evaluates the checkpoint's weights).
"""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
PAUSE = textwrap.dedent('''
    import time
    from pathlib import Path
    from lightning.pytorch.callbacks import Callback

    class PauseAt(Callback):
        """Write `marker` and wait (to be killed) at the start of the step after `step`."""
        def __init__(self, step: int, marker: str):
            self.step, self.marker = step, marker
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                Path(self.marker).write_text(str(trainer.global_step))
                time.sleep(600)
''')
# compared per step: everything but timings and the parity probe's schedule (it re-checks a new engine)
SKIP = ("time/", "throughput/", "rollout/sync_", "rollout/bind_sync_", "epoch", "step")


def config(tmp: Path, run: str, extra_callbacks=()) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 6, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "val_check_interval": 2, "check_val_every_n_epoch": None,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp / "logs"), "name": run, "flush_logs_every_n_steps": 1}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp / f"ckpt_{run}"), "save_last": True,
                                         "every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"}},
                          *extra_callbacks],
        },
        "model": {"class_path": "ring_lightning.modules.rl.RLModule",
                  "init_args": {"model": "bailing-tiny", "lr": 1.0e-2, "micro_batch_tokens": 512,
                                "objective": {"class_path": "ring_lightning.rl.objectives.C3PO",
                                              "init_args": {"token_budget": 400, "overflow": "carry"}}}},
        "data": {"class_path": "ring_lightning.data.rollouts.RolloutDataModule", "init_args": {
            "sources": {"instr": {"task": "instruction", "size": 64,
                                  "task_kwargs": {"kinds": ["lowercase", "no_comma"]}},
                        "arith": {"task": "arithmetic_steps", "size": 64}},
            "engine": {"class_path": "ring_lightning.rollout.vllm_engine.VLLMEngine",
                       "init_args": {"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_space_gib": 1,
                                     "max_num_seqs": 64}},
            "reward": {"class_path": "ring_lightning.rewards.router.RewardRouter"},
            "prompts_per_step": 4, "samples_per_prompt": 4, "max_response_tokens": 24,
            "val_sources": {"held_out": {"task": "instruction", "size": 6, "seed": 96,
                                         "task_kwargs": {"kinds": ["lowercase", "no_comma"]}}},
            "eval_samples_per_prompt": 4, "eval_k": [1, 4], "eval_batch_size": 6}},
    }
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli_in_process(args: list[str]) -> None:
    """`python -m ring_lightning ...` in this process, on one torch thread."""
    from ring_lightning.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)


def metrics(tmp: Path, run: str) -> dict[int, dict[str, float]]:
    """step (1-based) -> the metrics logged for it, over all versions (a resumed run writes a new one)."""
    out: dict[int, dict[str, float]] = {}
    for f in sorted((tmp / "logs" / run).glob("version_*/metrics.csv")):
        for row in csv.DictReader(f.open()):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            out.setdefault(int(values["step"]) + 1, {}).update(values)
    return out


def assert_same_step(a: dict[str, float], b: dict[str, float], step: int) -> None:
    keys = {k for k in a if not k.startswith(SKIP)}
    assert keys == {k for k in b if not k.startswith(SKIP)}, (step, keys ^ {k for k in b if not k.startswith(SKIP)})
    for k in sorted(keys):
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), (step, k, a[k], b[k])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl_resume")
    cli_in_process(["fit", "-c", str(config(tmp, "u"))])
    return tmp


@pytest.mark.vllm
@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_from_last_gives_the_same_steps(uninterrupted):
    tmp = uninterrupted
    (tmp / "pause_at.py").write_text(PAUSE)
    marker = tmp / "paused"
    pause = {"class_path": "pause_at.PauseAt", "init_args": {"step": 4, "marker": str(marker)}}
    cfg_k = config(tmp, "k", [pause])
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp}", OMP_NUM_THREADS="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen([sys.executable, "-m", "ring_lightning", "fit", "-c", str(cfg_k)], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"run K never reached step 5 (rc={proc.poll()}): {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)  # kill -9: no teardown, no final save
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    last = torch.load(tmp / "ckpt_k" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4 and last["RolloutDataModule"]["carried"]  # carry-over buffer in flight
    # resume: the config of run K (its checkpoint directory and log name) without the pause
    cli_in_process(["fit", "-c", str(config(tmp, "k")), "--ckpt_path", "last"])
    u, k = metrics(tmp, "u"), metrics(tmp, "k")
    assert sorted(s for s in u if "train/loss" in u[s]) == [1, 2, 3, 4, 5, 6]
    assert sorted(s for s in k if "train/loss" in k[s]) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):  # 1-4: run K before the kill; 5-6: the resumed run
        assert_same_step(u[step], k[step], step)
    assert u[6]["tokens/rl_trained"] == 6 * 400 and u[6]["budget/responses_carried"] > 0
    assert "rollout/train_infer_kl" in u[5]  # fresh responses too (not only carried ones)
    assert len({u[s]["train/loss"] for s in range(1, 7)}) == 6  # every step differs: a real comparison


@pytest.mark.vllm
@pytest.mark.slow
def test_validate_cli_with_a_checkpoint_reproduces_the_held_out_numbers_of_that_step(uninterrupted):
    tmp = uninterrupted
    cli_in_process(["validate", "-c", str(config(tmp, "u")), "--ckpt_path", str(tmp / "ckpt_u" / "step=4.ckpt"),
                    "--trainer.logger.init_args.name=v"])
    logged, during_fit = metrics(tmp, "v"), metrics(tmp, "u")
    val = next(m for m in logged.values() if "val/pass@1" in m)
    fit_val = [m for s, m in sorted(during_fit.items()) if "val/pass@1" in m]
    assert len(fit_val) == 3  # after steps 2, 4 and 6
    keys = ("val/pass@1", "val/pass@4", "val/instruction/pass@1", "val/reward_mean", "val/response_length_mean")
    for key in keys:
        assert val[key] == pytest.approx(fit_val[1][key], abs=1e-7), key
    assert any(fit_val[0][k] != fit_val[1][k] for k in keys)  # the numbers tell the steps' weights apart
    assert val["val/problems"] == 6
