"""Choose the SFT checkpoint RL starts from, by policy entropy (and stop SFT when it is too low).

Ring-lite (arXiv 2506.14731; abstract and its study of distillation vs. RL): "selecting
distillation checkpoints based on entropy loss for RL training, rather than validation metrics,
yields superior performance-efficiency trade-offs". Longer long-CoT SFT keeps improving the SFT
model but lowers its entropy, and RL started from a low-entropy checkpoint collapses its entropy;
the report starts RL from the checkpoint whose entropy lies in 0.3–0.5 and compares recipes by
token efficiency = (# RL training tokens) / (# SFT training tokens). Each candidate here records
the SFT tokens it trained on (`pl_module.sft_loss_tokens_seen`: response tokens, as RL's numerator
counts its loss tokens), the denominator of that ratio. (Band and
definition as summarised in the project's SFT-stage issue; section numbers not re-checked here.)

Ambiguities and choices: docs/design.md#callbacks-rl-readiness.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

Rule = Literal["accuracy", "fewest_tokens", "band_center"]
RULES = ("accuracy", "fewest_tokens", "band_center")


@dataclass(frozen=True)
class Candidate:
    """One validated SFT checkpoint.

    Attributes:
        step: trainer.global_step at the validation.
        entropy: policy entropy (nats) measured at that step.
        accuracy: held-out pass@1, or None when not measured.
        sft_tokens: SFT loss tokens trained on so far (`tokens_attr`, default `sft_loss_tokens_seen`).
        path: the candidate checkpoint file, or None when not saved / removed.
        epoch: trainer.current_epoch at the validation.
    """

    step: int
    entropy: float
    accuracy: float | None = None
    sft_tokens: int | None = None
    path: str | None = None
    epoch: int = 0


@dataclass(frozen=True)
class Decision:
    """The outcome of `choose_checkpoint`.

    Attributes:
        chosen: the selected candidate (None when there is no usable candidate).
        in_band: whether `chosen.entropy` lies in the band.
        fallback: True when nothing was in the band and the closest candidate was taken (`reason` says
            which way to move).
        reason: a sentence explaining the choice.
    """

    chosen: Candidate | None
    in_band: bool
    fallback: bool
    reason: str


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (an unmeasurable pass@1 or entropy) becomes null: the JSON stays strict."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def in_band(entropy: float, band: tuple[float, float]) -> bool:
    return band[0] <= entropy <= band[1]


def band_distance(entropy: float, band: tuple[float, float]) -> float:
    """How far `entropy` lies outside the band (0 inside)."""
    return max(band[0] - entropy, entropy - band[1], 0.0)


def _acc(c: Candidate) -> float:
    return -math.inf if c.accuracy is None or math.isnan(c.accuracy) else c.accuracy


def _tokens(c: Candidate) -> float:
    return math.inf if c.sft_tokens is None else c.sft_tokens


def _rank_key(c: Candidate, band: tuple[float, float], rule: str) -> tuple:
    if rule == "accuracy":
        return (-_acc(c), _tokens(c), c.step)
    if rule == "fewest_tokens":
        return (_tokens(c), -_acc(c), c.step)
    return (abs(c.entropy - (band[0] + band[1]) / 2), -_acc(c), _tokens(c), c.step)


def _describe(c: Candidate) -> str:
    acc = "n/a" if c.accuracy is None else f"{c.accuracy:.4f}"
    return f"step {c.step} (entropy {c.entropy:.4f}, pass@1 {acc}, SFT tokens {c.sft_tokens})"


def choose_checkpoint(candidates: Sequence[Candidate], band: tuple[float, float] = (0.3, 0.5),
                      rule: str = "accuracy") -> Decision:
    """Pick the RL starting checkpoint (module docstring). Pure: no I/O."""
    if rule not in RULES:
        raise ValueError(f"unknown checkpoint selection rule {rule!r}; expected one of {', '.join(RULES)}")
    lo, hi = float(band[0]), float(band[1])
    if not lo <= hi:
        raise ValueError(f"entropy band must be (low, high) with low <= high, got {band}")
    usable = [c for c in candidates if c.entropy is not None and not math.isnan(c.entropy)]
    if not usable:
        return Decision(None, False, False, f"no candidate with a measured entropy among {len(candidates)}")
    inside = [c for c in usable if in_band(c.entropy, (lo, hi))]
    order = {"accuracy": "highest pass@1, ties -> fewer SFT tokens",
             "fewest_tokens": "fewest SFT tokens, ties -> highest pass@1",
             "band_center": "entropy closest to the band centre, ties -> highest pass@1"}[rule]
    if inside:
        best = min(inside, key=lambda c: _rank_key(c, (lo, hi), rule))
        return Decision(best, True, False, f"{len(inside)} of {len(usable)} candidates have entropy in "
                                           f"[{lo}, {hi}]; chose {_describe(best)} by rule {rule!r} ({order})")
    best = min(usable, key=lambda c: (band_distance(c.entropy, (lo, hi)), _rank_key(c, (lo, hi), rule)))
    side = "below" if best.entropy < lo else "above"
    ents = [c.entropy for c in usable]
    return Decision(best, False, True, f"FALLBACK: no candidate has entropy in [{lo}, {hi}] (measured {min(ents):.4f}.."
                                       f"{max(ents):.4f}); the closest is {_describe(best)}, "
                                       f"{band_distance(best.entropy, (lo, hi)):.4f} {side} the band. "
                                       + band_advice(usable, (lo, hi)))


def band_advice(candidates: Sequence[Candidate], band: tuple[float, float]) -> str:
    """Which way to move when no candidate is inside the band (entropy falls as SFT goes on)."""
    lo, hi = band
    by_step = sorted(candidates, key=lambda c: c.step)
    if all(c.entropy < lo for c in by_step):
        return (f"Every measurement is below the band, the first already at step {by_step[0].step}: train FEWER SFT "
                "steps or measure earlier (a smaller val_check_interval), or lower the band for this model.")
    if all(c.entropy > hi for c in by_step):
        return (f"Every measurement is above the band, the last at step {by_step[-1].step}: train MORE SFT steps, "
                "or raise the band for this model.")
    cross = next((a, b) for a, b in zip(by_step, by_step[1:]) if (a.entropy > hi) != (b.entropy > hi))
    return (f"The entropy crossed the band between steps {cross[0].step} and {cross[1].step}: measure more often "
            "there (a smaller val_check_interval), or widen the band.")


class RLReadinessSelector(Callback):
    """Record a candidate checkpoint at each entropy measurement and pick the RL start.

    Writes `<dirpath>/<filename>` (JSON: band, rule, chosen, fallback, reason, candidates, stopped,
    exported_to) after every validation and at fit end. Candidate files are written atomically
    (`<dirpath>/.tmp-…` then `os.replace`).

    Args:
        dirpath: where candidate checkpoints and the JSON go; default `<default_root_dir>/rl_readiness`.
        band: the target entropy band (nats), Ring-lite: (0.3, 0.5).
        rule: how to choose inside the band: "accuracy" | "fewest_tokens" | "band_center".
        entropy_key: the logged entropy metric (EntropyMonitor: `<log_prefix>/entropy`).
        accuracy_key: the logged held-out accuracy metric; absent -> accuracy None.
        tokens_attr: the LightningModule attribute counting SFT tokens consumed (default: the trained
            response tokens, as RL counts its loss tokens; "sft_tokens_seen" counts prompts too).
        save_candidates: save a checkpoint at every measured validation (needed for export).
        weights_only: candidate checkpoints without optimizer state (what RL needs; far smaller).
        keep_only_chosen: delete candidate files that are not the current choice (safe: a candidate
            that loses once can never win later, the ranking being a fixed order).
        stop_after_below_band: stop SFT after this many consecutive measurements below the band
            (None: never).
        outside_band: when no candidate is inside the band at fit end: "error" (raise, saying which
            way to move: more / fewer SFT steps, more frequent measurements) or "closest" (take the
            closest, with that warning, and mark the decision `fallback`).
        export_dir: export the chosen checkpoint as an HF directory here at fit end (None: no export).
        module_cls: dotted path of the LightningModule class used to rebuild a candidate for export;
            default: the class of the module being trained.
        filename: name of the decision JSON.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        band: tuple[float, float] = (0.3, 0.5),
        rule: Rule = "accuracy",
        entropy_key: str = "sft/entropy",
        accuracy_key: str = "sft/pass@1",
        tokens_attr: str = "sft_loss_tokens_seen",
        save_candidates: bool = True,
        weights_only: bool = True,
        keep_only_chosen: bool = False,
        stop_after_below_band: int | None = None,
        outside_band: Literal["error", "closest"] = "closest",
        export_dir: str | None = None,
        module_cls: str | None = None,
        filename: str = "rl_readiness.json",
    ):
        if rule not in RULES:
            raise ValueError(f"RLReadinessSelector: unknown rule {rule!r}; expected one of {', '.join(RULES)}")
        if len(band) != 2 or not band[0] <= band[1]:
            raise ValueError(f"RLReadinessSelector: band must be (low, high) with low <= high, got {band}")
        if stop_after_below_band is not None and stop_after_below_band < 1:
            raise ValueError(f"RLReadinessSelector: stop_after_below_band must be >= 1 or None, "
                             f"got {stop_after_below_band}")
        if export_dir is not None and not save_candidates:
            raise ValueError("RLReadinessSelector: export_dir needs save_candidates=True (export reads the "
                             "chosen candidate's checkpoint)")
        self.dirpath = dirpath
        self.band = (float(band[0]), float(band[1]))
        self.rule, self.entropy_key, self.accuracy_key, self.tokens_attr = rule, entropy_key, accuracy_key, tokens_attr
        self.save_candidates, self.weights_only, self.keep_only_chosen = save_candidates, weights_only, keep_only_chosen
        self.stop_after_below_band, self.export_dir, self.module_cls = stop_after_below_band, export_dir, module_cls
        self.filename = filename
        if outside_band not in ("error", "closest"):
            raise ValueError(f"RLReadinessSelector: outside_band must be 'error' or 'closest', got {outside_band!r}")
        self.outside_band = outside_band
        self.candidates: list[Candidate] = []
        self.below_streak = 0
        self.stopped: dict[str, Any] | None = None
        self.exported_to: str | None = None
        self._snapshot: dict[str, Any] = {}
        self._seen_entropy = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath, entropy_key=self.entropy_key)

    # ---- paths -----------------------------------------------------------------------------
    def resolved_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "rl_readiness"

    def json_path(self, trainer: Trainer) -> Path:
        return self.resolved_dir(trainer) / self.filename

    # ---- hooks -----------------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        self._snapshot = {k: metrics.get(k) for k in (self.entropy_key, self.accuracy_key)}

    def _fresh(self, trainer: Trainer, key: str) -> float | None:
        value = trainer.callback_metrics.get(key)
        if value is None or value is self._snapshot.get(key):
            return None
        return float(value)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        entropy = self._fresh(trainer, self.entropy_key)
        if entropy is None:
            if not self._seen_entropy and self.entropy_key not in trainer.callback_metrics:
                raise RuntimeError(
                    f"RLReadinessSelector: no {self.entropy_key!r} in trainer.callback_metrics at validation end "
                    f"(step {trainer.global_step}); add ring_lightning.callbacks.entropy.EntropyMonitor to the "
                    f"callbacks (its log_prefix must match) or set entropy_key")
            return  # not measured at this validation (EntropyMonitor every_n_validations > 1)
        self._seen_entropy = True
        if not hasattr(pl_module, self.tokens_attr):
            raise AttributeError(f"RLReadinessSelector needs pl_module.{self.tokens_attr} (SFT tokens consumed, the "
                                 f"token-efficiency denominator); {type(pl_module).__name__} has no such attribute")
        tokens = int(getattr(pl_module, self.tokens_attr))
        path = self._save_candidate(trainer) if self.save_candidates else None
        cand = Candidate(step=trainer.global_step, entropy=entropy, accuracy=self._fresh(trainer, self.accuracy_key),
                         sft_tokens=tokens, path=path, epoch=trainer.current_epoch)
        self.candidates = [c for c in self.candidates if c.step != cand.step] + [cand]
        self.below_streak = self.below_streak + 1 if entropy < self.band[0] else 0
        decision = self.decide()
        if self.keep_only_chosen:
            self._remove_losers(decision, delete_files=trainer.is_global_zero)
        if self.stop_after_below_band is not None and self.below_streak >= self.stop_after_below_band:
            stop = trainer.strategy.reduce_boolean_decision(True, all=False)
            if stop and not trainer.should_stop:
                trainer.should_stop = True
                self.stopped = {"step": trainer.global_step, "reason": (
                    f"entropy below the band's low end {self.band[0]} for {self.below_streak} consecutive "
                    f"measurements (last {entropy:.4f}); stopping the SFT stage")}
                rank_zero_info(f"RLReadinessSelector: {self.stopped['reason']}")
        if trainer.is_global_zero:
            self._write(trainer, decision)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        decision = self.decide(warn=self.outside_band == "closest")
        if decision.fallback and self.outside_band == "error":
            if trainer.is_global_zero:
                self._write(trainer, decision)  # the table, before the error that points at it
            raise RuntimeError(f"RLReadinessSelector: {decision.reason} (outside_band: error; the table is in "
                               f"{self.json_path(trainer)})")
        if self.export_dir is not None:
            if trainer.is_global_zero:
                self.exported_to = self._export(decision, pl_module)
            trainer.strategy.barrier("rl_readiness_export")
        if trainer.is_global_zero:
            self._write(trainer, decision)

    def _export(self, decision: Decision, pl_module: LightningModule) -> str:
        """The chosen candidate as an HF directory; with no candidate (a run shorter than the first
        measurement), the final weights, with a warning."""
        if decision.chosen is None or decision.chosen.path is None:
            export = getattr(pl_module, "export_hf", None)
            if export is None:
                raise RuntimeError(f"RLReadinessSelector: no candidate to export ({decision.reason}) and "
                                   f"{type(pl_module).__name__} has no export_hf for the final weights")
            rank_zero_warn(f"RLReadinessSelector: no entropy measurement before fit ended ({decision.reason}); "
                           f"exporting the FINAL weights to {self.export_dir} (no entropy-based choice was made)")
            return str(export(self.export_dir))
        from ring_lightning.callbacks.export import export_checkpoint

        cls = self.module_cls or type(pl_module)
        out = str(export_checkpoint(decision.chosen.path, self.export_dir, module_cls=cls, overwrite=True))
        rank_zero_info(f"RLReadinessSelector: exported {decision.chosen.path} to {out}")
        return out

    # ---- decision, files --------------------------------------------------------------------
    def decide(self, warn: bool = False) -> Decision:
        decision = choose_checkpoint(self.candidates, self.band, self.rule)
        if warn and decision.fallback:
            rank_zero_warn(f"RLReadinessSelector: {decision.reason}", category=UserWarning)
        return decision

    def _save_candidate(self, trainer: Trainer) -> str:
        out = self.resolved_dir(trainer)
        name = f"sft-step{trainer.global_step:08d}.ckpt"
        final, tmp = out / name, out / f".tmp-{name}"
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("rl_readiness_mkdir")
        trainer.save_checkpoint(str(tmp), weights_only=self.weights_only)  # collective on every rank
        if trainer.is_global_zero:
            if final.is_dir():  # a distributed checkpoint directory from an earlier run
                shutil.rmtree(final)
            os.replace(tmp, final)
        trainer.strategy.barrier("rl_readiness_saved")
        return str(final)

    def _remove_losers(self, decision: Decision, delete_files: bool) -> None:
        keep = decision.chosen.path if decision.chosen is not None else None
        kept = []
        for c in self.candidates:
            if c.path is not None and c.path != keep:
                p = Path(c.path)
                if delete_files:
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
                c = replace(c, path=None)
            kept.append(c)
        self.candidates = kept

    def report(self, decision: Decision | None = None) -> dict[str, Any]:
        """The JSON-ready table and decision."""
        decision = decision or self.decide()
        chosen = None
        if decision.chosen is not None:
            c = decision.chosen
            chosen = _json_safe({"path": c.path, "step": c.step, "entropy": c.entropy, "accuracy": c.accuracy,
                                 "sft_tokens": c.sft_tokens, "in_band": decision.in_band})
        return {"band": list(self.band), "rule": self.rule, "entropy_key": self.entropy_key,
                "accuracy_key": self.accuracy_key, "chosen": chosen, "fallback": decision.fallback,
                "reason": decision.reason,
                "candidates": [{**_json_safe(asdict(c)), "in_band": in_band(c.entropy, self.band)}
                               for c in self.candidates],
                "below_band_streak": self.below_streak, "stopped": self.stopped, "exported_to": self.exported_to,
                "token_efficiency": "RL tokens / SFT tokens; chosen.sft_tokens is the SFT denominator"}

    def _write(self, trainer: Trainer, decision: Decision) -> None:
        path = self.json_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(json.dumps(self.report(decision), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)

    # ---- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"candidates": [asdict(c) for c in self.candidates], "below_streak": self.below_streak,
                "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.candidates = [Candidate(**c) for c in state_dict.get("candidates", [])]
        self.below_streak = int(state_dict.get("below_streak", 0))
        self.stopped = state_dict.get("stopped")
        self._seen_entropy = bool(self.candidates)
