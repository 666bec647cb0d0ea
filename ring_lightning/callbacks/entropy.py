"""Policy entropy on the policy's own samples: the signal Ring-lite uses to pick the RL start.

Ring-lite (arXiv 2506.14731; abstract and its study of distillation vs. RL) shows that "selecting
distillation checkpoints based on entropy loss for RL training, rather than validation metrics,
yields superior performance-efficiency trade-offs": more long-CoT SFT epochs lower the policy's
entropy, and RL started from a low-entropy checkpoint collapses its entropy. It starts RL from the
SFT checkpoint whose entropy lies in 0.3–0.5 and compares recipes by token efficiency =
(# RL training tokens) / (# SFT training tokens). (Band and definition as summarised in the
project's SFT-stage issue; the section numbering of the report was not re-checked here.)

What the report leaves open, and what this file chooses: docs/design.md#callbacks-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from transformers import GenerationConfig, LogitsProcessor

from ring_lightning.rows import PromptRow, parse_row
from ring_lightning.data.prompts import load_prompts
from ring_lightning.rewards.base import Reward


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the last dim. [..., V] -> [...]."""
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def response_mask(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True for generated tokens up to and including the first EOS. [B, G] -> bool [B, G]."""
    is_eos = (tokens == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS strictly before each position
    return eos_before == 0


class _EntropyRecorder(LogitsProcessor):
    """Records H(softmax(z / T)) of each decoding step's raw logits; leaves the scores unchanged."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []  # each [B]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(token_entropy(scores, self.temperature))
        return scores


@dataclass(frozen=True)
class SampleRecord:
    """One sampled response of this rank (for inspection and tests).

    Attributes:
        row_id: the prompt row's id.
        sample: index of the sample for that prompt.
        token_ids: the response tokens (EOS included when generated; padding excluded).
        text: the decoded response (special tokens skipped).
        entropy_sum: sum of the per-token entropies over `token_ids` (nats).
        reward: the reward's score, or None.
    """

    row_id: str
    sample: int
    token_ids: tuple[int, ...]
    text: str
    entropy_sum: float
    reward: float | None = None


@dataclass(frozen=True)
class EntropyMeasurement:
    """One measurement of the policy (identical on every rank).

    Attributes:
        entropy: token-mean entropy (nats) over all response tokens.
        response_length: mean response length in tokens (EOS included).
        truncated: fraction of samples that hit `max_new_tokens` without EOS.
        pass_at_1: mean reward over valid samples (None without a reward).
        num_samples: number of sampled responses.
        num_tokens: number of response tokens.
        invalid_rewards: samples the reward marked invalid (excluded from pass@1).
        samples: this rank's samples (not reduced over ranks).
    """

    entropy: float
    response_length: float
    truncated: float
    pass_at_1: float | None
    num_samples: int
    num_tokens: int
    invalid_rewards: int = 0
    samples: tuple[SampleRecord, ...] = field(default=(), repr=False, compare=False)


def rows_from_source(
    prompts: Sequence[str] | None = None,
    prompt_file: str | None = None,
    synthetic_task: str | None = None,
    synthetic_prompts: int = 32,
    synthetic_n_train: int = 4000,
    synthetic_seed: int = 0,
) -> list[PromptRow]:
    """Held-out prompt rows from exactly one source (see `EntropyMonitor`)."""
    given = [name for name, v in (("prompts", prompts), ("prompt_file", prompt_file),
                                  ("synthetic_task", synthetic_task)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"EntropyMonitor needs exactly one prompt source among prompts, prompt_file, "
                         f"synthetic_task; got {given or 'none'}")
    if prompts is not None:
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("EntropyMonitor: `prompts` must be a non-empty list of non-empty strings")
        return [PromptRow(id=f"prompt-{i}", domain="general", messages=({"role": "user", "content": p},))
                for i, p in enumerate(prompts)]
    if prompt_file is not None:
        rows = load_prompts(prompt_file)
        if not rows:
            raise ValueError(f"EntropyMonitor: prompt file {prompt_file} has no rows")
        return rows
    from ring_lightning.data.synthetic.problems import PARTITIONED_TASKS, prompt_rows

    split = "probe" if synthetic_task in PARTITIONED_TASKS else "val"  # probe: disjoint from every eval set
    raw = prompt_rows(synthetic_task, split, synthetic_n_train, synthetic_prompts, seed=synthetic_seed)
    return [parse_row(r, f"synthetic {synthetic_task} {split} row {i}") for i, r in enumerate(raw)]


def _encode_prompts(tokenizer: Any, rows: Sequence[PromptRow], chat_template_kwargs: dict) -> list[list[int]]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("EntropyMonitor formats prompts with the tokenizer's chat template, but the tokenizer "
                         "has none; use a chat tokenizer (e.g. the shipped one, ring_lightning/assets/tokenizer)")
    out = []
    for row in rows:
        text = tokenizer.apply_chat_template(list(row.messages), add_generation_prompt=True, tokenize=False,
                                             **chat_template_kwargs)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def _check_args(tokenizer: Any, temperature: float, world_size: int, all_reduce_sum) -> tuple[int, int]:
    """(eos id, pad id) after the argument checks of `measure_policy_entropy`."""
    if temperature <= 0:
        raise ValueError(f"EntropyMonitor: temperature must be > 0 to define a sampling entropy, got {temperature}")
    if world_size > 1 and all_reduce_sum is None:
        raise ValueError("measure_policy_entropy: world_size > 1 needs all_reduce_sum")
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id is None:
        raise ValueError("EntropyMonitor: the tokenizer has no eos_token_id")
    return eos_id, (eos_id if pad_id is None else pad_id)


def _generate_kwargs(policy: torch.nn.Module, temperature: float, max_new_tokens: int, pad_id: int, eos_id: int,
                     world_size: int) -> dict[str, Any]:
    """Pure sampling at `temperature` (no top-k / top-p), synced over ranks when distributed."""
    kwargs: dict[str, Any] = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                                  synced_gpus=world_size > 1 and dist.is_available() and dist.is_initialized())
    if getattr(policy.config, "output_router_logits", False):
        kwargs["output_router_logits"] = False  # MoE aux loss is not defined for cached decoding
    return kwargs


def _score_batch(gen: torch.Tensor, recorder: "_EntropyRecorder", batch: list[tuple[int, int]],
                 rows: Sequence[PromptRow], tokenizer: Any, eos_id: int, reward, sums: torch.Tensor
                 ) -> list[SampleRecord]:
    """Entropy, lengths and rewards of one generated batch `gen` [B, G], added into `sums`; its records."""
    out: list[SampleRecord] = []
    if len(recorder.steps) != gen.shape[1]:
        raise RuntimeError(f"EntropyMonitor: generate produced {gen.shape[1]} tokens but the logits "
                           f"processor saw {len(recorder.steps)} steps; unsupported generate mode")
    ent = torch.stack(recorder.steps, dim=1).cpu().double() if recorder.steps else torch.zeros(gen.shape)
    valid = response_mask(gen, eos_id)  # [B, G]
    lengths = valid.sum(dim=1)  # [B]
    ended = ((gen == eos_id) & valid).any(dim=1)  # [B]
    per_sample = (ent * valid).sum(dim=1)  # [B]
    sums[0] += per_sample.sum()
    sums[1] += lengths.sum()
    sums[2] += len(batch)
    sums[3] += (~ended).sum()
    texts = [tokenizer.decode(g[v].tolist(), skip_special_tokens=True) for g, v in zip(gen, valid)]
    scores: list[float | None] = [None] * len(batch)
    if reward is not None:
        results = reward([rows[i] for i, _ in batch], texts)
        if len(results) != len(batch):
            raise ValueError(f"EntropyMonitor: reward {type(reward).__name__} returned {len(results)} "
                             f"results for {len(batch)} responses")
        sums[4] += sum(float(r.reward) for r in results if r.valid)
        sums[5] += sum(1 for r in results if r.valid)
        sums[6] += sum(1 for r in results if not r.valid)
        scores = [float(r.reward) if r.valid else None for r in results]
    for j, (i, k) in enumerate(batch):
        out.append(SampleRecord(rows[i].id, k, tuple(gen[j][valid[j]].tolist()), texts[j],
                                float(per_sample[j]), scores[j]))
    return out


def measure_policy_entropy(
    policy: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[PromptRow],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    num_samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    reward: Reward | Callable | None = None,
    chat_template_kwargs: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EntropyMeasurement:
    """Sample responses with `policy.generate` and measure the entropy on them (module docstring).

    Must be called on every rank with the same arguments; `all_reduce_sum` sums a tensor over ranks
    (required when `world_size > 1`). Returns the same measurement on every rank.
    """
    eos_id, pad_id = _check_args(tokenizer, temperature, world_size, all_reduce_sum)
    device = next(policy.parameters()).device
    prompt_ids = _encode_prompts(tokenizer, rows, chat_template_kwargs or {})
    items = [(i, k) for i in range(len(rows)) for k in range(num_samples)]  # (row index, sample index)
    batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
    n_rounds = math.ceil(len(batches) / world_size)
    gen_kwargs = _generate_kwargs(policy, temperature, max_new_tokens, pad_id, eos_id, world_size)
    # sums: entropy, tokens, samples, truncated, reward sum, valid rewards, invalid rewards
    sums = torch.zeros(7, dtype=torch.float64)
    records: list[SampleRecord] = []
    saved_config, was_training = policy.generation_config, policy.training
    policy.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    policy.eval()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            for rnd in range(n_rounds):
                b = rnd * world_size + rank
                real = b < len(batches)
                batch = batches[b] if real else batches[0]  # dummy keeps collective forwards in step
                torch.manual_seed(seed + (b if real else 0))
                ids, mask = _left_pad([prompt_ids[i] for i, _ in batch], pad_id, device)
                recorder = _EntropyRecorder(temperature)
                out = policy.generate(input_ids=ids, attention_mask=mask, logits_processor=[recorder], **gen_kwargs)
                if not real:
                    continue
                records += _score_batch(out[:, ids.shape[1]:].cpu(), recorder, batch, rows, tokenizer, eos_id,
                                        reward, sums)
    finally:
        policy.generation_config = saved_config
        policy.train(was_training)
    if world_size > 1:
        sums = all_reduce_sum(sums.to(device)).cpu()
    ent_sum, n_tok, n_samp, n_trunc, r_sum, r_valid, r_invalid = sums.tolist()
    pass_at_1 = None
    if reward is not None:
        pass_at_1 = r_sum / r_valid if r_valid > 0 else float("nan")
    return EntropyMeasurement(entropy=ent_sum / max(n_tok, 1.0), response_length=n_tok / max(n_samp, 1.0),
                              truncated=n_trunc / max(n_samp, 1.0), pass_at_1=pass_at_1, num_samples=int(n_samp),
                              num_tokens=int(n_tok), invalid_rewards=int(r_invalid), samples=tuple(records))


class EntropyMonitor(Callback):
    """Measure the policy's entropy on its own samples at validation end; log `<prefix>/entropy`.

    Logs (every rank, already reduced): `<prefix>/entropy`, `<prefix>/response_length`,
    `<prefix>/response_truncated`, and with a reward `<prefix>/pass@1` (+ `<prefix>/reward_invalid`).
    The latest measurement is also kept in `self.latest` (with `self.latest_step`).

    Args:
        prompts: held-out prompt strings (user messages). Exactly one of prompts / prompt_file /
            synthetic_task must be set.
        prompt_file: a prompt file (JSONL / Parquet / datasets dir) in the RL prompt schema.
        synthetic_task: a built-in synthetic task: "arithmetic", "countdown", "mixed" (its val split) or
            a partitioned one ("addition", "instruction", "quickstart": its probe partition, disjoint
            from the held-out evaluation sets, `data/synthetic/problems.is_probe`).
        synthetic_prompts: how many synthetic probe / val prompts.
        synthetic_n_train: must equal `SFTDataModule.synthetic_train_rows` (same task and seed): the
            prompts are the first problems after the SFT training split, hence held out from it.
        synthetic_seed: the synthetic generator's seed (`SFTDataModule.seed`).
        num_samples: responses sampled per prompt.
        max_new_tokens: maximum response length; truncated responses count with their tokens.
        temperature: sampling temperature; the entropy is that of softmax(logits / temperature).
        batch_size: prompts per `generate` call (per rank).
        every_n_validations: measure at every n-th validation (1 = all).
        seed: sampling seed (batch b uses seed + b); the same at every measurement.
        reward: a Reward (e.g. `ring_lightning.rewards.math.MathReward`) to compute pass@1; the rows must
            be verifiable (have answers). None: no pass@1.
        chat_template_kwargs: extra kwargs for `tokenizer.apply_chat_template` (e.g. enable_thinking).
        log_prefix: metric namespace.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompt_file: str | None = None,
        synthetic_task: str | None = None,
        synthetic_prompts: int = 32,
        synthetic_n_train: int = 4000,
        synthetic_seed: int = 0,
        num_samples: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        batch_size: int = 8,
        every_n_validations: int = 1,
        seed: int = 0,
        reward: Reward | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        log_prefix: str = "sft",
    ):
        if every_n_validations < 1 or num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
            raise ValueError("EntropyMonitor: every_n_validations, num_samples, batch_size and max_new_tokens "
                             "must be >= 1")
        if temperature <= 0:
            raise ValueError(f"EntropyMonitor: temperature must be > 0, got {temperature}")
        if reward is not None and not callable(reward):
            raise TypeError(f"EntropyMonitor: reward must be a Reward callable, got {type(reward).__name__}")
        if reward is not None and prompts is not None:
            raise ValueError("EntropyMonitor: a reward needs verifiable rows (answers), but plain `prompts` strings "
                             "have none; give prompt_file or synthetic_task, or drop the reward")
        self.rows = rows_from_source(prompts, prompt_file, synthetic_task, synthetic_prompts, synthetic_n_train,
                                     synthetic_seed)
        self.num_samples, self.max_new_tokens, self.temperature = num_samples, max_new_tokens, temperature
        self.batch_size, self.every_n_validations, self.seed = batch_size, every_n_validations, seed
        self.reward, self.chat_template_kwargs, self.log_prefix = reward, dict(chat_template_kwargs or {}), log_prefix
        self.latest: EntropyMeasurement | None = None
        self.latest_step: int | None = None
        self._validations = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    @property
    def entropy_key(self) -> str:
        return f"{self.log_prefix}/entropy"

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> EntropyMeasurement:
        """Run one measurement now (collective: call on every rank)."""
        policy, tokenizer = getattr(pl_module, "policy", None), getattr(pl_module, "tokenizer", None)
        if policy is None or tokenizer is None:
            raise AttributeError(f"EntropyMonitor needs pl_module.policy and pl_module.tokenizer; "
                                 f"{type(pl_module).__name__}.{'policy' if policy is None else 'tokenizer'} is "
                                 f"missing or None (not built yet?)")
        strategy = trainer.strategy
        return measure_policy_entropy(
            policy, tokenizer, self.rows, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
            num_samples=self.num_samples, batch_size=self.batch_size, seed=self.seed, reward=self.reward,
            chat_template_kwargs=self.chat_template_kwargs, rank=trainer.global_rank, world_size=trainer.world_size,
            all_reduce_sum=lambda t: strategy.reduce(t, reduce_op="sum"),
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations != 0:
            return
        m = self.measure(trainer, pl_module)
        self.latest, self.latest_step = m, trainer.global_step
        p = self.log_prefix
        metrics = {f"{p}/entropy": m.entropy, f"{p}/response_length": m.response_length,
                   f"{p}/response_truncated": m.truncated}
        if m.pass_at_1 is not None:
            metrics[f"{p}/pass@1"] = m.pass_at_1
            metrics[f"{p}/reward_invalid"] = float(m.invalid_rewards)
        # Values are already reduced over ranks: no sync_dist.
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        close = getattr(self.reward, "close", None)
        if callable(close):  # e.g. MathReward's verifier worker processes (restarted lazily if reused)
            close()

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
