"""RewardModelReward: a tiny random Qwen3 sequence classifier saved to disk and loaded through the reward."""

from __future__ import annotations

import pickle

import pytest
import torch
from rewards_testlib import make_row
from transformers import AutoModelForSequenceClassification, Qwen3Config, Qwen3ForSequenceClassification

from ring_lightning.models.loading import load_tokenizer
from ring_lightning.rewards.reward_model import RewardModelReward


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rm")
    tok = load_tokenizer()
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=1,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    model = Qwen3ForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


ROWS = [make_row("general", id=f"g{i}", prompt=p) for i, p in enumerate(["Tell me a joke.", "Write a haiku."])]
RESPONSES = ["<think>hmm</think>Why did the chicken cross the road?", "Autumn moonlight, a worm digs silently"]


def reference_scores(rm_dir, rows, responses):
    """Score each sample alone, unpadded, with the model loaded directly."""
    tok = load_tokenizer(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    out = []
    for row, resp in zip(rows, responses):
        answer = resp.split("</think>")[-1]
        text = tok.apply_chat_template([*row.messages, {"role": "assistant", "content": answer}], tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out.append(model(**ids).logits[0, 0].item())
    return out


def test_scores_match_the_model_in_batches(rm_dir):
    reward = RewardModelReward(str(rm_dir), batch_size=2)
    res = reward(ROWS, RESPONSES)
    expected = reference_scores(rm_dir, ROWS, RESPONSES)
    assert [r.info["score"] for r in res] == pytest.approx(expected, abs=1e-4)
    assert [r.reward for r in res] == pytest.approx(expected, abs=1e-4)
    assert expected[0] != pytest.approx(expected[1], abs=1e-6)  # the responses are told apart
    text = reward.render(ROWS[0], RESPONSES[0])
    assert text.startswith("<|im_start|>user\nTell me a joke.<|im_end|>") and "hmm" not in text


def test_zscore_normalisation(rm_dir):
    rows = ROWS * 3
    responses = RESPONSES + ["short", "a much longer answer " * 5, "", "ok"]
    res = RewardModelReward(str(rm_dir), batch_size=4, normalize="zscore")(rows, responses)
    z = torch.tensor([r.reward for r in res])
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    raw = torch.tensor([r.info["score"] for r in res])
    assert torch.argsort(z).tolist() == torch.argsort(raw).tolist()
    single = RewardModelReward(str(rm_dir), normalize="zscore")(ROWS[:1], RESPONSES[:1])
    assert single[0].reward == 0.0


def test_picklable_and_lazy(rm_dir):
    reward = RewardModelReward(str(rm_dir))
    reward(ROWS[:1], RESPONSES[:1])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._model is None
    assert clone(ROWS[:1], RESPONSES[:1])[0].reward == pytest.approx(reward(ROWS[:1], RESPONSES[:1])[0].reward)


def test_bad_configuration(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        RewardModelReward(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="normalize"):
        RewardModelReward(str(tmp_path), normalize="minmax")
