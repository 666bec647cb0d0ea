"""StageTransition: move the RL run from one named data stage to the next without restarting.

Ring-lite (arXiv 2506.14731, §3.3 and §4) trains RL in stages — reasoning RL on math / code / logic
first, then general RL on instruction-following and preference data — and reports that the move
is made once reasoning RL saturates (and that entropy must be kept out of collapse). It gives no
mechanical rule, so this callback offers three configurable triggers (any of those listed fires):

* "steps": the current stage has run `after_steps` optimizer steps;
* "plateau": the EMA of a metric (default `reward/mean`, EMA decay `ema_decay`) has not improved
  by more than `min_delta` for `patience` consecutive steps (mode "max": higher is better);
* "entropy_band": the policy entropy (default `train/entropy`, RLModule's metric) has been
  outside `entropy_band` for `entropy_patience` consecutive steps.

Choices and details: docs/design.md#callbacks-stage-transition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

Trigger = Literal["steps", "plateau", "entropy_band"]
TRIGGERS = ("steps", "plateau", "entropy_band")


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
        ema_decay: "plateau": EMA decay of the metric (0 = no smoothing).
        min_delta: "plateau": the smallest EMA improvement that counts.
        patience: "plateau": steps without improvement before the move.
        entropy_metric: "entropy_band" trigger: the logged entropy metric.
        entropy_band: "entropy_band": (low, high) nats; leaving it moves on.
        entropy_patience: "entropy_band": consecutive steps outside the band before the move.
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
        ema_decay: float = 0.9,
        min_delta: float = 0.0,
        patience: int = 20,
        entropy_metric: str = "train/entropy",
        entropy_band: tuple[float, float] = (0.0, math.inf),
        entropy_patience: int = 1,
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

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or not callable(getattr(dm, "set_stage", None)):
            raise TypeError(f"StageTransition needs a datamodule with set_stage(name) (RolloutDataModule); got "
                            f"{type(dm).__name__}")
        known = getattr(dm, "stages", None)
        if isinstance(known, Mapping):
            missing = [s for s in self.stages if s not in known]
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
        reason = self._check(trainer, steps_in)
        if self.index + 1 < len(self.stages):
            fire = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if fire:
                self._advance(trainer, pl_module, reason or "another rank's trigger")
                steps_in = 0
        pl_module.log("stage/index", float(self.index), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("stage/steps_in_stage", float(steps_in), on_step=True, on_epoch=False, batch_size=1)

    # ----------------------------------------------------------------------------- trigger
    def _check(self, trainer: Trainer, steps_in: int) -> str | None:
        """Update the trackers with this step's metrics; the reason to move on, or None."""
        reasons = []
        if "plateau" in self.triggers:
            value = metric_value(trainer, self.metric, "StageTransition")
            self.ema = value if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * value
            sign = 1.0 if self.mode == "max" else -1.0
            if self.best is None or sign * (self.ema - self.best) > self.min_delta:
                self.best, self.since_best = self.ema, 0
            else:
                self.since_best += 1
            if self.since_best >= self.patience:
                reasons.append(f"{self.metric} EMA {self.ema:.4g} not improved by > {self.min_delta} over best "
                               f"{self.best:.4g} for {self.since_best} steps")
        if "entropy_band" in self.triggers:
            h = metric_value(trainer, self.entropy_metric, "StageTransition")
            lo, hi = self.entropy_band
            self.outside_band = self.outside_band + 1 if not lo <= h <= hi else 0
            if self.outside_band >= self.entropy_patience:
                reasons.append(f"{self.entropy_metric} {h:.4g} outside [{lo}, {hi}] for {self.outside_band} steps")
        if "steps" in self.triggers and steps_in >= self.after_steps:
            reasons.append(f"{steps_in} steps in stage >= after_steps={self.after_steps}")
        if not reasons or steps_in < self.min_stage_steps:
            return None
        return "; ".join(reasons)

    def _advance(self, trainer: Trainer, pl_module: LightningModule, reason: str) -> None:
        old, self.index = self.stage, self.index + 1
        new = self.stage
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
        self.history.append({"step": trainer.global_step, "from": old, "to": new, "reason": reason})
        rank_zero_info(f"StageTransition: step {trainer.global_step}: {old} -> {new} ({reason})")

    def _apply_knobs(self, pl_module: LightningModule, stage: str) -> None:
        for path, value in self.module_knobs.get(stage, {}).items():
            set_knob(pl_module, path, value)

    # ---------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "index": self.index, "stage": self.stage,
                "stage_start_step": self.stage_start_step, "ema": self.ema, "best": self.best,
                "since_best": self.since_best, "outside_band": self.outside_band, "history": list(self.history)}

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
