"""RolloutEvaluator in real Lightning validate/test loops: pass@1 / pass@k overall and per domain from
a scripted engine; the eval loader shards rows over ranks without repeats."""

import lightning as L
import pytest
import torch

from ring_lightning.rows import parse_row
from ring_lightning.eval.rollout_eval import EvalPromptDataset, RolloutEvaluator, eval_dataloader
from ring_lightning.models.loading import load_tokenizer
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rollout.engine import Completion


def rows(n):
    out = []
    for i in range(n):
        dom = "math" if i % 2 == 0 else "logic"
        out.append(parse_row({"id": f"p{i}", "domain": dom, "prompt": f"q{i}", "answer": str(i),
                              "meta": {"task": "countdown"}}, f"row {i}"))
    return out


class Engine:
    """Problem p_i gets i % 5 correct answers among its n=4 samples (capped at 4)."""

    def __init__(self, tokenizer):
        self.tok, self.seeds = tokenizer, []

    def generate(self, prompts, n, sampling):
        self.seeds.append(sampling.seed)
        out = []
        for p in prompts:
            i = int(self.tok.decode(p).split("q")[-1].split("<")[0])
            good = min(i % 5, n)
            out.append([Completion((7,), (-1.0,), str(i) if j < good else "wrong", "stop") for j in range(n)])
        return out


def exact(rows_, texts):
    return [RewardResult(float(t == r.answer)) for r, t in zip(rows_, texts)]


class EvalModule(L.LightningModule):
    def __init__(self, data):
        super().__init__()
        self.tokenizer = load_tokenizer()
        self.engine = Engine(self.tokenizer)
        self.evaluator = RolloutEvaluator(k=[2, 4], samples_per_prompt=4, max_tokens=8, seed=5)
        self.data, self.logged = data, {}

    def validation_step(self, batch, batch_idx):
        self.evaluator.step(self.engine, self.tokenizer, batch, exact, batch_idx=batch_idx, rank=self.global_rank)

    def on_validation_epoch_end(self):
        res = self.evaluator.results("val")
        self.logged.update(res)
        self.log_dict(res)

    test_step = validation_step

    def on_test_epoch_end(self):
        res = self.evaluator.results("test")
        self.logged.update(res)
        self.log_dict(res)

    def val_dataloader(self):
        return eval_dataloader(self.data, batch_size=3)

    test_dataloader = val_dataloader


def expected(cs, n=4):
    from ring_lightning.eval.passk import pass_at_k
    return {k: sum(pass_at_k(n, c, k) for c in cs) / len(cs) for k in (1, 2, 4)}


def test_validate_and_test_report_pass_at_k_overall_and_per_domain():
    data = rows(10)
    module = EvalModule(data)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.validate(module)[0]
    cs = [min(i % 5, 4) for i in range(10)]
    exp, exp_math = expected(cs), expected([c for i, c in enumerate(cs) if i % 2 == 0])
    for k in (1, 2, 4):
        assert out[f"val/pass@{k}"] == pytest.approx(exp[k], abs=1e-6)
        assert out[f"val/math/pass@{k}"] == pytest.approx(exp_math[k], abs=1e-6)
    assert out["val/problems"] == 10 and out["val/logic/problems"] == 5
    assert "val/code/pass@1" not in out  # no code problems: not reported
    assert module.engine.seeds == [5, 5 + 7919, 5 + 2 * 7919, 5 + 3 * 7919]  # 4 batches of <= 3 rows
    out2 = trainer.test(module)[0]  # the metrics were reset: the same numbers again
    assert out2["test/pass@2"] == pytest.approx(exp[2], abs=1e-6) and out2["test/problems"] == 10


def test_eval_rows_are_split_over_ranks_without_repeats():
    data = rows(7)
    seen = []
    for rank in range(3):
        for batch in EvalPromptDataset(data, batch_size=2, rank=rank, world_size=3):
            assert len(batch) <= 2
            seen += [r.id for r in batch]
    assert sorted(seen) == sorted(r.id for r in data)


def test_evaluator_needs_enough_samples():
    with pytest.raises(ValueError, match="pass@8 needs samples_per_prompt >= 8"):
        RolloutEvaluator(k=[8], samples_per_prompt=4)
