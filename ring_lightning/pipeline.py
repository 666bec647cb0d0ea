"""The Ring-lite recipe end to end: SFT -> (RL-ready checkpoint, exported) -> reasoning RL -> general RL.

Ring-lite (arXiv 2506.14731, §3) trains in stages: long-CoT SFT (distillation), then C3PO RL on
reasoning data, then general RL; the RL start is the SFT checkpoint chosen by entropy (the
distillation/RL interplay study), not the last one. `python -m ring_lightning pipeline -c
pipeline.yaml` runs that chain. Each stage is an ordinary `fit` config (runnable alone with
`python -m ring_lightning fit -c <config>`) plus per-stage overrides, run as a subprocess
`python -m ring_lightning fit ...` so vLLM / Lightning / distributed state never leaks between
stages. What the pipeline adds to each stage's command line: docs/design.md#pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ring_lightning.callbacks.stage_transition import RECORD_FILE, describe_record
from ring_lightning.eval.heldout import ExportEvaluator, HeldoutEval, summary_line
from ring_lightning.stage_outputs import ckpt_sft_tokens, enable_kv_cache, fresh_export, latest_checkpoint

STATE_FILE = "pipeline_state.json"
from ring_lightning.models.export import META_FILE  # noqa: E402  (one definition: models/export.py)
STAGE_DIR_ENV = "RING_LIGHTNING_STAGE_DIR"
DEFAULT_MODULES = {"sft": "ring_lightning.modules.sft.SFTModule", "rl": "ring_lightning.modules.rl.RLModule"}


class PipelineError(RuntimeError):
    """A stage's output is missing or unusable (the message names the stage and the file)."""


@dataclass
class StageSpec:
    """One stage of the pipeline.

    Args:
        name: unique stage name (its directory under run_dir).
        config: the stage's `fit` config file (also runnable alone with `fit -c`).
        kind: "sft" (output: the RL-readiness choice) or "rl" (output: the last checkpoint).
        overrides: extra CLI arguments for this stage (e.g. "--trainer.max_steps=20").
        init_from: the stage whose exported model this stage starts from; None = the previous
            stage ("" for the first stage = none).
        init_arg: the CLI argument receiving that model directory.
        readiness_json: kind "sft": the selector's JSON, relative to the stage directory.
        module_cls: LightningModule class used to export the stage's checkpoint; None = by kind.
        checkpoint_every_n_steps: how often the appended ModelCheckpoint saves `last.ckpt` (it only
            keeps `last.ckpt`; the config's own checkpoint callbacks keep working as configured).
    """

    name: str
    config: str
    kind: Literal["sft", "rl"] = "rl"
    overrides: list[str] = field(default_factory=list)
    init_from: str | None = None
    init_arg: str = "--model.init_args.model"
    readiness_json: str = "rl_readiness/rl_readiness.json"
    module_cls: str | None = None
    checkpoint_every_n_steps: int = 10


class Pipeline:
    """Run stages in order as `fit` subprocesses, passing each stage's exported model forward.

    Args:
        stages: the stages, in order.
        run_dir: where stage directories and `pipeline_state.json` go.
        stage_command: the command prefix of a stage; None = [python, -m, ring_lightning, fit].
        env: extra environment variables for the stage processes.
        log_to_file: write each stage's output to `<run_dir>/<stage>/stage.log` (else inherit stdout).
        evaluation: held-out evaluation of each stage's export (`eval/heldout.HeldoutEval`); None = none.
        report: write `<run_dir>/report.md` + PNG curves at the end (`report.py`).
    """

    def __init__(self, stages: list[StageSpec], run_dir: str = "runs/pipeline", stage_command: list[str] | None = None,
                 env: dict[str, str] | None = None, log_to_file: bool = True, evaluation: HeldoutEval | None = None,
                 report: bool = True) -> None:
        if not stages:
            raise ValueError("pipeline: `stages` is empty; list at least one stage (name, config)")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline: stage names must be unique, got {names}")
        for i, s in enumerate(stages):
            if s.kind not in DEFAULT_MODULES:
                raise ValueError(f"pipeline: stage {s.name!r}: kind must be 'sft' or 'rl', got {s.kind!r}")
            if s.init_from and s.init_from not in names[:i]:
                raise ValueError(f"pipeline: stage {s.name!r}: init_from={s.init_from!r} is not an earlier stage "
                                 f"(earlier: {names[:i]})")
            if s.checkpoint_every_n_steps < 1:
                raise ValueError(f"pipeline: stage {s.name!r}: checkpoint_every_n_steps must be >= 1")
        self.stages = stages
        self.run_dir = Path(run_dir)
        self.stage_command = list(stage_command) if stage_command else [sys.executable, "-m", "ring_lightning", "fit"]
        self.env = dict(env or {})
        self.log_to_file = log_to_file
        self.evaluation, self.report = evaluation, report
        unknown = sorted(set(evaluation.stages or []) - set(names)) if evaluation is not None else []
        if unknown:
            raise ValueError(f"pipeline: evaluation.stages names unknown stages {unknown}; stages: {names}")
        self._t0 = time.time()
        self._evaluator: ExportEvaluator | None = None

    def _say(self, msg: str, err: bool = False) -> None:
        elapsed = int(time.time() - self._t0)
        print(f"[pipeline {elapsed // 60:d}:{elapsed % 60:02d}] {msg}", file=sys.stderr if err else sys.stdout,
              flush=True)

    # ------------------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def load_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {"version": 1, "stages": {}}
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"pipeline: {self.state_path} is not valid JSON ({e}); fix or delete it "
                             "(deleting restarts every stage)") from None
        state.setdefault("stages", {})
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".tmp-{STATE_FILE}")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    # ---------------------------------------------------------------------------- command
    def stage_dir(self, spec: StageSpec) -> Path:
        return self.run_dir / spec.name

    def command(self, spec: StageSpec, init_model: str | None, resume: bool) -> list[str]:
        d = self.stage_dir(spec).resolve()
        cmd = [*self.stage_command, "-c", spec.config, f"--trainer.default_root_dir={d}",
               "--trainer.enable_checkpointing=true",
               "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.dirpath={d / 'checkpoints'}", "--trainer.callbacks.save_last=true",
               "--trainer.callbacks.save_top_k=0",
               # mode is unused without a monitor; "max" keeps this callback's state key distinct from a
               # ModelCheckpoint already in the config (Lightning refuses two with the same key)
               "--trainer.callbacks.mode=max",
               f"--trainer.callbacks.every_n_train_steps={spec.checkpoint_every_n_steps}"]
        if spec.kind == "rl":  # the final weights too, whatever max_steps is: <stage>/checkpoints/end/last.ckpt
            cmd += ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                    f"--trainer.callbacks.dirpath={d / 'checkpoints' / 'end'}", "--trainer.callbacks.save_last=true",
                    "--trainer.callbacks.save_top_k=0", "--trainer.callbacks.every_n_epochs=1",
                    "--trainer.callbacks.save_on_train_epoch_end=true"]
        if init_model is not None:
            cmd.append(f"{spec.init_arg}={init_model}")
        cmd += list(spec.overrides)
        if resume:
            cmd.append("--ckpt_path=last")
        return cmd

    def _init_model(self, i: int, state: dict[str, Any]) -> str | None:
        spec = self.stages[i]
        src = spec.init_from if spec.init_from is not None else (self.stages[i - 1].name if i else None)
        if not src:
            return None
        rec = state["stages"].get(src, {})
        model = rec.get("outputs", {}).get("model")
        if rec.get("status") != "finished" or not model:
            raise RuntimeError(f"pipeline: stage {spec.name!r} starts from stage {src!r}, which has no exported "
                               f"model in {self.state_path}")
        return model

    # -------------------------------------------------------------------------------- run
    def run(self) -> int:
        """Run (or resume) every unfinished stage; 0 on success, the failing stage's exit code else."""
        self._evaluator = ExportEvaluator(self.evaluation) if self.evaluation is not None else None
        try:
            return self._run()
        finally:
            if self._evaluator is not None:
                self._evaluator.close()

    def _run(self) -> int:
        self._t0 = time.time()
        state = self.load_state()
        state["stage_order"] = [s.name for s in self.stages]
        state["started_at"], state["finished_at"] = self._t0, None
        for i, spec in enumerate(self.stages):
            rec = state["stages"].setdefault(spec.name, {"status": "pending", "attempts": 0})
            if rec["status"] == "finished":
                self._say(f"{spec.name}: finished earlier -> {rec['outputs'].get('model')}")
                self._evaluate(spec, rec, state)
                continue
            init_model = self._init_model(i, state)
            resume = rec["status"] in ("started", "failed")
            d = self.stage_dir(spec)
            d.mkdir(parents=True, exist_ok=True)
            if resume and (d / "config.yaml").exists():
                os.replace(d / "config.yaml", d / f"config.attempt-{rec['attempts']}.yaml")
            cmd = self.command(spec, init_model, resume)
            started = time.time()
            rec.update(status="started", attempts=rec["attempts"] + 1, command=cmd, started_at=started,
                       init_model=init_model)
            self.save_state(state)
            where = f" (output: {d / 'stage.log'})" if self.log_to_file else ""
            self._say(f"{spec.name}: {'resuming' if resume else 'starting'} (attempt {rec['attempts']}){where}: "
                      f"{' '.join(cmd)}")
            rc = self._spawn(cmd, d)
            if rc != 0:
                rec.update(status="failed", returncode=rc)
                self.save_state(state)
                self._say(f"{spec.name}: FAILED with exit code {rc} after {time.time() - started:.0f} s{where}. Fix "
                          "the cause and re-run the same command: finished stages are skipped and this one resumes "
                          "from its last checkpoint.", err=True)
                return rc
            try:
                rec["outputs"] = self._outputs(spec, started)
            except Exception as e:
                rec.update(status="failed", returncode=0, error=f"{type(e).__name__}: {e}")
                self.save_state(state)
                raise PipelineError(f"stage {spec.name!r} ran but its output could not be collected: {e}") from e
            rec.update(status="finished", returncode=0, finished_at=time.time())
            self.save_state(state)
            self._say(f"{spec.name}: finished in {rec['finished_at'] - started:.0f} s -> {rec['outputs']['model']}")
            self._evaluate(spec, rec, state)
        state["final_model"] = state["stages"][self.stages[-1].name]["outputs"]["model"]
        state["finished_at"] = time.time()
        self.save_state(state)
        if self.report:
            from ring_lightning.report import build_report

            self._say(f"report: {build_report(self.run_dir)}")
        self._say(f"done in {state['finished_at'] - self._t0:.0f} s; final model: {state['final_model']}")
        return 0

    # -------------------------------------------------------------------------- evaluation
    def _evaluate(self, spec: StageSpec, rec: dict[str, Any], state: dict[str, Any]) -> None:
        """Score the stage's export on the held-out sets, unless done before with the same model and settings."""
        if self._evaluator is None or not self._evaluator.wants(spec.name):
            return
        model, done = rec["outputs"]["model"], rec.get("eval") or {}
        if self._evaluator.is_done(done, model):
            self._say(f"{spec.name}: held-out evaluation done earlier ({summary_line(done)})")
            return
        self._say(f"{spec.name}: held-out evaluation of {model} ({self._evaluator.describe()})")
        rec["eval"] = self._evaluator.evaluate(model, self.stage_dir(spec) / "heldout.json")
        self.save_state(state)
        self._say(f"{spec.name}: held-out evaluation finished in {rec['eval']['seconds']:.0f} s: "
                  f"{summary_line(rec['eval'])}")

    def _spawn(self, cmd: list[str], stage_dir: Path) -> int:
        env = {**os.environ, **self.env, STAGE_DIR_ENV: str(stage_dir.resolve())}
        if not self.log_to_file:
            return subprocess.run(cmd, env=env).returncode
        with open(stage_dir / "stage.log", "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode

    # ---------------------------------------------------------------------------- outputs
    def _outputs(self, spec: StageSpec, started: float) -> dict[str, Any]:
        d = self.stage_dir(spec)
        export = d / "export"
        if spec.kind == "sft":
            path = d / spec.readiness_json
            if not path.is_file():
                raise FileNotFoundError(f"pipeline: SFT stage {spec.name!r} wrote no {path}; add "
                                        "ring_lightning.callbacks.rl_readiness.RLReadinessSelector (default dirpath) "
                                        "to its callbacks or set the stage's readiness_json")
            decision = json.loads(path.read_text())
            chosen = decision.get("chosen") or {}
            if not chosen.get("path") and not decision.get("exported_to"):
                raise RuntimeError(f"pipeline: {path} chose no checkpoint ({decision.get('reason')}); the SFT stage "
                                   "needs validations with EntropyMonitor and save_candidates=True")
            ckpt, sft_tokens = chosen.get("path"), chosen.get("sft_tokens")
            if decision.get("exported_to") and (Path(decision["exported_to"]) / "config.json").is_file():
                export = Path(decision["exported_to"])
            elif not fresh_export(export, started):
                self._export(ckpt, export, spec)
            out = {"model": str(export.resolve()), "checkpoint": ckpt, "readiness": str(path),
                   "chosen_step": chosen.get("step"), "entropy": chosen.get("entropy"),
                   "fallback": decision.get("fallback")}
        else:
            ckpt = latest_checkpoint([d / "checkpoints" / "end" / "last.ckpt", d / "checkpoints" / "last.ckpt"])
            sft_tokens = None
            if not fresh_export(export, started):
                if not Path(ckpt).is_file():
                    raise FileNotFoundError(f"pipeline: RL stage {spec.name!r} finished without {ckpt}; did its config "
                                            "disable checkpointing?")
                self._export(ckpt, export, spec)
            if Path(ckpt).is_file():
                sft_tokens = ckpt_sft_tokens(ckpt)
            out = {"model": str(export.resolve()), "checkpoint": ckpt if Path(ckpt).is_file() else None}
            move = transition_record(d, started)
            if move is not None:
                out["transition"] = move
                self._say(f"{spec.name}: {describe_record(move)}")
        enable_kv_cache(export)
        if sft_tokens:
            meta = export / META_FILE
            if not meta.exists():
                tmp = export / f".tmp-{META_FILE}"
                tmp.write_text(json.dumps({"sft_loss_tokens_seen": int(sft_tokens), "source_stage": spec.name}) + "\n")
                os.replace(tmp, meta)
            out["sft_tokens"] = int(sft_tokens)
        return out

    def _export(self, ckpt: str | None, out: Path, spec: StageSpec) -> None:
        from ring_lightning.callbacks.export import export_checkpoint

        if not ckpt or not Path(ckpt).exists():
            raise FileNotFoundError(f"pipeline: stage {spec.name!r}: checkpoint to export not found: {ckpt}")
        self._say(f"{spec.name}: exporting {ckpt} -> {out}")
        export_checkpoint(ckpt, out, module_cls=spec.module_cls or DEFAULT_MODULES[spec.kind], overwrite=True)


def transition_record(stage_dir: Path, started: float) -> dict[str, Any] | None:
    """The stage's StageTransition record (`callbacks/stage_transition.py`), if this attempt wrote one."""
    path = stage_dir / RECORD_FILE
    if not path.is_file() or path.stat().st_mtime < started:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"pipeline: {path} is not valid JSON ({e})") from None


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="python -m ring_lightning pipeline", exit_on_error=False,
                            description="Run the Ring-lite stages (SFT -> reasoning RL -> general RL) as fit subprocesses.")
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="the pipeline YAML")
    parser.add_class_arguments(Pipeline, None, as_group=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m ring_lightning pipeline -c pipeline.yaml [--run_dir=...]`; returns the exit code.

    The YAML holds `Pipeline`'s arguments at the top level (stages, run_dir, stage_command, env,
    log_to_file). Relative paths (configs, run_dir) are relative to the working directory."""
    from argparse import ArgumentError

    parser = build_parser()
    try:
        cfg = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except ArgumentError as e:
        print(f"ring_lightning pipeline: config error: {e}", file=sys.stderr, flush=True)
        return 2
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    names = ("stages", "run_dir", "stage_command", "env", "log_to_file", "evaluation", "report")
    try:
        return Pipeline(**{k: init[k] for k in names}).run()
    except (PipelineError, ValueError, FileNotFoundError) as e:
        print(f"ring_lightning pipeline: error: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
