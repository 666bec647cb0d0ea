"""StageTransition: move the RL run from one named data stage to the next without restarting.

Ring-lite (arXiv 2506.14731, §3.3 and §4) trains RL in stages — reasoning RL on math / code / logic
first, then general RL on instruction-following and preference data — and reports that the move
is made once reasoning RL saturates (and that entropy must be kept out of collapse). It gives no
mechanical rule, so this callback offers configurable triggers on logged signals (any listed fires):

* "steps": the current stage has run `after_steps` optimizer steps;
* "plateau": a smoothed metric (default `reward/mean`; the mean of the last `plateau_window` steps,
  or an EMA with decay `ema_decay` when the window is 0) has not improved by more than `min_delta`
  for `patience` consecutive steps (mode "max": higher is better);
* "entropy_band": the policy entropy (default `train/entropy`) has been outside `entropy_band` for
  `entropy_patience` consecutive steps;
* "target": a metric (default `tokens/rl_over_sft`, the token efficiency) reached `target_value`.

`handoff` "switch" moves the data module to the next stage in this run; "stop" ends the fit at the
decision (a pipeline then starts the next stage's run). Every decision — rule, step, signal values,
or that the step cap came first — is written to `record` (JSON). The callback places itself after
every other non-checkpoint callback, so it reads each step's complete metrics whatever the order
of the config's callback list. Choices and details: docs/design.md#callbacks-stage-transition.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

Trigger = Literal["steps", "plateau", "entropy_band", "target"]
TRIGGERS = ("steps", "plateau", "entropy_band", "target")
RECORD_FILE = "stage_transition.json"


def get_knob(obj: Any, path: str) -> Any:
    """The value at a dotted `path` on `obj` (attributes, or keys of dicts along the way)."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, Mapping):
            if part not in cur:
                raise KeyError(f"knob {path!r}: {type(obj).__name__} has no key {part!r} (keys: {sorted(cur)})")
            cur = cur[part]
        elif hasattr(cur, part):
            cur = getattr(cur, part)
        else:
            raise AttributeError(f"knob {path!r}: {type(cur).__name__} has no attribute {part!r}")
    return cur


def set_knob(obj: Any, path: str, value: Any) -> None:
    """Set the existing dotted `path` on `obj` to `value` (a missing attribute/key is an error)."""
    head, _, last = path.rpartition(".")
    parent = get_knob(obj, head) if head else obj
    get_knob(parent, last)  # must already exist: no silently created knobs
    if isinstance(parent, dict):
        parent[last] = value
    else:
        setattr(parent, last, value)


def metric_value(trainer: Trainer, key: str, who: str) -> float:
    """`trainer.callback_metrics[key]` as a float; a missing key is an error naming what exists."""
    metrics = trainer.callback_metrics
    if key not in metrics:
        raise KeyError(f"{who}: metric {key!r} is not logged (step {trainer.global_step}); logged metrics: "
                       f"{sorted(metrics)[:40]}; set the callback's metric key to one of them")
    return float(metrics[key])


class StageTransition(Callback):
    """Switch the datamodule's stage (prompt mixture + rewards) when a trigger fires.

    Args:
        stages: the stage names in order (names of `RolloutDataModule.stages`); the run starts in
            the first one unless resumed.
        triggers: which conditions end a stage (any fires): "steps", "plateau", "entropy_band".
        after_steps: "steps" trigger: optimizer steps per stage.
        min_stage_steps: no trigger fires before a stage has run this many steps.
        metric: "plateau" trigger: the logged metric to watch.
        mode: "plateau": "max" (higher is better) or "min".
        plateau_window: "plateau": smooth by the mean of the last this-many steps (no decision before
            the window is full); 0 = smooth by the EMA.
        ema_decay: "plateau" with plateau_window 0: EMA decay of the metric (0 = no smoothing).
        min_delta: "plateau": the smallest EMA improvement that counts.
        patience: "plateau": steps without improvement before the move.
        entropy_metric: "entropy_band" trigger: the logged entropy metric.
        entropy_band: "entropy_band": (low, high) nats; leaving it moves on.
        entropy_patience: "entropy_band": consecutive steps outside the band before the move.
        target_metric: "target" trigger: the logged metric to watch.
        target_value: "target": the move happens once the metric is >= this value.
        handoff: "switch" (set the data module's next stage in this run) or "stop" (end the fit at
            the decision; the next stage runs elsewhere, e.g. the pipeline's next stage).
        record: JSON file of the decisions; None = <trainer.default_root_dir>/stage_transition.json.
        lr_scale: stage name -> factor multiplying the learning rate on entering that stage.
        module_knobs: stage name -> {dotted attribute path on the LightningModule: value} set on
            entering that stage (e.g. {"general": {"objective.entropy_coef": 1e-3}}).
    """

    def __init__(
        self,
        stages: Sequence[str] = ("reasoning", "general"),
        triggers: Sequence[Trigger] = ("steps",),
        after_steps: int = 100,
        min_stage_steps: int = 0,
        metric: str = "reward/mean",
        mode: Literal["max", "min"] = "max",
        plateau_window: int = 0,
        ema_decay: float = 0.9,
        min_delta: float = 0.0,
        patience: int = 20,
        entropy_metric: str = "train/entropy",
        entropy_band: tuple[float, float] = (0.0, math.inf),
        entropy_patience: int = 1,
        target_metric: str = "tokens/rl_over_sft",
        target_value: float = math.inf,
        handoff: Literal["switch", "stop"] = "switch",
        record: str | None = None,
        lr_scale: dict[str, float] | None = None,
        module_knobs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.stages = [str(s) for s in stages]
        if len(self.stages) < 1 or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"StageTransition: stages must be distinct names, at least one; got {self.stages}")
        self.triggers = tuple(triggers)
        bad = [t for t in self.triggers if t not in TRIGGERS]
        if bad or not self.triggers:
            raise ValueError(f"StageTransition: unknown triggers {bad or '(none given)'}; choose from {TRIGGERS}")
        if after_steps < 1 or patience < 1 or entropy_patience < 1 or min_stage_steps < 0:
            raise ValueError("StageTransition: after_steps, patience, entropy_patience must be >= 1 and "
                             f"min_stage_steps >= 0; got {after_steps}, {patience}, {entropy_patience}, {min_stage_steps}")
        if mode not in ("max", "min") or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"StageTransition: mode must be 'max'|'min' and 0 <= ema_decay < 1; got {mode!r}, {ema_decay}")
        if plateau_window < 0 or handoff not in ("switch", "stop"):
            raise ValueError(f"StageTransition: plateau_window must be >= 0 and handoff 'switch'|'stop'; got "
                             f"{plateau_window}, {handoff!r}")
        if len(entropy_band) != 2 or not entropy_band[0] <= entropy_band[1]:
            raise ValueError(f"StageTransition: entropy_band must be (low, high) with low <= high, got {entropy_band}")
        for name, table in (("lr_scale", lr_scale), ("module_knobs", module_knobs)):
            unknown = sorted(set(table or {}) - set(self.stages))
            if unknown:
                raise ValueError(f"StageTransition: {name} names unknown stages {unknown}; stages: {self.stages}")
        self.after_steps, self.min_stage_steps = after_steps, min_stage_steps
        self.metric, self.mode, self.ema_decay, self.min_delta, self.patience = metric, mode, ema_decay, min_delta, patience
        self.entropy_metric, self.entropy_band = entropy_metric, (float(entropy_band[0]), float(entropy_band[1]))
        self.entropy_patience = entropy_patience
        self.plateau_window, self.target_metric, self.target_value = plateau_window, target_metric, float(target_value)
        self.handoff, self.record = handoff, record
        self.signals: dict[str, float] = {}  # this step's values of the watched metrics
        self.lr_scale = {k: float(v) for k, v in (lr_scale or {}).items()}
        self.module_knobs = {k: dict(v) for k, v in (module_knobs or {}).items()}
        self.index = 0
        self.stage_start_step = 0
        self.history: list[dict[str, Any]] = []  # {"step", "from", "to", "reason"}
        self._reset_trackers()

    @property
    def stage(self) -> str:
        return self.stages[self.index]

    def _reset_trackers(self) -> None:
        self.ema: float | None = None
        self.best: float | None = None
        self.since_best = 0
        self.outside_band = 0
        self.window: deque[float] = deque(maxlen=max(self.plateau_window, 1))

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Run after every other callback except checkpoints (which must save the decision): a new list,
        so Lightning's loop over the old one is undisturbed."""
        rest = [c for c in trainer.callbacks if c is not self]
        at = next((i for i, c in enumerate(rest) if isinstance(c, Checkpoint)), len(rest))
        trainer.callbacks = rest[:at] + [self] + rest[at:]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or not callable(getattr(dm, "set_stage", None)):
            raise TypeError(f"StageTransition needs a datamodule with set_stage(name) (RolloutDataModule); got "
                            f"{type(dm).__name__}")
        known = getattr(dm, "stages", None)
        if isinstance(known, Mapping):  # "stop" hands the later stages to another run
            missing = [s for s in (self.stages if self.handoff == "switch" else [self.stage]) if s not in known]
            if missing:
                raise ValueError(f"StageTransition: stages {missing} are not stages of {type(dm).__name__} "
                                 f"(it has {sorted(known)}); fix `stages` of the callback or of the data config")
        if getattr(dm, "stage", None) != self.stage:
            dm.set_stage(self.stage)
        for name in self.stages[1:self.index + 1]:  # resumed in a later stage: re-apply its knobs
            self._apply_knobs(pl_module, name)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        steps_in = trainer.global_step - self.stage_start_step
        rules, reason = self._check(trainer, steps_in)
        pending = int(getattr(trainer.datamodule, "pending_updates", 0) or 0)  # mid-rollout: wait for its end
        if self.index + 1 < len(self.stages) and not pending:
            fire = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if fire:
                self._advance(trainer, pl_module, rules or ["another rank's trigger"], reason or "another rank's trigger")
                steps_in = 0
        pl_module.log("stage/index", float(self.index), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("stage/steps_in_stage", float(steps_in), on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record how the run ended: a stop decision, or the step cap before any rule fired."""
        stopped = self.handoff == "stop" and self.history and self.history[-1]["step"] == trainer.global_step
        end = None if stopped else {"step": trainer.global_step, "stage": self.stage, "rule": None,
                                    "reason": f"the step cap came first (trainer.max_steps={trainer.max_steps})",
                                    "signals": dict(self.signals)}
        self._write(trainer, end)

    # ----------------------------------------------------------------------------- trigger
    def _smoothed(self, value: float) -> float | None:
        if self.plateau_window:
            self.window.append(value)
            return sum(self.window) / len(self.window) if len(self.window) == self.plateau_window else None
        self.ema = value if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * value
        return self.ema

    def _check(self, trainer: Trainer, steps_in: int) -> tuple[list[str], str | None]:
        """Update the trackers with this step's metrics; the rules that fired and why (None: none did)."""
        reasons: dict[str, str] = {}
        if "plateau" in self.triggers:
            value = self.signals[self.metric] = metric_value(trainer, self.metric, "StageTransition")
            smooth, sign = self._smoothed(value), (1.0 if self.mode == "max" else -1.0)
            if smooth is not None:
                self.ema = smooth
                if self.best is None or sign * (smooth - self.best) > self.min_delta:
                    self.best, self.since_best = smooth, 0
                else:
                    self.since_best += 1
                if self.since_best >= self.patience:
                    reasons["plateau"] = (f"{self.metric} smoothed {smooth:.4g} not improved by > {self.min_delta} "
                                          f"over best {self.best:.4g} for {self.since_best} steps")
        if "entropy_band" in self.triggers:
            h = self.signals[self.entropy_metric] = metric_value(trainer, self.entropy_metric, "StageTransition")
            lo, hi = self.entropy_band
            self.outside_band = self.outside_band + 1 if not lo <= h <= hi else 0
            if self.outside_band >= self.entropy_patience:
                reasons["entropy_band"] = f"{self.entropy_metric} {h:.4g} outside [{lo}, {hi}] for {self.outside_band} steps"
        if "target" in self.triggers:
            v = self.signals[self.target_metric] = metric_value(trainer, self.target_metric, "StageTransition")
            if v >= self.target_value:
                reasons["target"] = f"{self.target_metric} {v:.4g} >= target_value={self.target_value}"
        if "steps" in self.triggers and steps_in >= self.after_steps:
            reasons["steps"] = f"{steps_in} steps in stage >= after_steps={self.after_steps}"
        if not reasons or steps_in < self.min_stage_steps:
            return [], None
        return list(reasons), "; ".join(reasons.values())

    def _advance(self, trainer: Trainer, pl_module: LightningModule, rules: list[str], reason: str) -> None:
        old, self.index = self.stage, self.index + 1
        new = self.stage
        self.history.append({"step": trainer.global_step, "from": old, "to": new, "rule": rules, "reason": reason,
                             "signals": dict(self.signals)})
        if self.handoff == "stop":
            trainer.should_stop = True
            self._write(trainer, None)
            rank_zero_info(f"StageTransition: step {trainer.global_step}: {old} -> {new} ({reason}); stopping this "
                           "run (handoff: stop)")
            return
        trainer.datamodule.set_stage(new)
        factor = self.lr_scale.get(new)
        if factor is not None:
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] *= factor
                    if "initial_lr" in group:
                        group["initial_lr"] *= factor
            for cfg in trainer.lr_scheduler_configs:
                sched = cfg.scheduler
                if hasattr(sched, "base_lrs"):
                    sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        self._apply_knobs(pl_module, new)
        self.stage_start_step = trainer.global_step
        self._reset_trackers()
        self._write(trainer, None)
        rank_zero_info(f"StageTransition: step {trainer.global_step}: {old} -> {new} ({reason})")

    def _write(self, trainer: Trainer, end: dict[str, Any] | None) -> None:
        """Write the decisions (and how the run ended) atomically to `record` (rank 0)."""
        if not trainer.is_global_zero:
            return
        path = Path(self.record) if self.record else Path(trainer.default_root_dir) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(json.dumps({"stages": self.stages, "handoff": self.handoff, "triggers": list(self.triggers),
                                   "transitions": self.history, "end": end}, indent=2) + "\n")
        os.replace(tmp, path)

    def _apply_knobs(self, pl_module: LightningModule, stage: str) -> None:
        for path, value in self.module_knobs.get(stage, {}).items():
            set_knob(pl_module, path, value)

    # ---------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "index": self.index, "stage": self.stage,
                "stage_start_step": self.stage_start_step, "ema": self.ema, "best": self.best,
                "since_best": self.since_best, "outside_band": self.outside_band, "history": list(self.history),
                "window": list(self.window)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = state_dict["stage"]
        if name not in self.stages:
            raise ValueError(f"StageTransition: the checkpoint is in stage {name!r}, which is not among the "
                             f"configured stages {self.stages}; keep the stage names when resuming")
        self.index = self.stages.index(name)
        self.stage_start_step = int(state_dict.get("stage_start_step", 0))
        self.ema, self.best = state_dict.get("ema"), state_dict.get("best")
        self.since_best = int(state_dict.get("since_best", 0))
        self.outside_band = int(state_dict.get("outside_band", 0))
        self.history = list(state_dict.get("history", []))
        self.window.extend(state_dict.get("window", []))


def describe_record(record: dict[str, Any]) -> str:
    """One line: which rule moved the run at which step with which signal values, or that the cap came first."""
    moves = record.get("transitions") or []
    if moves:
        m = moves[-1]
        signals = ", ".join(f"{k} = {v:.4g}" for k, v in (m.get("signals") or {}).items())
        return (f"stage move {m['from']} -> {m['to']} at step {m['step']} by rule {'+'.join(m.get('rule') or [])} "
                f"({m.get('reason')}; signals: {signals or 'none'})")
    end = record.get("end") or {}
    return f"no stage-move rule fired: {end.get('reason', 'the run ended')} at step {end.get('step', '?')}"
