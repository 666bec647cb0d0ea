"""pipeline.py: stages run in order as subprocesses, each started from the previous stage's export,
the state file records them, and a re-run after a failure / crash resumes at the unfinished stage
with --ckpt_path=last. The stage command is injected: a small script that records its calls."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from ring_lightning.pipeline import STATE_FILE, Pipeline, PipelineError, StageSpec, main

FAKE_STAGE = textwrap.dedent('''
    """Fake `python -m ring_lightning fit`: records its call, writes what a real stage would."""
    import json, os, sys
    from pathlib import Path

    argv = sys.argv[1:]
    cfg = argv[argv.index("-c") + 1]
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    root = Path(opts["trainer.default_root_dir"])
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps({"config": cfg, "root": str(root), "model": opts.get("model.init_args.model"),
                            "resume": opts.get("ckpt_path"), "argv": argv,
                            "stage_dir_env": os.environ.get("RING_LIGHTNING_STAGE_DIR")}) + "\\n")
    name = Path(cfg).stem
    marker = root / "failed-once"
    if os.environ.get("FAKE_FAIL") == name and not marker.exists():
        marker.write_text("x")
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        sys.exit(3)
    if name.startswith("sft"):
        hf = root / "rl_readiness" / "export"
        hf.mkdir(parents=True, exist_ok=True)
        (hf / "config.json").write_text("{}")
        (root / "rl_readiness" / "rl_readiness.json").write_text(json.dumps({
            "chosen": {"path": str(root / "rl_readiness" / "sft-step00000004.ckpt"), "step": 4, "entropy": 0.4,
                       "sft_tokens": 1234}, "fallback": False, "exported_to": str(hf)}))
    else:
        (root / "export").mkdir(parents=True, exist_ok=True)
        (root / "export" / "config.json").write_text(json.dumps({"stage": name}))
    if name == "rl_reasoning":  # what StageTransition(handoff: stop) writes when its plateau rule fires
        (root / "stage_transition.json").write_text(json.dumps({"stages": ["reasoning", "general"], "handoff": "stop",
            "triggers": ["plateau"], "end": None, "transitions": [{"step": 17, "from": "reasoning", "to": "general",
            "rule": ["plateau"], "reason": "reward/mean smoothed 0.61 not improved", "signals": {"reward/mean": 0.6}}]}))
''')


@pytest.fixture
def setup(tmp_path, monkeypatch):
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for name in ("sft", "rl_reasoning", "rl_general"):
        (tmp_path / f"{name}.yaml").write_text("# a stage config\n")
    yaml = tmp_path / "pipeline.yaml"
    yaml.write_text(textwrap.dedent(f"""
        run_dir: {tmp_path / 'run'}
        stage_command: [{sys.executable}, {script}]
        stages:
          - name: sft
            config: {tmp_path / 'sft.yaml'}
            kind: sft
            overrides: ["--trainer.max_steps=4"]
          - name: rl_reasoning
            config: {tmp_path / 'rl_reasoning.yaml'}
            checkpoint_every_n_steps: 2
          - name: rl_general
            config: {tmp_path / 'rl_general.yaml'}
            overrides: ["--trainer.max_steps=3"]
    """))

    def read_calls():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return tmp_path, yaml, read_calls


def test_the_stage_move_decided_by_the_callback_is_recorded_printed_and_reported(setup, capsys):
    from ring_lightning.report import build_report

    tmp, yaml, calls = setup
    assert main(["-c", str(yaml)]) == 0
    state = json.loads((tmp / "run" / STATE_FILE).read_text())
    move = state["stages"]["rl_reasoning"]["outputs"]["transition"]["transitions"][0]
    assert move["step"] == 17 and move["rule"] == ["plateau"] and move["signals"] == {"reward/mean": 0.6}
    assert "transition" not in state["stages"]["rl_general"]["outputs"]  # that stage wrote no record
    out = capsys.readouterr().out
    assert "rl_reasoning: stage move reasoning -> general at step 17 by rule plateau" in out
    report = build_report(tmp / "run").read_text()
    assert "## Stage moves" in report and "**rl_reasoning**: stage move reasoning -> general at step 17" in report
    assert "reward/mean = 0.6" in report


def test_stages_run_in_order_passing_each_export_forward(setup):
    tmp, yaml, calls = setup
    assert main(["-c", str(yaml)]) == 0
    c = calls()
    assert [Path(x["config"]).stem for x in c] == ["sft", "rl_reasoning", "rl_general"]
    run = (tmp / "run").resolve()
    assert c[0]["model"] is None and c[0]["resume"] is None
    assert c[1]["model"] == str(run / "sft" / "rl_readiness" / "export")
    assert c[2]["model"] == str(run / "rl_reasoning" / "export")
    assert "--trainer.max_steps=4" in c[0]["argv"] and "--trainer.callbacks.every_n_train_steps=2" in c[1]["argv"]
    assert f"--trainer.callbacks.dirpath={run / 'rl_general' / 'checkpoints'}" in c[2]["argv"]
    assert c[2]["argv"][-1] == "--trainer.max_steps=3"  # user overrides come after the pipeline's
    assert [x["stage_dir_env"] for x in c] == [str(run / n) for n in ("sft", "rl_reasoning", "rl_general")]
    state = json.loads((tmp / "run" / STATE_FILE).read_text())
    assert {k: v["status"] for k, v in state["stages"].items()} == dict.fromkeys(["sft", "rl_reasoning", "rl_general"], "finished")
    assert state["final_model"] == str(run / "rl_general" / "export")
    assert state["stages"]["sft"]["outputs"]["sft_tokens"] == 1234 and state["stages"]["sft"]["outputs"]["chosen_step"] == 4
    # the SFT token count travels with the export (RLModule / TokenEfficiency read it there)
    meta = json.loads((run / "sft" / "rl_readiness" / "export" / "ring_lightning_meta.json").read_text())
    assert meta["sft_loss_tokens_seen"] == 1234
    # a second run has nothing left to do
    assert main(["-c", str(yaml)]) == 0 and len(calls()) == 3


def test_failed_stage_resumes_with_ckpt_path_last_and_finished_stages_are_skipped(setup, monkeypatch):
    tmp, yaml, calls = setup
    monkeypatch.setenv("FAKE_FAIL", "rl_reasoning")
    assert main(["-c", str(yaml)]) == 3
    state = json.loads((tmp / "run" / STATE_FILE).read_text())
    assert state["stages"]["sft"]["status"] == "finished"
    assert state["stages"]["rl_reasoning"]["status"] == "failed" and state["stages"]["rl_reasoning"]["returncode"] == 3
    assert "rl_general" not in state["stages"]
    assert main(["-c", str(yaml)]) == 0
    c = calls()
    assert [(Path(x["config"]).stem, x["resume"]) for x in c] == [
        ("sft", None), ("rl_reasoning", None), ("rl_reasoning", "last"), ("rl_general", None)]
    state = json.loads((tmp / "run" / STATE_FILE).read_text())
    assert state["stages"]["rl_reasoning"]["attempts"] == 2
    assert c[3]["model"] == str((tmp / "run" / "rl_reasoning" / "export").resolve())


def test_a_stage_interrupted_while_running_resumes(setup):
    """The pipeline process itself died mid-stage: the state says "started"; the re-run resumes it."""
    tmp, yaml, calls = setup
    assert main(["-c", str(yaml)]) == 0
    path = tmp / "run" / STATE_FILE
    state = json.loads(path.read_text())
    state["stages"]["rl_general"] = {"status": "started", "attempts": 1}
    state.pop("final_model")
    path.write_text(json.dumps(state))
    (tmp / "run" / "rl_general" / "config.yaml").write_text("old: 1\n")
    assert main(["-c", str(yaml), f"--run_dir={tmp / 'run'}"]) == 0
    c = calls()
    assert [(Path(x["config"]).stem, x["resume"]) for x in c][3:] == [("rl_general", "last")]
    assert (tmp / "run" / "rl_general" / "config.attempt-1.yaml").read_text() == "old: 1\n"
    assert json.loads(path.read_text())["stages"]["rl_general"]["status"] == "finished"


def test_config_errors_name_the_problem(setup, tmp_path):
    with pytest.raises(ValueError, match="init_from='rl' is not an earlier stage"):
        Pipeline([StageSpec("sft", "a.yaml", kind="sft", init_from="rl"), StageSpec("rl", "b.yaml")])
    with pytest.raises(ValueError, match="unique"):
        Pipeline([StageSpec("a", "a.yaml"), StageSpec("a", "b.yaml")])
    # an SFT stage that wrote no readiness decision
    script = tmp_path / "noop.py"
    script.write_text("import sys\n")
    p = Pipeline([StageSpec("sft", "a.yaml", kind="sft")], run_dir=str(tmp_path / "r"),
                 stage_command=[sys.executable, str(script)])
    with pytest.raises(PipelineError, match="stage 'sft' .*wrote no .*rl_readiness.json; add .*RLReadinessSelector"):
        p.run()
    state = json.loads((tmp_path / "r" / STATE_FILE).read_text())
    assert state["stages"]["sft"]["status"] == "failed" and "rl_readiness.json" in state["stages"]["sft"]["error"]
    # through main(): a one-line error and a non-zero exit code instead of a traceback
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"run_dir: {tmp_path / 'r'}\nstage_command: [{sys.executable}, {script}]\n"
                    "stages:\n  - {name: sft, config: a.yaml, kind: sft}\n")
    assert main(["-c", str(yaml)]) == 1
    assert main(["-c", str(yaml), "--stages.oops=1"]) == 2


def test_repo_pipeline_yaml_parses_and_names_existing_stage_configs():
    from ring_lightning.pipeline import build_parser

    repo = Path(__file__).resolve().parents[2]
    parser = build_parser()
    cfg = parser.parse_args(["-c", str(repo / "configs/quickstart/pipeline.yaml")])
    names = [s.name for s in cfg.stages]
    assert names == ["sft", "rl_reasoning", "rl_general"]
    assert [s.kind for s in cfg.stages] == ["sft", "rl", "rl"]
    for s in cfg.stages:
        assert (repo / s.config).is_file(), s.config


def test_rl_general_config_parses_with_its_callbacks_and_stage():
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "ring_lightning", "fit", "-c", "configs/quickstart/rl_general.yaml",
                           "--model.init_args.model=/some/export", "--print_config"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for line in ("ring_lightning.callbacks.entropy_guard.EntropyCollapseGuard", "action: raise_entropy_coef",
                 "ring_lightning.callbacks.token_efficiency.TokenEfficiency", "stage: general",
                 "model: /some/export", "ring_lightning.modules.rl.RLModule"):
        assert line in out, line


def _stub_eval(monkeypatch):
    """Replace the real held-out evaluation by a stub that records its calls and scores by stage."""
    import ring_lightning.eval.heldout as heldout

    calls = []

    def evaluate_model(model, spec, reward=None):
        calls.append((model, spec.seed))
        stage = Path(model).parent.name  # <stage>/export, or sft/rl_readiness/export
        correct = {"rl_readiness": [0, 1], "rl_reasoning": [1, 2], "rl_general": [2, 2]}[stage]
        return {"model": model, "seconds": 0.5, "domains": {},
                "sets": {"math": {"prompts": 2, "samples": 4, "pass@1": sum(correct) / 4, "pass@1_se": 0.25,
                                  "pass@2": 0.5, "num_correct": correct, "num_samples": [2, 2]}}}

    monkeypatch.setattr(heldout, "evaluate_model", evaluate_model)
    return calls


EVAL_YAML = """
evaluation:
  sets:
    math: {task: addition, size: 2, task_kwargs: {split: heldout}}
  samples_per_prompt: 2
  k: [1, 2]
"""


def test_each_export_is_evaluated_once_recorded_and_reported(setup, monkeypatch):
    tmp, yaml, calls = setup
    yaml.write_text(yaml.read_text() + EVAL_YAML)
    evals = _stub_eval(monkeypatch)
    monkeypatch.setenv("FAKE_FAIL", "rl_general")
    assert main(["-c", str(yaml)]) == 3  # the last stage fails: the first two are evaluated already
    run = (tmp / "run").resolve()
    models = [str(run / "sft" / "rl_readiness" / "export"), str(run / "rl_reasoning" / "export")]
    assert [m for m, _ in evals] == models
    state = json.loads((tmp / "run" / STATE_FILE).read_text())
    sft_eval = state["stages"]["sft"]["eval"]
    assert sft_eval["model"] == models[0] and sft_eval["sets"]["math"]["num_correct"] == [0, 1]
    assert sft_eval["spec"]["samples_per_prompt"] == 2 and sft_eval["spec"]["sets"]["math"]["task"] == "addition"
    assert json.loads((tmp / "run" / "rl_reasoning" / "heldout.json").read_text())["sets"]["math"]["pass@1"] == 0.75
    # the re-run resumes the failed stage and evaluates only its export
    assert main(["-c", str(yaml)]) == 0
    assert [m for m, _ in evals] == [*models, str(run / "rl_general" / "export")]
    report = (tmp / "run" / "report.md").read_text()
    assert "| math (2 prompts × 2) | pass@1 | 0.250 ± 0.250 | 0.750 ± 0.250 | 1.000 ± 0.250 | +0.500 ± 0.000 | " \
           "+0.250 ± 0.250 |" in report
    # nothing left to do; changed evaluation settings re-evaluate every export (stages are not re-run)
    assert main(["-c", str(yaml)]) == 0 and len(evals) == 3
    n_stage_calls = len(calls())
    assert main(["-c", str(yaml), "--evaluation.seed=99"]) == 0
    assert [seed for _, seed in evals[3:]] == [99, 99, 99] and len(calls()) == n_stage_calls


def test_evaluation_can_be_limited_to_some_stages(setup, monkeypatch):
    tmp, yaml, _ = setup
    yaml.write_text(yaml.read_text() + EVAL_YAML + "  stages: [sft, rl_general]\nreport: false\n")
    evals = _stub_eval(monkeypatch)
    assert main(["-c", str(yaml)]) == 0
    assert [Path(m).parent.name for m, _ in evals] == ["rl_readiness", "rl_general"]
    assert not (tmp / "run" / "report.md").exists()
    yaml.write_text(yaml.read_text().replace("stages: [sft, rl_general]", "stages: [sft, nope]"))
    assert main(["-c", str(yaml)]) == 1  # one-line error naming the unknown stage
