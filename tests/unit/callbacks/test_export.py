"""Export of an SFT checkpoint to an HF directory: load_policy parity, selector export, vLLM loading."""

from __future__ import annotations

import gc
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ring_lightning.callbacks.export import export_checkpoint, module_from_checkpoint
from ring_lightning.callbacks.rl_readiness import RLReadinessSelector
from ring_lightning.models.loading import load_policy

PROBE = torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(1))


class TinySFT(L.LightningModule):
    def __init__(self, model: str = "qwen3-moe-tiny", seed: int = 0, lr: float = 0.5):
        super().__init__()
        self.save_hyperparameters()
        self.policy, self.tokenizer = load_policy(model, seed=seed)
        self.sft_tokens_seen = self.sft_loss_tokens_seen = 0

    def training_step(self, batch, batch_idx):
        self.sft_tokens_seen += batch[0].numel()
        self.sft_loss_tokens_seen += batch[0].numel()
        return self.policy(input_ids=batch[0], labels=batch[0]).loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.policy(input_ids=batch[0], labels=batch[0]).loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ScriptedEntropy(L.Callback):
    def __init__(self, entropies):
        self.entropies, self.i = list(entropies), 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log("sft/entropy", self.entropies[self.i])
            self.i += 1


def fit(tmp_path, model, callbacks=(), max_steps=2):
    data = TensorDataset(torch.randint(3, 1000, (16, 12), generator=torch.Generator().manual_seed(0)))
    tr = L.Trainer(callbacks=list(callbacks), max_steps=max_steps, val_check_interval=2, limit_val_batches=1,
                   accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    tr.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return tr


@torch.no_grad()
def logits_of(policy):
    policy.eval()
    return policy(input_ids=PROBE, output_router_logits=False).logits


def test_export_loads_with_load_policy_and_gives_the_same_logits(tmp_path):
    model = TinySFT()
    tr = fit(tmp_path, model)
    ckpt = tmp_path / "sft.ckpt"
    tr.save_checkpoint(str(ckpt))
    out = export_checkpoint(ckpt, tmp_path / "hf", module_cls=TinySFT)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert not list(tmp_path.glob(".tmp-*"))
    # an HF architecture stays a plain directory: no remote code (only BailingMoe carries its own)
    assert "auto_map" not in json.loads((out / "config.json").read_text()) and not list(out.glob("*.py"))
    policy, tok = load_policy(out)
    assert type(policy) is type(model.policy)
    assert torch.allclose(logits_of(policy), logits_of(model.policy), atol=1e-6, rtol=0)
    init, _ = load_policy("qwen3-moe-tiny", seed=0)  # the trained weights, not the hparams' re-init
    assert not torch.allclose(logits_of(init), logits_of(model.policy), atol=1e-3)
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert tok(text)["input_ids"] == model.tokenizer(text)["input_ids"]
    assert tok.eos_token_id == model.tokenizer.eos_token_id and tok.chat_template == model.tokenizer.chat_template
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_checkpoint(ckpt, out, module_cls=TinySFT)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        export_checkpoint(ckpt, precious, module_cls=TinySFT, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_selector_exports_the_chosen_candidate_not_the_final_weights(tmp_path):
    model = TinySFT()
    selector = RLReadinessSelector(dirpath=str(tmp_path / "c"), export_dir=str(tmp_path / "rl_start"))
    fit(tmp_path, model, [selector, ScriptedEntropy([0.4, 0.2])], max_steps=4)
    report = json.loads((tmp_path / "c" / "rl_readiness.json").read_text())
    assert report["chosen"]["step"] == 2 and report["exported_to"] == str(tmp_path / "rl_start")
    exported, _ = load_policy(tmp_path / "rl_start")
    chosen = module_from_checkpoint(report["chosen"]["path"], TinySFT)
    assert torch.allclose(logits_of(exported), logits_of(chosen.policy), atol=1e-6, rtol=0)
    assert not torch.allclose(logits_of(exported), logits_of(model.policy), atol=1e-4)


def test_export_errors_name_the_problem(tmp_path):
    class NoHparams(TinySFT):
        def __init__(self):
            L.LightningModule.__init__(self)
            self.policy, self.tokenizer = load_policy("qwen3-tiny", seed=0)
            self.sft_tokens_seen = self.sft_loss_tokens_seen = 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    tr = fit(tmp_path, NoHparams())
    tr.save_checkpoint(str(tmp_path / "x.ckpt"))
    with pytest.raises(KeyError, match="no saved hyper-parameters"):
        export_checkpoint(tmp_path / "x.ckpt", tmp_path / "out", module_cls=NoHparams)
    with pytest.raises(ImportError, match="cannot import module_cls"):
        export_checkpoint(tmp_path / "x.ckpt", tmp_path / "out", module_cls="ring_lightning.nope.Module")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out", module_cls=NoHparams)


# ---- vLLM loads the export (native BailingMoe) ---------------------------------------------------

@pytest.fixture(scope="module")
def bailing_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bailing")
    model = TinySFT(model="bailing-tiny", lr=0.1)
    tr = fit(tmp, model)
    tr.save_checkpoint(str(tmp / "sft.ckpt"))
    return export_checkpoint(tmp / "sft.ckpt", tmp / "hf", module_cls=TinySFT), model


@pytest.mark.vllm
def test_vllm_loads_the_export_and_matches_hf_greedy(bailing_export):
    from vllm import LLM, SamplingParams

    out, model = bailing_export
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BailingMoeForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_bailing_moe.BailingMoeForCausalLM"
    policy, tok = load_policy(out)
    assert torch.allclose(logits_of(policy), logits_of(model.policy), atol=1e-6, rtol=0)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in ("What is 2+3?", "Say hello.")]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    llm = LLM(model=str(out), dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
    try:
        res = llm.generate([{"prompt_token_ids": x} for x in ids],
                           SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True))
    finally:
        del llm
        gc.collect()
    policy.eval()
    for x, r in zip(ids, res):
        got = list(r.outputs[0].token_ids)
        ref = list(x)
        with torch.no_grad():
            for _ in range(8):  # plain greedy decoding, EOS ignored like vLLM's ignore_eos
                ref.append(int(policy(input_ids=torch.tensor([ref])).logits[0, -1].argmax()))
            logp = torch.log_softmax(policy(input_ids=torch.tensor([x + got])).logits[0, len(x) - 1:-1].float(), -1)
        assert got == ref[len(x):]
        vllm_lp = [lp[t].logprob for t, lp in zip(got, r.outputs[0].logprobs)]
        hf_lp = logp[torch.arange(len(got)), torch.tensor(got)].tolist()
        assert vllm_lp == pytest.approx(hf_lp, abs=1e-4)
