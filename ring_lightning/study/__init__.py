"""`python -m ring_lightning study -c configs/quickstart/study.yaml`: Ring-lite's two RL findings in miniature.

Ring-lite (arXiv 2506.14731) reports (§4.3) that the RL gain depends on where SFT stopped (start RL
from the checkpoint whose entropy is in 0.3-0.5 nats, not from the longest SFT) and (Fig. 7) that
C3PO's fixed token budget keeps the trained tokens per step constant and the gradient norm steadier
than GRPO. This command: (a) SFT once with a candidate every `sft_every` steps, all kept; reasoning
RL (C3PO) from each, held-out math pass@1 before/after (paired gain ± s.e.), the RL entropy curves
and token efficiency (RL loss tokens / SFT loss tokens); (b) C3PO vs GRPO from the start the
quickstart's selector picks (rl_readiness.json `chosen`), both for exactly `rl_steps` steps.
Deviation: every RL run is fixed-length (the configs' StageTransition is dropped, `drop_callbacks`),
so the comparisons hold the step count equal. The C3PO run of (b) is (a)'s run from that start.
Writes `<out_dir>/study.md`, `study.json`, PNGs (study/report.py); finished runs are reused (timings.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ring_lightning.eval.heldout import ExportEvaluator, HeldoutEval, paired_difference
from ring_lightning.pipeline import STAGE_DIR_ENV

READINESS = Path("rl_readiness") / "rl_readiness.json"


class StudyError(RuntimeError):
    """A study step failed or its output is missing (the message names the step and the file)."""


@dataclass
class Study:
    """The study's knobs (the YAML holds them at the top level).

    Args:
        out_dir: where every run, evaluation, `study.md`, `study.json` and the PNGs go.
        sft_config: the SFT fit config (EntropyMonitor + RLReadinessSelector in it).
        sft_every: SFT steps between candidates (the config's val_check_interval is set to it).
        sft_max_steps: SFT length; None = the config's max_steps.
        rl_config: the reasoning-RL fit config (objective C3PO, as configured).
        rl_steps: optimizer steps of every RL run (fixed: `drop_callbacks` are removed).
        rl_overrides: extra command-line arguments of every RL run.
        drop_callbacks: callback class names removed from the RL config (those that end a run early).
        grpo_class: the GRPO objective; it takes the C3PO init_args it accepts (clip, KL, entropy).
        evaluation: the held-out evaluation (eval/heldout.HeldoutEval); its set `eval_set` is scored.
        eval_set: the evaluation set of the report (held-out math).
        env: extra environment variables of the fit subprocesses.
    """

    out_dir: str = "runs/study"
    sft_config: str = "configs/quickstart/sft.yaml"
    sft_every: int = 100
    sft_max_steps: int | None = None
    rl_config: str = "configs/quickstart/rl_reasoning.yaml"
    rl_steps: int = 25
    rl_overrides: list[str] = field(default_factory=list)
    drop_callbacks: list[str] = field(default_factory=lambda: ["StageTransition"])
    grpo_class: str = "ring_lightning.rl.objectives.GRPO"
    evaluation: HeldoutEval | None = None
    eval_set: str = "math"
    env: dict[str, str] = field(default_factory=lambda: {"OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "WARNING"})

    def __post_init__(self) -> None:
        if self.sft_every < 1 or self.rl_steps < 1:
            raise ValueError(f"study: sft_every and rl_steps must be >= 1, got {self.sft_every}, {self.rl_steps}")
        if self.evaluation is None:
            raise ValueError("study: `evaluation` is missing; give a held-out set, e.g. evaluation: {sets: {math: "
                             "{task: addition, size: 73, seed: 7, task_kwargs: {split: heldout}}}}")
        if self.eval_set not in self.evaluation.sets:
            raise ValueError(f"study: eval_set={self.eval_set!r} is not among evaluation.sets "
                             f"{sorted(self.evaluation.sets)}")


class StudyRun:
    """Runs the study's fits (subprocesses `python -m ring_lightning fit`) and evaluations."""

    def __init__(self, spec: Study) -> None:
        self.spec, self.out = spec, Path(spec.out_dir).resolve()
        self.evaluator = ExportEvaluator(dataclasses.replace(spec.evaluation, stages=None))
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        print(f"[study {int(time.time() - self.t0):4d} s] {msg}", flush=True)

    def fit(self, config: Path, stage_dir: Path, *overrides: str) -> None:
        stage_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.env, STAGE_DIR_ENV: str(stage_dir)}
        cmd = [sys.executable, "-m", "ring_lightning", "fit", "-c", str(config),
               f"--trainer.default_root_dir={stage_dir}", "--trainer.enable_progress_bar=false", *overrides]
        started = time.time()
        with open(stage_dir / "stage.log", "w") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc:
            raise StudyError(f"study: {' '.join(cmd)} failed with exit code {rc}; see {stage_dir / 'stage.log'}")
        seconds = time.time() - started
        self.say(f"{stage_dir.name}: {seconds:.0f} s")
        timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.timings_path.write_text(json.dumps({**timings, stage_dir.name: round(seconds, 1)}, indent=2) + "\n")

    @property
    def timings_path(self) -> Path:
        return self.out / "timings.json"

    def evaluate(self, model: Path, name: str) -> dict[str, Any]:
        path = self.out / f"heldout_{name}.json"
        if path.is_file():
            done = json.loads(path.read_text())
            if self.evaluator.is_done(done, str(model)):
                return done["sets"][self.spec.eval_set]
        return self.evaluator.evaluate(str(model), path)["sets"][self.spec.eval_set]

    # ----------------------------------------------------------------------------- SFT
    def sft(self) -> dict[str, Any]:
        """SFT once with every candidate kept; the selector's decision (candidates, chosen)."""
        cfg = yaml.safe_load(Path(self.spec.sft_config).read_text())
        cfg["trainer"]["val_check_interval"] = self.spec.sft_every
        if self.spec.sft_max_steps is not None:
            cfg["trainer"]["max_steps"] = self.spec.sft_max_steps
        selectors = [cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("RLReadinessSelector")]
        if not selectors:
            raise StudyError(f"study: {self.spec.sft_config} has no RLReadinessSelector callback (the candidates)")
        selectors[0].setdefault("init_args", {}).update(keep_only_chosen=False, outside_band="closest")
        path = self.write_config("sft.yaml", cfg)
        decision = self.out / "sft" / READINESS
        if not decision.is_file():
            self.fit(path, self.out / "sft")
        out = json.loads(decision.read_text())
        if not out.get("candidates") or not (out.get("chosen") or {}).get("path"):
            raise StudyError(f"study: {decision} holds no candidates or no chosen checkpoint ({out.get('reason')})")
        return out

    def export_candidate(self, cand: dict[str, Any]) -> Path:
        from ring_lightning.callbacks.export import export_checkpoint
        from ring_lightning.models.export import META_FILE

        start = self.out / f"sft_export_{cand['step']}"
        if not (start / "config.json").is_file():
            export_checkpoint(cand["path"], start, module_cls="ring_lightning.modules.sft.SFTModule", overwrite=True)
            if cand.get("sft_tokens"):
                meta = {"sft_loss_tokens_seen": int(cand["sft_tokens"]), "source_stage": "sft"}
                (start / META_FILE).write_text(json.dumps(meta) + "\n")
        return start

    # ------------------------------------------------------------------------------ RL
    def rl_configs(self) -> dict[str, Path]:
        """The RL config with `drop_callbacks` removed, fixed at rl_steps: one copy per objective."""
        from ring_lightning.cli_messages import import_class

        cfg = yaml.safe_load(Path(self.spec.rl_config).read_text())
        cbs = cfg["trainer"].get("callbacks") or []
        cfg["trainer"]["callbacks"] = [cb for cb in cbs if cb["class_path"].rsplit(".", 1)[-1]
                                       not in self.spec.drop_callbacks]
        cfg["trainer"]["max_steps"] = self.spec.rl_steps
        objective = cfg["model"]["init_args"]["objective"]
        grpo_fields = {f.name for f in dataclasses.fields(import_class(self.spec.grpo_class))}
        shared = {k: v for k, v in (objective.get("init_args") or {}).items() if k in grpo_fields}
        paths = {}
        for name, obj in (("c3po", objective), ("grpo", {"class_path": self.spec.grpo_class, "init_args": shared})):
            cfg["model"]["init_args"]["objective"] = obj
            paths[name] = self.write_config(f"rl_{name}.yaml", cfg, f"# rl_overrides: {self.spec.rl_overrides}\n")
        return paths

    def write_config(self, name: str, cfg: dict[str, Any], header: str = "") -> Path:
        """Write a run's config copy; one differing from the copy already there means other settings."""
        path, text = self.out / name, header + yaml.safe_dump(cfg, sort_keys=False)
        if path.is_file() and path.read_text() != text:
            raise StudyError(f"study: {path} was written with other settings; its runs would be reused. Use "
                             "another out_dir, or delete that one to redo the study")
        path.write_text(text)
        return path

    def rl(self, config: Path, start: Path, name: str) -> dict[str, Any]:
        """RL from `start` (skipped when its export exists); its metrics and the held-out result after."""
        from ring_lightning.report import read_stage_metrics

        d = self.out / name
        if not (d / "export" / "config.json").is_file():
            self.fit(config, d, f"--model.init_args.model={start}", *self.spec.rl_overrides)
        metrics = read_stage_metrics(d)
        if not metrics:
            raise StudyError(f"study: {d} has no metrics.csv (the RL config needs a CSVLogger)")
        return {"metrics": metrics, "after": self.evaluate(d / "export", name)}

    def run(self) -> Path:
        from ring_lightning.study.report import write_report

        self.out.mkdir(parents=True, exist_ok=True)
        try:
            decision = self.sft()
            configs = self.rl_configs()
            starts, chosen = [], decision["chosen"]["step"]
            for cand in sorted(decision["candidates"], key=lambda c: c["step"]):
                start = self.export_candidate(cand)
                before = self.evaluate(start, f"sft_{cand['step']}")
                run = self.rl(configs["c3po"], start, f"rl_c3po_{cand['step']}")
                starts.append({**cand, "before": before, **run, "gain": paired_difference(before, run["after"])})
                self.say(f"start {cand['step']}: pass@1 {before['pass@1']:.3f} -> {run['after']['pass@1']:.3f}")
            base = next(s for s in starts if s["step"] == chosen)
            grpo = self.rl(configs["grpo"], self.export_candidate(base), f"rl_grpo_{chosen}")
            grpo["gain"] = paired_difference(base["before"], grpo["after"])
        finally:
            self.evaluator.close()
        timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        path = write_report(self.out, self.spec, starts, base, grpo, time.time() - self.t0, timings)
        self.say(f"report: {path}")
        return path


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="python -m ring_lightning study", exit_on_error=False,
                            description="Reproduce Ring-lite's SFT-length and C3PO-vs-GRPO findings at tiny scale.")
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="the study YAML")
    parser.add_class_arguments(Study, None, as_group=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m ring_lightning study -c study.yaml [--rl_steps=...]`; returns the exit code."""
    from argparse import ArgumentError

    parser = build_parser()
    try:
        cfg = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
        spec = Study(**{f.name: init[f.name] for f in dataclasses.fields(Study)})
    except (ArgumentError, ValueError) as e:
        print(f"ring_lightning study: config error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        StudyRun(spec).run()
    except (StudyError, FileNotFoundError, ValueError) as e:
        print(f"ring_lightning study: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
