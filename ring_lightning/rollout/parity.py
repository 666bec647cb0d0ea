"""Trainer/engine agreement checks: a sync parity probe and train-vs-inference mismatch metrics.

Paper: Ring-lite (arXiv 2506.14731), RL section (C3PO): the report attributes MoE RL instability to
the optimisation and stabilises it with a fixed token budget; it does not measure how far the
inference engine's probabilities are from the trainer's. Those differences (stale or mis-synced
weights, kernel numerics) turn on-policy RL into off-policy RL, and an MoE amplifies them (a small
difference in a router input flips its top-k choice). We therefore measure two things:

- `SyncParityProbe` (after a weight sync): the engine samples a few short completions of fixed probe
  prompts with a fixed seed and returns their logprobs; the trainer recomputes them with a forward
  pass. mean / max |Δlogprob| are logged as `rollout/sync_logprob_diff_mean|max`, and a diff above a
  threshold raises `SyncParityError` (a broken sync must stop training, not silently bias it); its
  message names the parameter groups that differ and the tie status (`sync_diagnosis.py`). The
  probe runs on each of the first `always_first` syncs, then every `every_n_syncs`-th.
- `train_infer_mismatch` (on every rollout batch): with the trainer's recomputed logprobs p and the
  engine's q on tokens sampled from q: the k3 estimator of KL(q || p), mean over tokens of
  (r - 1) - log r with r = p / q (unbiased, always >= 0), and the max / min of r:
  `rollout/train_infer_kl`, `rollout/train_infer_ratio_max|min`.

Threshold choice (not in the report): fp32 engines agree with the trainer to ~1e-6 per token, so the
fp32 defaults are tight (mean 1e-4, max 1e-3); bf16/fp16 kernels legitimately differ by ~1e-2 mean, so
their defaults are loose (mean 0.05, max 1.5) and only catch gross breakage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig
from ring_lightning.rollout.hf_engine import no_router_logits

__all__ = ["SyncParityError", "SyncParityProbe", "sequence_logprobs", "train_infer_mismatch"]


class SyncParityError(RuntimeError):
    """The rollout engine's log-probabilities disagree with the trainer's after a weight sync."""


@torch.no_grad()
def sequence_logprobs(
    model: nn.Module, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """The trainer's log-probabilities of each completion's tokens given its prompt.

    Rows are right-padded into batches (causal attention: padding never reaches real tokens); logits
    are taken in fp32. The model is put in eval mode for the call and restored after.

    Returns:
        one fp32 tensor [len(completion)] per row.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ps, cs = prompts[start:start + batch_size], completions[start:start + batch_size]
            seqs = [list(p) + list(c) for p, c in zip(ps, cs)]
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           **no_router_logits(model)).logits.float()  # [B, T, V]
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]  # [B, T-1]
            for i, (p, c) in enumerate(zip(ps, cs)):
                out.append(logp[i, len(p) - 1:len(p) - 1 + len(c)].cpu())
    finally:
        model.train(was_training)
    return out


def train_infer_mismatch(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Disagreement of trainer (p) and engine (q) on tokens the engine sampled.

    Args:
        trainer_logprobs: log p of each token [B, T] (or [N]).
        engine_logprobs: log q of the same tokens, same shape.
        mask: 1 for real tokens (default: all).

    Returns:
        `rollout/train_infer_kl` (k3 estimate of KL(q || p): mean of r - 1 - log r, r = p / q),
        `rollout/train_infer_ratio_max`, `rollout/train_infer_ratio_min` (of r over real tokens).
    """
    if trainer_logprobs.shape != engine_logprobs.shape:
        raise ValueError(f"trainer logprobs {tuple(trainer_logprobs.shape)} and engine logprobs "
                         f"{tuple(engine_logprobs.shape)} differ in shape")
    log_r = trainer_logprobs.double() - engine_logprobs.double()  # [B, T]
    keep = torch.ones_like(log_r, dtype=torch.bool) if mask is None else mask.bool()
    log_r = log_r[keep]
    if log_r.numel() == 0:
        raise ValueError("train_infer_mismatch: the mask selects no tokens")
    k3 = torch.expm1(log_r) - log_r  # r - 1 - log r >= 0
    return {
        "rollout/train_infer_kl": k3.mean().item(),
        "rollout/train_infer_ratio_max": log_r.max().exp().item(),
        "rollout/train_infer_ratio_min": log_r.min().exp().item(),
    }


class SyncParityProbe:
    """Checks after a weight sync that the engine samples from the trainer's policy.

    Args:
        num_prompts: probe prompts (random token ids from `token_range`, fixed by `seed`).
        prompt_len: tokens per probe prompt.
        max_tokens: completion tokens sampled per probe prompt.
        temperature: sampling temperature of the probe (1.0 explores more of the vocabulary than greedy).
        seed: seed of the probe prompts and of the engine's sampling.
        token_range: (low, high) token ids the probe prompts are drawn from (high exclusive); None =
            (0, tokenizer vocab size) of the engine.
        always_first: run on each of the first `always_first` syncs.
        every_n_syncs: afterwards, run on every `every_n_syncs`-th sync (0 = never).
        mean_threshold: raise when mean |Δlogprob| exceeds this (None: 1e-4 for fp32 engines, else 0.05).
        max_threshold: raise when max |Δlogprob| exceeds this (None: 1e-3 for fp32 engines, else 1.5).
    """

    def __init__(
        self,
        num_prompts: int = 4,
        prompt_len: int = 8,
        max_tokens: int = 16,
        temperature: float = 1.0,
        seed: int = 1234,
        token_range: tuple[int, int] | None = None,
        always_first: int = 3,
        every_n_syncs: int = 50,
        mean_threshold: float | None = None,
        max_threshold: float | None = None,
    ):
        self.num_prompts, self.prompt_len, self.max_tokens = num_prompts, prompt_len, max_tokens
        self.temperature, self.seed, self.token_range = temperature, seed, token_range
        self.always_first, self.every_n_syncs = always_first, every_n_syncs
        self.mean_threshold, self.max_threshold = mean_threshold, max_threshold
        self.syncs_seen = 0

    def due(self) -> bool:
        """Whether the sync just counted (`syncs_seen`, 1-based) is probed."""
        k = self.syncs_seen
        return k <= self.always_first or (self.every_n_syncs > 0 and k % self.every_n_syncs == 0)

    def _prompts(self, engine: RolloutEngine) -> list[list[int]]:
        if self.token_range is None and getattr(engine, "tokenizer", None) is None:
            raise ValueError(f"SyncParityProbe: {type(engine).__name__} has no `tokenizer`; "
                             "pass token_range=(low, high)")
        low, high = self.token_range or (0, len(engine.tokenizer))
        g = torch.Generator().manual_seed(self.seed)
        return torch.randint(low, high, (self.num_prompts, self.prompt_len), generator=g).tolist()

    def _thresholds(self, engine: RolloutEngine) -> tuple[float, float]:
        exact = getattr(engine, "dtype", torch.float32) == torch.float32
        mean = self.mean_threshold if self.mean_threshold is not None else (1e-4 if exact else 0.05)
        mx = self.max_threshold if self.max_threshold is not None else (1e-3 if exact else 1.5)
        return mean, mx

    def after_sync(self, engine: RolloutEngine, model: nn.Module, step: int) -> dict[str, float] | None:
        """Count a sync; if due, run the probe. Returns the metrics, or None when not due.

        Raises:
            SyncParityError: a threshold was exceeded (message names the engine and the step).
        """
        self.syncs_seen += 1
        if not self.due():
            return None
        return self.check(engine, model, step)

    def check(self, engine: RolloutEngine, model: nn.Module, step: int) -> dict[str, float]:
        """Run the probe now (see the class docstring)."""
        prompts = self._prompts(engine)
        sampling = SamplingConfig(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed)
        comps = [group[0] for group in engine.generate(prompts, 1, sampling)]
        ours = sequence_logprobs(model, prompts, [c.token_ids for c in comps])
        diffs = torch.cat([(torch.tensor(c.logprobs, dtype=torch.float32) - o).abs() for c, o in zip(comps, ours)])
        if diffs.numel() == 0:
            raise SyncParityError(f"sync parity probe at step {step}: {type(engine).__name__} generated no tokens")
        mean, mx = diffs.mean().item(), diffs.max().item()
        mean_limit, max_limit = self._thresholds(engine)
        if not (mean <= mean_limit and mx <= max_limit):  # also catches NaN
            raise SyncParityError(
                f"{type(engine).__name__} disagrees with the trainer after the weight sync at step {step}: "
                f"mean |Δlogprob| = {mean:.3g} (limit {mean_limit:.3g}), max = {mx:.3g} (limit {max_limit:.3g}) "
                f"over {diffs.numel()} probe tokens. The engine is not sampling from the trained policy.\n"
                + _diagnosis(engine, model)
            )
        return {"rollout/sync_logprob_diff_mean": mean, "rollout/sync_logprob_diff_max": mx}


def _diagnosis(engine: RolloutEngine, model: nn.Module) -> str:
    """The engine's account of where its weights differ (`diagnose_sync`, if it has one) and advice."""
    lines: list[str] = []
    if hasattr(engine, "diagnose_sync"):
        try:
            lines = list(engine.diagnose_sync(model))
        except Exception as e:  # noqa: BLE001 - the parity failure is the error to report
            lines = [f"(weight comparison failed: {type(e).__name__}: {e})"]
    text = " ".join(lines).lower()
    advice = []
    if "weights differing" in text:
        advice.append("the groups named above hold other values in the engine than in the trainer: pass every "
                      "trainer parameter to update_weights (e.g. model.named_parameters()) and check their names")
    if "stale head kernel" in text or ("embeddings tied" in text and "is not the input embedding" in text):
        advice.append("with tie_word_embeddings=True the head shares the embedding's weight: if the head is stale, "
                      "the engine did not refresh it after the sync (report it); meanwhile untie the embeddings "
                      "(load_policy(..., tie_word_embeddings=False)) or use HFEngine")
    if not advice:
        advice.append("no compared weight differs, so a repacked kernel weight or the kernels' precision may: "
                      "check that update_weights receives every parameter, raise mean_threshold / max_threshold "
                      "for low-precision engines, or run the engine in float32 to compare")
    return "".join(f"  - {ln}\n" for ln in lines) + "What to do: " + "; ".join(advice) + "."
