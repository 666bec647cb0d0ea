"""Every YAML under configs/ parses through the parser of the command that runs it.

Lightning configs (top-level keys among trainer/model/data/...) go through the real CLI,
`python -m ring_lightning fit -c FILE --print_config` (in process): types are checked and every
class_path is imported, but nothing is instantiated, so GPU / vLLM configs are parsed without being
run. Any other YAML must be accepted by the parser of one of the extra commands (`prepare`,
`pipeline`: their `build_parser()`). Configs added later are picked up by the glob.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from argparse import ArgumentError
from pathlib import Path

import pytest
import yaml

from ring_lightning import cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".yml"))
LIGHTNING_KEYS = {"seed_everything", "trainer", "model", "data", "ckpt_path", "weights_only", "optimizer",
                  "lr_scheduler"}


def print_config(path: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), f"{path} did not parse"
    return yaml.safe_load(out.getvalue())


def test_there_are_configs():
    names = {str(p.relative_to(REPO)) for p in CONFIGS}
    assert {"configs/quickstart/sft.yaml", "configs/ring_lite_2507/sft.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_parses(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths and repo-root class paths, as when run from the root
    raw = yaml.safe_load(path.read_text()) or {}
    if set(raw) <= LIGHTNING_KEYS:
        config = print_config(path)
        for section in ("model", "data"):
            if section in raw:
                assert config[section]["class_path"] == raw[section]["class_path"]
        return
    errors = []
    for name, (module_name, _) in cli.EXTRA_COMMANDS.items():
        parser = importlib.import_module(module_name).build_parser()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(["-c", str(path)])
            return
        except (ArgumentError, SystemExit) as e:
            errors.append(f"{name}: {e}")
    pytest.fail(f"{path.relative_to(REPO)} is not a Lightning fit config and no extra command parses it:\n"
                + "\n".join(errors))


def test_quickstart_sft_is_a_tiny_cpu_run_on_synthetic_data(monkeypatch):
    monkeypatch.chdir(REPO)
    config = print_config(REPO / "configs" / "quickstart" / "sft.yaml")
    assert config["trainer"]["accelerator"] == "cpu" and config["trainer"]["max_steps"] <= 1000
    assert config["model"]["init_args"]["model"] == "bailing-quickstart"
    data = config["data"]["init_args"]
    assert data["train"][0].startswith("synthetic:") and data["val"][0].startswith("synthetic:")


def _callbacks(config: dict) -> dict[str, dict]:
    return {cb["class_path"].rsplit(".", 1)[1]: cb.get("init_args", {}) for cb in config["trainer"]["callbacks"]}


def test_quickstart_sft_alone_selects_and_exports_the_rl_start(monkeypatch):
    """`fit -c sft.yaml` by itself measures entropy, keeps candidates, picks one and exports it."""
    monkeypatch.chdir(REPO)
    config = print_config(REPO / "configs" / "quickstart" / "sft.yaml")
    cbs = _callbacks(config)
    assert cbs["EntropyMonitor"]["synthetic_task"] == "addition" and cbs["EntropyMonitor"]["reward"]
    sel = cbs["RLReadinessSelector"]
    assert sel["entropy_key"] == "sft/entropy" and sel["accuracy_key"] == "sft/pass@1"
    assert sel["export_dir"] == "runs/quickstart/sft/export"
    # the pipeline appends its own ModelCheckpoint: the config's must differ (Lightning state keys)
    assert cbs["ModelCheckpoint"]["every_n_train_steps"] != 50


@pytest.mark.parametrize("name", ["sft", "rl_reasoning", "rl_general"])
def test_quickstart_stage_outputs_follow_default_root_dir(name, monkeypatch):
    """Every output path (loggers, exports) derives from trainer.default_root_dir, also when it is
    overridden on the command line (an experiment never writes into the quickstart's directories)."""
    monkeypatch.chdir(REPO)
    for root, args in (("runs/quickstart/" + name, []), ("/tmp/exp-x", ["--trainer.default_root_dir=/tmp/exp-x"])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main(["fit", "-c", str(REPO / "configs" / "quickstart" / f"{name}.yaml"), *args, "--print_config"])
        config = yaml.safe_load(out.getvalue())
        loggers = {lg["class_path"].rsplit(".", 1)[1]: lg["init_args"] for lg in config["trainer"]["logger"]}
        assert set(loggers) == {"CSVLogger", "TensorBoardLogger"}
        assert {lg["save_dir"] for lg in loggers.values()} == {root}
        exports = [v for cb in config["trainer"]["callbacks"] for k, v in cb.get("init_args", {}).items()
                   if k in ("export_dir", "dirpath") and v]
        assert exports == [f"{root}/export"], exports
        assert config["trainer"]["enable_progress_bar"] is True


def test_ring_lite_2507_sft_has_the_reported_hyper_parameters(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BASE_MODEL", "/ckpt/Ling-lite-1.5")
    config = print_config(REPO / "configs" / "ring_lite_2507" / "sft.yaml")
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert (model["lr"], model["weight_decay"], model["warmup_ratio"]) == (3e-4, 0.1, 0.01)
    assert model["mixed_precision"] == "bf16" and model["activation_checkpointing"]
    assert data["micro_batch_tokens"] == 32768 and model["model"] == "/ckpt/Ling-lite-1.5"
    assert data["tokenizer"] is None  # the policy's (the checkpoint's own): one tokenizer per run
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    strategy = trainer["strategy"]["init_args"]
    assert strategy["data_parallel_size"] == trainer["devices"] * trainer["num_nodes"]
    assert strategy["tensor_parallel_size"] == 1


def test_shipped_reasoning_rl_stages_end_on_signals_and_the_ring_lite_one_updates_twice_per_rollout():
    """Both reasoning-RL configs end their stage by a StageTransition rule (handoff: stop), with
    max_steps as a cap; the Ring-lite one splits each rollout into two clipped updates."""
    for name in ("quickstart", "ring_lite_2507"):
        cfg = yaml.safe_load((REPO / "configs" / name / "rl_reasoning.yaml").read_text())
        (st,) = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("StageTransition")]
        assert st["handoff"] == "stop" and st["stages"] == ["reasoning", "general"]
        assert "plateau" in st["triggers"] and "steps" not in st["triggers"], name
        assert st["min_stage_steps"] < cfg["trainer"]["max_steps"]
    ring = yaml.safe_load((REPO / "configs" / "ring_lite_2507" / "rl_reasoning.yaml").read_text())
    assert ring["data"]["init_args"]["updates_per_rollout"] == 2
    assert ring["model"]["init_args"]["objective"]["init_args"]["token_budget"] * 2 == 256 * 409_600
    stages = yaml.safe_load((REPO / "configs" / "ring_lite_2507" / "pipeline.yaml").read_text())["stages"]
    assert [s["config"] for s in stages] == [f"configs/ring_lite_2507/{n}.yaml" for n in ("sft", "rl_reasoning",
                                                                                          "rl_general")]
