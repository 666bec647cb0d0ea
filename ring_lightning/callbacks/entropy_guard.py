"""EntropyCollapseGuard: act when the RL policy's entropy stays too low for too long.

Ring-lite (arXiv 2506.14731, §4.3 and the distillation/RL interplay study) observes that RL from a
low-entropy start collapses the policy entropy and then plateaus, and keeps entropy in check with
a small entropy bonus (5e-4) and by choosing the RL start checkpoint by entropy. The report gives
no run-time rule; this callback is ours. After every optimizer step it reads the policy entropy
(`metric`, default `train/entropy`: RLModule's token-mean entropy of the trained tokens) and
counts consecutive steps below `threshold`. When the count reaches `patience` it acts per
`action`: docs/design.md#callbacks-entropy-guard.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from ring_lightning.callbacks.stage_transition import get_knob, metric_value, set_knob

Action = Literal["warn", "stop", "raise_entropy_coef"]


class EntropyCollapseGuard(Callback):
    """Watch the policy entropy; warn, stop, or raise the entropy bonus when it collapses.

    Args:
        metric: the logged policy-entropy metric (RLModule: "train/entropy").
        threshold: entropy (nats) below which a step counts as low.
        patience: consecutive low steps before acting.
        action: "warn", "stop" or "raise_entropy_coef".
        factor: "raise_entropy_coef": multiplier of the coefficient per action (> 1).
        max_coef: "raise_entropy_coef": the coefficient is never raised above this.
        start_coef: "raise_entropy_coef": the value a zero (or smaller) coefficient is first raised to;
            None = max_coef / factor**3 (three raises from the start to the cap).
        coef_path: dotted path of the entropy coefficient on the LightningModule.
    """

    def __init__(
        self,
        metric: str = "train/entropy",
        threshold: float = 0.1,
        patience: int = 10,
        action: Action = "warn",
        factor: float = 2.0,
        max_coef: float = 1e-2,
        coef_path: str = "objective.entropy_coef",
        start_coef: float | None = None,
    ) -> None:
        if action not in ("warn", "stop", "raise_entropy_coef"):
            raise ValueError(f"EntropyCollapseGuard: action must be 'warn', 'stop' or 'raise_entropy_coef', got {action!r}")
        if patience < 1:
            raise ValueError(f"EntropyCollapseGuard: patience must be >= 1, got {patience}")
        if action == "raise_entropy_coef" and (factor <= 1.0 or max_coef <= 0):
            raise ValueError(f"EntropyCollapseGuard: raise_entropy_coef needs factor > 1 and max_coef > 0, "
                             f"got factor={factor}, max_coef={max_coef}")
        self.metric, self.threshold, self.patience, self.action = metric, threshold, patience, action
        if start_coef is not None and not 0 < start_coef <= max_coef:
            raise ValueError(f"EntropyCollapseGuard: start_coef must be in (0, max_coef={max_coef}], got {start_coef}")
        self.factor, self.max_coef, self.coef_path = factor, max_coef, coef_path
        self.start_coef = start_coef if start_coef is not None else max_coef / factor ** 3
        self.low_steps = 0
        self.actions = 0
        self.coef: float | None = None  # the coefficient this guard set (None = untouched)
        self.events: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.action == "raise_entropy_coef":
            current = float(get_knob(pl_module, self.coef_path))  # fails early on a wrong path
            if self.coef is not None and self.coef != current:  # resumed: restore the raised value
                set_knob(pl_module, self.coef_path, self.coef)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        entropy = metric_value(trainer, self.metric, "EntropyCollapseGuard")
        self.low_steps = self.low_steps + 1 if entropy < self.threshold else 0
        if self.low_steps >= self.patience:
            self._act(trainer, pl_module, entropy)
        pl_module.log("guard/entropy_low_steps", float(self.low_steps), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("guard/actions", float(self.actions), on_step=True, on_epoch=False, batch_size=1)
        if self.action == "raise_entropy_coef":
            pl_module.log("guard/entropy_coef", float(get_knob(pl_module, self.coef_path)), on_step=True,
                          on_epoch=False, batch_size=1)

    def _act(self, trainer: Trainer, pl_module: LightningModule, entropy: float) -> None:
        what = (f"{self.metric}={entropy:.4g} below {self.threshold} for {self.low_steps} steps "
                f"(step {trainer.global_step})")
        event: dict[str, Any] = {"step": trainer.global_step, "entropy": entropy, "action": self.action}
        if self.action == "warn":
            rank_zero_warn(f"EntropyCollapseGuard: {what}; the policy entropy is collapsing")
        elif self.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(f"EntropyCollapseGuard: {what}; stopping training")
        else:
            old = float(get_knob(pl_module, self.coef_path))
            new = min(max(old * self.factor, self.start_coef), self.max_coef)  # a 0 coefficient can rise
            if new <= old:
                event["action"] = "warn_at_max_coef"
                rank_zero_warn(f"EntropyCollapseGuard: {what}; {self.coef_path} is already at max_coef="
                               f"{self.max_coef}; raise max_coef or stop the run")
            else:
                set_knob(pl_module, self.coef_path, new)
                self.coef = new
                event.update(old_coef=old, new_coef=new)
                rank_zero_warn(f"EntropyCollapseGuard: {what}; {self.coef_path} {old:.3g} -> {new:.3g}")
        self.actions += 1
        self.low_steps = 0
        self.events.append(event)

    def state_dict(self) -> dict[str, Any]:
        return {"low_steps": self.low_steps, "actions": self.actions, "coef": self.coef, "events": list(self.events)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.low_steps = int(state_dict.get("low_steps", 0))
        self.actions = int(state_dict.get("actions", 0))
        self.coef = state_dict.get("coef")
        self.events = list(state_dict.get("events", []))
