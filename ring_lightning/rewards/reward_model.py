"""Reward-model reward for open-ended prompts: a sequence-classification model scores (prompt, response).

Ring-lite's general-RL stage (arXiv 2506.14731, two-stage training: reasoning RL, then general RL)
covers open-ended data where no rule can verify the answer, which calls for a learned reward
model; the report does not describe it. Our choice: we load any Hugging Face
``AutoModelForSequenceClassification`` with one label from a local directory and use its logit as
the reward. The conversation is rendered with the tokenizer's chat template when it has one
(prompt messages + the response as the assistant turn), else as ``prompt\\n\\nresponse``; long
inputs are truncated from the left so the response is kept. Optional per-call z-score
normalisation (``normalize="zscore"``: (s - mean) / std over the samples of one call; a call with
one sample gives 0) keeps the scale comparable to the 0/1 verifiable rewards; the raw score is in
``info["score"]``. By default only the answer after ``</think>`` is scored.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.extraction import strip_thinking


class RewardModelReward:
    """Scores responses with a local sequence-classification reward model.

    Args:
        model_path: local directory of a model saved with ``save_pretrained`` (num_labels=1).
        tokenizer_path: tokenizer directory ("" = `model_path`).
        batch_size: samples per forward pass.
        max_length: tokens kept per sample (truncated from the left).
        normalize: "none" or "zscore" (per call; `RewardRouter` calls once per chunk of its
            `chunk_size` samples, so make that at least the rollout batch for per-batch statistics).
        device: torch device, e.g. "cpu" or "cuda:0".
        dtype: "float32", "bfloat16" or "float16".
        strip_thinking: score only the answer after the last ``</think>``.
        use_chat_template: render with the tokenizer's chat template when it has one.
    """

    binary = False

    def __init__(self, model_path: str, tokenizer_path: str = "", batch_size: int = 8, max_length: int = 2048,
                 normalize: Literal["none", "zscore"] = "none", device: str = "cpu", dtype: str = "float32",
                 strip_thinking: bool = True, use_chat_template: bool = True) -> None:
        if normalize not in ("none", "zscore"):
            raise ValueError(f"RewardModelReward normalize must be 'none' or 'zscore', got {normalize!r}")
        if not Path(model_path).is_dir():
            raise FileNotFoundError(f"RewardModelReward model_path {model_path!r} is not a local directory")
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path or model_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.device = device
        self.dtype = dtype
        self.strip_thinking = strip_thinking
        self.use_chat_template = use_chat_template
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_model=None, _tokenizer=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ring_lightning.models.loading import to_dtype

        tok = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        tok.truncation_side = "left"
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, local_files_only=True,
                                                                   dtype=to_dtype(self.dtype))
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {self.model_path} has num_labels={model.config.num_labels}; expected 1")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        model.to(torch.device(self.device)).eval()
        self._tokenizer, self._model = tok, model

    def render(self, row: PromptRow, response: str) -> str:
        """The text the reward model reads for one sample."""
        answer = strip_thinking(response) if self.strip_thinking else response
        self._load()
        tok = self._tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            messages = [dict(m) for m in row.messages] + [{"role": "assistant", "content": answer}]
            return tok.apply_chat_template(messages, tokenize=False)
        return f"{row.prompt_text}\n\n{answer}"

    def scores(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[float]:
        """Raw reward-model scores, batched."""
        import torch

        with self._lock:
            self._load()
            texts = [self.render(r, s) for r, s in zip(rows, responses)]
            out: list[float] = []
            for i in range(0, len(texts), self.batch_size):
                enc = self._tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                      truncation=True, max_length=self.max_length, add_special_tokens=False)
                enc = {k: v.to(self._model.device) for k, v in enc.items()}
                with torch.no_grad():
                    logits = self._model(**enc).logits  # [B, 1]
                out.extend(logits[:, 0].float().tolist())
            return out

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"RewardModelReward got {len(rows)} rows but {len(responses)} responses")
        if not rows:
            return []
        raw = self.scores(rows, responses)
        rewards = raw
        if self.normalize == "zscore":
            mean = sum(raw) / len(raw)
            std = math.sqrt(sum((x - mean) ** 2 for x in raw) / len(raw))
            rewards = [(x - mean) / std if std > 1e-8 else 0.0 for x in raw]
        return [RewardResult(float(r), info={"score": s}) for r, s in zip(rewards, raw)]
