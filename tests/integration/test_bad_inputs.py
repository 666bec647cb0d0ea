"""Bad inputs across the surface: each gives a message naming what was wrong, where, and what to do,
and loses nothing (no half-written outputs, the last checkpoint loads, the run resumes).

The table in docs/errors.md lists every case and the test that backs it; config errors are
in tests/integration/test_cli.py, model/tokenizer paths in tests/unit/models/test_loading.py, engine
start/generate failures in tests/unit/rollout/test_vllm_engine*.py. Here: RL prompt rows, the prompt
set, an RL run with a crashing reward and then a failing engine (in-process Lightning fits with a fake
engine), and one real `python -m ring_lightning fit` whose engine vLLM refuses to start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from unit.rl_fixtures import FakeEngine, ParityReward, Record, recording_engine

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.rows import PromptRowError, parse_row
from ring_lightning.data.prompts import load_prompts
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.models.loading import load_tokenizer
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO
from ring_lightning.rewards.router import RewardRouter
from ring_lightning.rollout.engine import EngineError

REPO = Path(__file__).resolve().parents[2]
GOOD = {"id": "a", "domain": "math", "prompt": "2+2?", "answer": "4"}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ------------------------------------------------------------------------------------ RL prompt rows
def test_rl_prompt_rows_name_file_and_row_and_can_be_skipped(tmp_path, caplog):
    path = write_jsonl(tmp_path / "rl.jsonl", [
        GOOD,
        '{"id": "b", "domain": "math", "prompt": ',                      # row 1: truncated JSON
        {"id": "c", "domain": "poetry", "prompt": "p"},                   # row 2: unknown domain
        {"id": "d", "domain": "math", "prompt": "p"},                     # row 3: no answer
        {"id": "a", "domain": "math", "prompt": "again", "answer": "1"},  # row 4: repeated id
        {"id": "e", "domain": "math", "prompt": "p", "answer": "1", "meta": "{oops"},  # row 5: meta not JSON
        {**GOOD, "id": "f"},
    ])
    with pytest.raises(PromptRowError, match=rf"^{path} row 1: invalid JSON \(.*\); fix or remove the row, or drop "
                                             r"malformed rows with `python -m ring_lightning prepare`"):
        load_prompts(path)
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="ring_lightning.data.prompts"):
        rows = load_prompts(path, skip_bad_rows=True, skipped=skipped)
    assert [r.id for r in rows] == ["a", "f"]
    expected = [f"{path} row 1: invalid JSON", f"{path} row 2: unknown domain 'poetry'",
                f"{path} row 3: domain 'math' needs the field 'answer'",
                f"{path} row 4: duplicate id 'a' (first at row 0)", f"{path} row 5: 'meta' is not valid JSON"]
    assert len(skipped) == len(expected) and all(s.startswith(e) for s, e in zip(skipped, expected)), skipped
    assert f"{path}: skipped 5 malformed prompt rows (skip_bad_rows=True), kept 2" in caplog.text
    assert all(e in caplog.text for e in expected)

    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x"}, {"domain": "math"}])
    with pytest.raises(PromptRowError, match=rf"^{all_bad}: every row is malformed \(2 skipped\); first: {all_bad} "
                                             r"row 0: unknown domain None"):
        load_prompts(all_bad, skip_bad_rows=True)


def test_prompt_set_that_is_empty_missing_or_unreadable(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=rf"prompt source 'rl' \({empty}\) has no rows"):
        PromptSource(path=str(empty)).load("rl")
    with pytest.raises(FileNotFoundError, match=rf"prompt file not found: {tmp_path}/nope\.jsonl; check the path"):
        load_prompts(tmp_path / "nope.jsonl")
    broken = tmp_path / "rows.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(PromptRowError, match=rf"{broken}: not a readable Parquet file \(.*\); re-write it"):
        load_prompts(broken)
    with pytest.raises(PromptRowError, match=rf"{tmp_path}: a directory, but not one written by `datasets`"):
        load_prompts(tmp_path)


def test_prompt_longer_than_max_prompt_tokens_names_the_row_and_the_knob(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"id": "long-1", "domain": "math", "prompt": "word " * 60,
                                                  "answer": "1"}])
    dm = RolloutDataModule(sources={"f": PromptSource(path=str(path))}, engine=recording_engine(),
                           reward=ParityReward(), prompts_per_step=1, samples_per_prompt=2, max_prompt_tokens=16)
    dm.setup("fit")
    dm.bind(None, load_tokenizer(), C3PO(token_budget=4))
    with pytest.raises(ValueError, match=r"prompt 'long-1' \(math\) has \d+ tokens > max_prompt_tokens=16; filter "
                                         r"long prompts or raise the limit"):
        dm.next_rollout()


# ------------------------------------------------------------------------- RL runs that hit failures
def make_dm(engine, reward):
    return RolloutDataModule(sources={"arith": PromptSource(task="arithmetic_steps", size=64)}, engine=engine,
                             reward=reward, prompts_per_step=4, samples_per_prompt=4,
                             max_response_tokens=14)


def trainer(steps, callbacks=(), **kw):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=1, callbacks=list(callbacks), **kw)


class Crashing:
    """A verifier that raises on every call."""

    def __call__(self, rows, texts):
        raise RuntimeError("verifier crashed: segfault in the checker")


class FailingEngine(FakeEngine):
    """The fake engine of the C3PO tests, failing at its `fail_at`-th generate call; records prompts."""

    def __init__(self, fail_at: int | None = None):
        super().__init__(min_len=4, max_len=14, logprob=-5.0)
        self.fail_at, self.calls, self.prompts = fail_at, 0, []

    def generate(self, prompts, n, sampling):
        self.calls += 1
        self.prompts.append([list(p) for p in prompts])
        if self.calls == self.fail_at:
            raise EngineError(f"FailingEngine.generate: backend died on call {self.calls}")
        return super().generate(prompts, n, sampling)


def test_rl_run_survives_a_crashing_reward_and_an_engine_failure_loses_nothing(tmp_path):
    """Steps 1-2: the math verifier raises on every call -> every sample scores 0, is counted, training goes
    on. Step 3: the engine fails -> the run stops with the engine's error; the checkpoints of steps 1-2 are
    complete, the last one loads, and resuming from it draws the failed step's prompts again."""
    ckpt_dir = tmp_path / "ckpt"
    engine, rec = FailingEngine(fail_at=3), Record()
    router = RewardRouter(rewards={"math": Crashing()}, use_defaults=False)
    module = RLModule(model="bailing-tiny", lr=1e-3, parity=False, objective=C3PO(token_budget=48, kl_coef=0.0))
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=-1)
    with pytest.raises(EngineError, match="FailingEngine.generate: backend died on call 3"):
        trainer(5, [checkpoint, rec]).fit(module, make_dm(engine, router))
    assert len(rec.metrics) == 2  # both steps with the crashing reward trained
    for m in rec.metrics:
        assert m["reward/error_count"] == 16.0 and m["reward/mean"] == 0.0 and m["train/loss_tokens"] == 48.0
    routed = router.score([parse_row(GOOD, "row 0")], ["x"])  # the router's own per-domain counter
    assert routed.metrics["reward/errors/math"] == 1.0 and routed.results[0].reward == 0.0
    assert "verifier crashed" in routed.results[0].info["error"]
    # nothing half-written: the checkpoints of steps 1 and 2, complete, and no temporary files
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2 and state["c3po"]["engine_weight_version"] == 2
    healthy, rec2 = FailingEngine(), Record()
    resumed = RLModule(model="bailing-tiny", lr=1e-3, parity=False, objective=C3PO(token_budget=48, kl_coef=0.0))
    trainer(3, [rec2], enable_checkpointing=False).fit(resumed, make_dm(healthy, ParityReward()),
                                                       ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert resumed.global_step == 3 and len(rec2.metrics) == 1 and rec2.metrics[0]["train/loss_tokens"] == 48.0
    assert healthy.prompts[0] == engine.prompts[2]  # the failed step's prompts, none skipped


# ------------------------------------------------------------------------------------- the real CLI
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
       "VLLM_CPU_KVCACHE_SPACE": "1"}
ENV.pop("RING_LIGHTNING_DEBUG", None)


def launch(*commands: list[str], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "ring_lightning", *args], cwd=REPO, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    out = []
    for args, proc in zip(commands, procs):
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return out


def last_line(run: subprocess.CompletedProcess) -> str:
    return [line for line in run.stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
@pytest.mark.vllm
def test_cli_engine_start_failure_ends_with_our_message_and_saves_nothing(tmp_path):
    """An engine knob vLLM refuses: the run fails when the engine starts (after the policy and the data
    are set up); the last line is ours and names the knob and the fix (vLLM's own error is chained as the
    cause: tests/unit/rollout/test_vllm_engine_errors.py).
    A bad data row, a missing model path etc. surface the same way (their messages are tested above and
    in the unit tests)."""
    (run,) = launch(["fit", "-c", "configs/quickstart/rl_reasoning.yaml", "--model.init_args.model=bailing-tiny",
                     "--trainer.max_steps=1", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
                     '--data.init_args.sources={"f": {"task": "arithmetic_steps", "size": 16}}',
                     '--data.init_args.stages={"reasoning": {"f": 1.0}}',
                     "--data.init_args.engine=ring_lightning.rollout.vllm_engine.VLLMEngine",
                     "--data.init_args.engine.init_args.max_model_len=4096"])
    assert run.returncode != 0
    assert (  # the exception's last line (or the CLI's one-line report of it)
        "VLLMEngine could not start on in-memory "
        "BailingMoeForCausalLM: max_model_len=4096 is longer than the model allows (max_position_embeddings=2048 "
        "in its config.json). Set the engine's max_model_len to at most 2048 (in the VLLMEngine init args (in an "
        "RL config: data.init_args.engine.init_args.<knob>)) and keep max_prompt_tokens + max_response_tokens "
        "within it.") in last_line(run), run.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing saved that a later run could mistake for progress
