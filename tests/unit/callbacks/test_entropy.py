"""EntropyMonitor: entropy on the policy's own samples, pass@1, determinism, Lightning integration."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ring_lightning.callbacks.entropy import (EntropyMonitor, _encode_prompts, measure_policy_entropy,
                                              response_mask, rows_from_source, token_entropy)
from ring_lightning.rows import PromptRow
from ring_lightning.models.loading import load_policy
from ring_lightning.rewards.base import RewardResult

PROMPTS = ["hi", "What is 23*7?", "Count to five please."]


class TinySFT(L.LightningModule):
    """The attributes the SFT callbacks rely on: policy, tokenizer, sft_tokens_seen."""

    def __init__(self, model: str = "qwen3-moe-tiny", seed: int = 0, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.policy, self.tokenizer = load_policy(model, seed=seed)
        self.sft_tokens_seen = 0

    def training_step(self, batch, batch_idx):
        self.sft_tokens_seen += batch[0].numel()
        return self.policy(input_ids=batch[0], labels=batch[0]).loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.policy(input_ids=batch[0], labels=batch[0]).loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loaders(n: int = 16, length: int = 12):
    data = TensorDataset(torch.randint(3, 1000, (n, length), generator=torch.Generator().manual_seed(0)))
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    args = dict(max_steps=4, val_check_interval=2, limit_val_batches=1, accelerator="cpu", devices=1,
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=1, default_root_dir=str(tmp_path))
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


@pytest.fixture(scope="module")
def tiny():
    return load_policy("qwen3-moe-tiny", seed=0)


def eos_heavy_policy():
    """A tiny policy that ends its responses after a few tokens: a constant embedding coordinate feeds
    an EOS-only lm_head column, so responses stop at varied lengths (exercises EOS and padding)."""
    policy, tok = load_policy("qwen3-moe-tiny", seed=0)
    with torch.no_grad():
        policy.model.embed_tokens.weight[:, 0] = 10.0
        policy.lm_head.weight[:, 0] = 0.0
        policy.lm_head.weight[tok.eos_token_id, 0] = 0.6
    return policy, tok


def test_token_entropy_values():
    v = 7
    assert token_entropy(torch.zeros(v)).item() == pytest.approx(math.log(v), abs=1e-6)
    assert token_entropy(torch.tensor([0.0, -1e4, -1e4])).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    p = torch.softmax(logits / 2.0, dim=-1)
    expected = -(p * p.log()).sum(-1)
    assert torch.allclose(token_entropy(logits, temperature=2.0), expected, atol=1e-6)


def test_response_mask_stops_after_first_eos():
    eos = 2
    gen = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 2, 2], [7, 8, 9, 10, 11]])  # pad 0; pad == eos (row 2)
    assert response_mask(gen, eos).tolist() == [[True, True, True, False, False],
                                                [True, True, False, False, False],
                                                [True] * 5]


@pytest.mark.parametrize("eos_heavy", [False, True])
def test_entropy_equals_teacher_forced_entropy_of_the_samples(tiny, eos_heavy):
    """The recorded per-step entropies are those of the policy at the sampled tokens (left padding included)."""
    policy, tok = eos_heavy_policy() if eos_heavy else tiny
    rows = rows_from_source(prompts=PROMPTS)
    m = measure_policy_entropy(policy, tok, rows, max_new_tokens=10, batch_size=2, seed=3)
    if eos_heavy:  # responses end on EOS (included, counted) at different lengths; the rest is padding
        assert all(s.token_ids[-1] == tok.eos_token_id for s in m.samples) and m.truncated == 0.0
        assert len({len(s.token_ids) for s in m.samples}) > 1
    else:
        assert m.truncated == 1.0 and m.response_length == 10
    prompt_ids = _encode_prompts(tok, rows, {})
    assert len({len(p) for p in prompt_ids}) > 1  # the batch of two really is left-padded
    total_h, total_n = 0.0, 0
    for rec, p in zip(m.samples, prompt_ids):
        seq = torch.tensor([p + list(rec.token_ids)])
        with torch.no_grad():
            logits = policy(input_ids=seq, output_router_logits=False).logits[0]
        h = token_entropy(logits[len(p) - 1:len(p) - 1 + len(rec.token_ids)]).sum().item()
        assert rec.entropy_sum == pytest.approx(h, abs=1e-4)
        total_h, total_n = total_h + h, total_n + len(rec.token_ids)
    assert m.num_tokens == total_n and m.num_samples == 3
    assert m.entropy == pytest.approx(total_h / total_n, abs=1e-5)
    assert m.response_length == pytest.approx(total_n / 3)
    assert 5.0 < m.entropy < math.log(1152) + 1e-6  # a random tiny model is close to uniform


def test_temperature_scales_the_measured_distribution(tiny):
    policy, tok = tiny
    rows = rows_from_source(prompts=PROMPTS[:1])
    m = measure_policy_entropy(policy, tok, rows, max_new_tokens=6, temperature=0.25, seed=0)
    rec = m.samples[0]
    p = _encode_prompts(tok, rows, {})[0]
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([p + list(rec.token_ids)]), output_router_logits=False).logits[0]
    h = token_entropy(logits[len(p) - 1:len(p) - 1 + len(rec.token_ids)], temperature=0.25).sum().item()
    assert rec.entropy_sum == pytest.approx(h, abs=1e-4)
    h1 = token_entropy(logits[len(p) - 1:len(p) - 1 + len(rec.token_ids)], temperature=1.0).sum().item()
    assert h < h1 - 1e-3  # T < 1 sharpens the measured distribution


def test_deterministic_restores_state_and_leaves_training_rng_alone(tiny):
    policy, tok = tiny
    rows = rows_from_source(prompts=PROMPTS)
    policy.train()
    gen_config = policy.generation_config
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = measure_policy_entropy(policy, tok, rows, max_new_tokens=6, batch_size=2, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # sampling ran in a forked RNG
    assert policy.training and policy.generation_config is gen_config
    b = measure_policy_entropy(policy, tok, rows, max_new_tokens=6, batch_size=2, seed=7)
    c = measure_policy_entropy(policy, tok, rows, max_new_tokens=6, batch_size=2, seed=8)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples] and a.entropy == b.entropy
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]
    policy.eval()


def test_rank_slices_add_up_to_the_single_process_measurement(tiny):
    """Rank r takes global batches r, r+W, ...: the reduced sums equal the single-process ones."""
    policy, tok = tiny
    rows = rows_from_source(prompts=PROMPTS)
    kw = dict(max_new_tokens=4, batch_size=1, seed=1, num_samples=1)
    full = measure_policy_entropy(policy, tok, rows, **kw)
    captured = []

    def capture(t):
        captured.append(t.clone())
        return t

    parts = [measure_policy_entropy(policy, tok, rows, rank=r, world_size=2, all_reduce_sum=capture, **kw)
             for r in range(2)]
    total = captured[0] + captured[1]
    assert total[0].item() / total[1].item() == pytest.approx(full.entropy, abs=1e-6)
    assert int(total[2].item()) == full.num_samples == 3
    # 3 global batches: rank 0 gets batches 0 and 2, rank 1 batch 1 (+ a zero-weight dummy round).
    assert [s.row_id for s in parts[0].samples] == ["prompt-0", "prompt-2"]
    assert [s.row_id for s in parts[1].samples] == ["prompt-1"]
    by_id = sorted(parts[0].samples + parts[1].samples, key=lambda s: s.row_id)
    assert [s.token_ids for s in by_id] == [s.token_ids for s in full.samples]


class ParityReward:
    """A deterministic stand-in Reward: 1.0 when the response has an even number of characters."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        self.seen += [(r.id, t) for r, t in zip(rows, responses)]
        return [RewardResult(float(len(t) % 2 == 0), valid=r.id != "bad") for r, t in zip(rows, responses)]


def test_pass_at_1_with_an_injected_reward(tiny):
    policy, tok = tiny
    raw = [{"id": f"q{i}", "domain": "math", "prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(2)]
    raw.append({"id": "bad", "domain": "math", "prompt": "What is x?", "answer": "?"})
    from ring_lightning.rows import parse_row
    rows = [parse_row(r, f"row {i}") for i, r in enumerate(raw)]
    reward = ParityReward()
    m = measure_policy_entropy(policy, tok, rows, max_new_tokens=4, batch_size=4, num_samples=2, reward=reward)
    assert len(reward.seen) == 6 and m.num_samples == 6 and m.invalid_rewards == 2
    assert [t for _, t in reward.seen] == [s.text for s in m.samples]
    assert [s.row_id for s in m.samples] == ["q0", "q0", "q1", "q1", "bad", "bad"]
    good = [float(len(s.text) % 2 == 0) for s in m.samples if s.row_id != "bad"]
    assert m.pass_at_1 == pytest.approx(sum(good) / 4)


def test_reward_needs_verifiable_rows():
    with pytest.raises(ValueError, match="plain `prompts` strings have none"):
        EntropyMonitor(prompts=["hi"], reward=ParityReward())


def test_prompt_sources(tmp_path):
    with pytest.raises(ValueError, match="exactly one prompt source"):
        EntropyMonitor()
    with pytest.raises(ValueError, match="exactly one prompt source"):
        EntropyMonitor(prompts=["a"], synthetic_task="arithmetic")
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "domain": "math", "prompt": "1+1?", "answer": "2"}\n')
    assert EntropyMonitor(prompt_file=str(f)).rows[0].answer == "2"
    syn = EntropyMonitor(synthetic_task="arithmetic", synthetic_prompts=4, synthetic_n_train=10).rows
    from ring_lightning.data.synthetic.problems import prompt_rows
    train_q = {r["prompt"] for r in prompt_rows("arithmetic", "train", 10, 4)}
    assert len(syn) == 4 and all(r.answer and r.domain == "math" for r in syn)
    assert not train_q & {r.prompt_text for r in syn}  # held out from the SFT split


def test_monitor_logs_in_fit_skips_sanity_and_respects_every_n(tmp_path):
    monitor = EntropyMonitor(prompts=PROMPTS[:2], max_new_tokens=4, every_n_validations=2)
    calls = []
    orig = monitor.measure
    monitor.measure = lambda t, m: calls.append(t.global_step) or orig(t, m)
    model = TinySFT()
    train, val = loaders()
    tr = trainer(tmp_path, [monitor], max_steps=3, val_check_interval=1)
    tr.fit(model, train, val)
    assert calls == [1, 3]  # validations at 1, 2, 3; sanity check skipped; every 2nd measured
    assert tr.callback_metrics["sft/entropy"].item() == pytest.approx(monitor.latest.entropy, rel=1e-6)
    assert tr.callback_metrics["sft/response_length"].item() == pytest.approx(4.0)
    assert "sft/pass@1" not in tr.callback_metrics
    assert monitor.latest_step == 3


def test_monitor_names_missing_module_attributes(tmp_path):
    class NoPolicy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(12, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0].float()).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train, val = loaders()
    with pytest.raises(AttributeError, match="EntropyMonitor needs pl_module.policy and pl_module.tokenizer"):
        trainer(tmp_path, [EntropyMonitor(prompts=["hi"], max_new_tokens=2)], num_sanity_val_steps=0).fit(
            NoPolicy(), train, val)


def test_monitor_and_reward_are_configurable_by_class_path():
    """LightningCLI-style config: the reward comes in by class_path / init_args."""
    from jsonargparse import ArgumentParser

    from ring_lightning.rewards.math import MathReward

    parser = ArgumentParser()
    parser.add_class_arguments(EntropyMonitor, "monitor")
    cfg = parser.parse_args(["--monitor.synthetic_task=arithmetic", "--monitor.synthetic_prompts=2",
                             "--monitor.synthetic_n_train=10", "--monitor.temperature=0.7",
                             '--monitor.reward={"class_path": "ring_lightning.rewards.math.MathReward", '
                             '"init_args": {"num_workers": 1}}'])
    monitor = parser.instantiate(cfg).monitor
    assert isinstance(monitor.reward, MathReward) and monitor.reward.num_workers == 1
    assert len(monitor.rows) == 2 and monitor.temperature == 0.7
