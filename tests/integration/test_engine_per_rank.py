"""Two data-parallel ranks (torchrun, gloo, CPU), each with its own embedded vLLM engine: exact sync on
every rank, and closing an engine leaves the trainer's process group usable (vLLM 0.32's in-process
shutdown destroyed it; see ring_lightning/rollout/vllm_teardown.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_engine_per_rank_syncs_exactly_and_keeps_the_trainer_group(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "tests/integration/scripts/engine_per_rank.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["world"] == 2 and r["tokens"] == 8
        assert r["max_abs_diff"] <= 1e-4  # the engine holds this rank's perturbed weights
        assert r["group_alive"] and r["all_reduce"] == 3.0  # 1 + 2 over both ranks, after close()
