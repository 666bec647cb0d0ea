"""RLReadinessSelector: the pure decision rule, candidates + JSON in a fit, order independence, stopping."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ring_lightning.callbacks.entropy import EntropyMonitor
from ring_lightning.callbacks.rl_readiness import Candidate, RLReadinessSelector, choose_checkpoint
from ring_lightning.models.loading import load_policy

BAND = (0.3, 0.5)


def C(step, entropy, accuracy=None, tokens=None):
    return Candidate(step=step, entropy=entropy, accuracy=accuracy, sft_tokens=tokens if tokens is not None else step * 100)


# ---- choose_checkpoint on synthetic tables ----------------------------------------------------

def test_in_band_best_accuracy_wins():
    table = [C(1, 0.9, 0.10), C(2, 0.55, 0.50), C(3, 0.45, 0.30), C(4, 0.35, 0.40), C(5, 0.2, 0.90)]
    d = choose_checkpoint(table, BAND)
    assert d.chosen.step == 4 and d.in_band and not d.fallback
    assert "2 of 5 candidates" in d.reason and "step 4" in d.reason


def test_accuracy_tie_goes_to_fewer_tokens():
    table = [C(3, 0.45, 0.40, tokens=900), C(4, 0.35, 0.40, tokens=700), C(5, 0.31, 0.40, tokens=800)]
    assert choose_checkpoint(table, BAND).chosen.step == 4


def test_band_edges_are_inside():
    assert choose_checkpoint([C(1, 0.5, 0.1), C(2, 0.6, 0.9)], BAND).chosen.step == 1
    assert choose_checkpoint([C(1, 0.3, 0.1), C(2, 0.29, 0.9)], BAND).chosen.step == 1


def test_none_in_band_falls_back_to_the_closest_and_says_so():
    table = [C(1, 0.9, 0.5), C(2, 0.62, 0.4), C(3, 0.25, 0.6), C(4, 0.1, 0.9)]
    d = choose_checkpoint(table, BAND)
    assert d.chosen.step == 3 and d.fallback and not d.in_band  # 0.05 below beats 0.12 above
    assert d.reason.startswith("FALLBACK") and "below" in d.reason
    d = choose_checkpoint([C(1, 0.9, 0.5), C(2, 0.7, 0.1)], BAND)
    assert d.chosen.step == 2 and d.fallback and "above" in d.reason


def test_other_rules_and_missing_accuracy():
    table = [C(2, 0.49, None, tokens=200), C(3, 0.41, None, tokens=300), C(4, 0.31, None, tokens=400)]
    assert choose_checkpoint(table, BAND, "accuracy").chosen.step == 2  # no accuracy: fewer tokens
    assert choose_checkpoint(table, BAND, "fewest_tokens").chosen.step == 2
    assert choose_checkpoint(table, BAND, "band_center").chosen.step == 3
    with pytest.raises(ValueError, match="unknown checkpoint selection rule"):
        choose_checkpoint(table, BAND, "latest")


def test_nan_entropy_is_ignored_and_empty_table_chooses_nothing():
    d = choose_checkpoint([C(1, math.nan, 1.0), C(2, 0.4, 0.1)], BAND)
    assert d.chosen.step == 2
    d = choose_checkpoint([], BAND)
    assert d.chosen is None and "no candidate" in d.reason


# ---- in a Trainer ---------------------------------------------------------------------------

class TinySFT(L.LightningModule):
    def __init__(self, model: str = "qwen3-moe-tiny", seed: int = 0, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.policy, self.tokenizer = load_policy(model, seed=seed)
        self.sft_loss_tokens_seen = 0

    def training_step(self, batch, batch_idx):
        self.sft_loss_tokens_seen += batch[0].numel()
        return self.policy(input_ids=batch[0], labels=batch[0]).loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.policy(input_ids=batch[0], labels=batch[0]).loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ScriptedMetrics(L.Callback):
    """Logs a scripted entropy / accuracy per validation, like EntropyMonitor does (test double)."""

    def __init__(self, entropies, accuracies=None):
        self.entropies, self.accuracies, self.i = list(entropies), accuracies, 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        if self.entropies[self.i] is not None:  # None: not measured at this validation
            pl_module.log("sft/entropy", self.entropies[self.i])
            if self.accuracies is not None:
                pl_module.log("sft/pass@1", self.accuracies[self.i])
        self.i += 1


def fit(tmp_path, callbacks, max_steps=4, model=None, val_check_interval=2, **kw):
    data = TensorDataset(torch.randint(3, 1000, (40, 12), generator=torch.Generator().manual_seed(0)))
    tr = L.Trainer(callbacks=callbacks, max_steps=max_steps, val_check_interval=val_check_interval,
                   limit_val_batches=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                   default_root_dir=str(tmp_path), **kw)
    model = model or TinySFT()
    tr.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return tr, model


@pytest.mark.parametrize("monitor_first", [True, False])
def test_selector_reads_the_monitor_in_either_callback_order(tmp_path, monitor_first):
    monitor = EntropyMonitor(prompts=["hi", "Add 2 and 3."], max_new_tokens=3, batch_size=2)
    seen = []
    orig = monitor.measure
    monitor.measure = lambda t, m: seen.append(orig(t, m)) or seen[-1]
    # Random tiny model: entropy ~7 nats, so use a band around it to exercise the in-band path.
    selector = RLReadinessSelector(dirpath=str(tmp_path / "cands"), band=(6.0, 8.0))
    cbs = [monitor, selector] if monitor_first else [selector, monitor]
    tr, model = fit(tmp_path, cbs, max_steps=2, val_check_interval=1)
    assert [c.step for c in selector.candidates] == [1, 2]
    for cand, meas in zip(selector.candidates, seen):
        assert cand.entropy == pytest.approx(meas.entropy, rel=1e-6)
        assert cand.accuracy is None
    assert [c.sft_tokens for c in selector.candidates] == [48, 2 * 48]
    report = json.loads((tmp_path / "cands" / "rl_readiness.json").read_text())
    assert report["band"] == [6.0, 8.0] and report["rule"] == "accuracy" and not report["fallback"]
    assert report["chosen"]["step"] == 1 and report["chosen"]["in_band"]  # no accuracy: fewer tokens
    assert [c["step"] for c in report["candidates"]] == [1, 2]
    for c in report["candidates"]:
        ckpt = torch.load(c["path"], map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == c["step"] and "optimizer_states" not in ckpt  # weights only
    assert not list((tmp_path / "cands").glob(".tmp-*"))


def test_fallback_warns_and_stop_after_below_band(tmp_path):
    ents = [0.8, 0.62, 0.28, 0.25, 0.2, 0.1, 0.05]
    accs = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6]
    selector = RLReadinessSelector(dirpath=str(tmp_path / "c"), stop_after_below_band=2, save_candidates=False)
    with pytest.warns(UserWarning, match="FALLBACK"):
        tr, _ = fit(tmp_path, [selector, ScriptedMetrics(ents, accs)], max_steps=20, val_check_interval=1)
    assert tr.global_step == 4  # below the band at the 3rd and 4th validation -> stop
    report = json.loads((tmp_path / "c" / "rl_readiness.json").read_text())
    assert report["stopped"]["step"] == 4 and "2 consecutive" in report["stopped"]["reason"]
    assert report["fallback"] and report["chosen"]["step"] == 3 and not report["chosen"]["in_band"]
    assert report["chosen"]["accuracy"] == pytest.approx(0.3) and report["chosen"]["path"] is None
    assert [c["entropy"] for c in report["candidates"]] == pytest.approx(ents[:4])


def test_stale_metric_is_not_a_new_candidate(tmp_path):
    """A metric not re-logged at a validation (EntropyMonitor every_n_validations > 1) stays in
    callback_metrics with its old value; the selector must not record it again."""
    selector = RLReadinessSelector(dirpath=str(tmp_path / "c"), save_candidates=False)
    fit(tmp_path, [selector, ScriptedMetrics([0.45, None, 0.4, None])], max_steps=4, val_check_interval=1)
    assert [(c.step, c.entropy) for c in selector.candidates] == [(1, pytest.approx(0.45)), (3, pytest.approx(0.4))]


def test_keep_only_chosen_and_resume_state(tmp_path):
    ents, accs = [0.45, 0.4, 0.35], [0.5, 0.7, 0.6]
    selector = RLReadinessSelector(dirpath=str(tmp_path / "c"), keep_only_chosen=True)
    fit(tmp_path, [ScriptedMetrics(ents, accs), selector], max_steps=6)
    files = sorted(p.name for p in (tmp_path / "c").glob("*.ckpt"))
    assert files == ["sft-step00000004.ckpt"]
    assert [c.path is not None for c in selector.candidates] == [False, True, False]
    fresh = RLReadinessSelector(dirpath=str(tmp_path / "c"))
    fresh.load_state_dict(selector.state_dict())
    assert fresh.candidates == selector.candidates and fresh.decide().chosen.step == 4


def test_missing_entropy_metric_and_missing_token_counter_are_errors(tmp_path):
    with pytest.raises(RuntimeError, match="no 'sft/entropy'.*EntropyMonitor"):
        fit(tmp_path, [RLReadinessSelector(dirpath=str(tmp_path / "a"))])

    class NoCounter(TinySFT):
        def __init__(self):
            super().__init__()
            del self.sft_loss_tokens_seen

        def training_step(self, batch, batch_idx):
            return self.policy(input_ids=batch[0], labels=batch[0]).loss

    with pytest.raises(AttributeError, match="needs pl_module.sft_loss_tokens_seen"):
        fit(tmp_path, [RLReadinessSelector(dirpath=str(tmp_path / "b")), ScriptedMetrics([0.4, 0.4])],
            model=NoCounter())


def test_constructor_validation():
    with pytest.raises(ValueError, match="unknown rule"):
        RLReadinessSelector(rule="best")
    with pytest.raises(ValueError, match="band"):
        RLReadinessSelector(band=(0.5, 0.3))
    with pytest.raises(ValueError, match="export_dir needs save_candidates"):
        RLReadinessSelector(export_dir="x", save_candidates=False)


def test_report_is_strict_json_with_nan_as_null(tmp_path):
    selector = RLReadinessSelector(dirpath=str(tmp_path))
    selector.candidates = [C(2, 0.4, math.nan), C(4, 0.45, 0.5)]
    report = json.loads(json.dumps(selector.report(), allow_nan=False))
    assert report["candidates"][0]["accuracy"] is None and report["chosen"]["step"] == 4
    assert report["chosen"] == {"path": None, "step": 4, "entropy": 0.45, "accuracy": 0.5, "sft_tokens": 400,
                                "in_band": True}


def test_outside_the_band_the_reason_says_which_way_to_move():
    below = choose_checkpoint([C(100, 0.25, 0.5), C(200, 0.2, 0.6)], BAND)
    assert "FEWER SFT steps" in below.reason and "step 100" in below.reason
    above = choose_checkpoint([C(100, 0.9, 0.5), C(200, 0.7, 0.6)], BAND)
    assert "MORE SFT steps" in above.reason and "step 200" in above.reason
    crossed = choose_checkpoint([C(100, 0.9, 0.1), C(200, 0.7, 0.2), C(300, 0.2, 0.3)], BAND)
    assert "between steps 200 and 300" in crossed.reason and "val_check_interval" in crossed.reason
    inside = choose_checkpoint([C(100, 0.4, 0.1)], BAND)
    assert "SFT steps" not in inside.reason


def test_outside_band_error_stops_the_fit_with_the_advice(tmp_path):
    sel = RLReadinessSelector(dirpath=str(tmp_path), band=(0.0, 0.01), outside_band="error", save_candidates=False)
    with pytest.raises(RuntimeError, match="no candidate has entropy in \\[0.0, 0.01\\].*MORE SFT steps"):
        fit(tmp_path, [sel, ScriptedMetrics([0.5, 0.4])])
    report = json.loads((tmp_path / "rl_readiness.json").read_text())  # the table is written before the error
    assert report["fallback"] and len(report["candidates"]) >= 1
    with pytest.raises(ValueError, match="outside_band must be"):
        RLReadinessSelector(outside_band="ignore")
