"""benchmarks/profile_train_step.py: the standalone RL training-step profile behind docs/design.md's figures."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import profile_train_step as prof  # noqa: E402


def test_micro_batch_puts_the_loss_on_the_response_targets():
    mb = prof.micro_batch(rows=3, prompt=4, response=5, vocab=50)
    assert mb.input_ids.shape == (3, 9) and int(mb.loss_mask.sum()) == 15
    assert mb.loss_mask[0].tolist() == [False] * 3 + [True] * 5 + [False]
    assert torch.equal(mb.target_ids[:, :-1], mb.input_ids[:, 1:])


def test_each_step_reports_its_phases_and_trains(capsys):
    steps = prof.main(["--model", "qwen3-moe-tiny", "--threads", "1", "--steps", "2", "--rows", "2",
                       "--prompt", "4", "--response", "8"])
    assert len(steps) == 2 and all(set(s) == {"ref", "fwd", "bwd", "opt", "total"} for s in steps)
    assert all(s["ref"] > 0 and abs(s["total"] - (s["ref"] + s["fwd"] + s["bwd"] + s["opt"])) < 1e-6 for s in steps)
    out = capsys.readouterr().out
    assert "loss tokens 16, reference yes, fp32" in out and "step 2: ref" in out
    assert prof.main(["--steps", "1", "--rows", "1", "--prompt", "2", "--response", "2", "--no-ref"])[0]["ref"] < 1e-3


def test_bf16_runs_both_forwards_under_autocast(monkeypatch, capsys):
    seen = []
    real = prof.masked_logprobs_and_entropy

    def spy(model, mb, **kw):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(model, mb, **kw)

    monkeypatch.setattr(prof, "masked_logprobs_and_entropy", spy)
    prof.main(["--steps", "1", "--rows", "1", "--prompt", "2", "--response", "2", "--bf16"])
    assert seen == [torch.bfloat16, torch.bfloat16]  # reference and policy forwards
    assert "bf16 autocast" in capsys.readouterr().out
    prof.main(["--steps", "1", "--rows", "1", "--prompt", "2", "--response", "2"])
    assert seen[2:] == [None, None]
