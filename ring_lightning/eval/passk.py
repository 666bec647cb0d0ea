"""pass@k on held-out verifiable prompts: the unbiased estimator and a rank-aggregating Metric.

Ring-lite (arXiv 2506.14731, §5 "Evaluation") reports pass@1 averaged over several samples per
problem (avg@n) on verifiable benchmarks (AIME, LiveCodeBench, GPQA, ...), scored with the same
verifiers as the RL rewards. We report that and, for k > 1, the unbiased pass@k of Chen et al.
(2021, "Evaluating Large Language Models Trained on Code", Eq. 1): with n samples of which c are
correct, pass@k = 1 − C(n−c, k) / C(n, k), averaged over problems.

Choices where the report is silent: docs/design.md#eval-passk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import Reward, RewardResult
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: 1 − C(n−c, k) / C(n, k) (Chen et al. 2021).

    Computed as 1 − Π_{i=n−c+1}^{n} (1 − k / i), which is numerically stable for large n.

    Args:
        n: samples drawn for the problem (>= 1).
        c: correct samples among them (0 <= c <= n).
        k: the k of pass@k (1 <= k <= n).
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n (draw at least k samples per problem), got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


class PassAtK(Metric):
    """Mean unbiased pass@k over problems, for several k, summed across ranks.

    `update(num_correct, num_samples)` takes one entry per problem; `compute()` returns
    {"pass@1": mean c/n, "pass@<k>": mean unbiased pass@k for each k > 1, "problems": count}.

    Args:
        k: the k values to report (each >= 1; 1 is always reported).
        allow_empty: `compute()` with no problems returns {"problems": 0} instead of raising
            (for per-domain metrics that may see no problem of their domain).
        kwargs: passed to `torchmetrics.Metric` (e.g. `sync_on_compute`).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: Sequence[int] = (1,), allow_empty: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_empty = allow_empty
        ks = sorted({1, *(int(x) for x in k)})
        if ks[0] < 1:
            raise ValueError(f"PassAtK: every k must be >= 1, got {list(k)}")
        self.ks = tuple(ks)
        self.add_state("pass_sum", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("problems", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, num_correct: torch.Tensor | Sequence[int], num_samples: torch.Tensor | Sequence[int]) -> None:
        """Add problems: `num_correct[i]` correct out of `num_samples[i]` samples. Both [P]."""
        c = torch.as_tensor(num_correct).reshape(-1).tolist()
        n = torch.as_tensor(num_samples).reshape(-1).tolist()
        if len(c) != len(n):
            raise ValueError(f"PassAtK.update: {len(c)} correct counts but {len(n)} sample counts")
        sums = [0.0] * len(self.ks)
        for ci, ni in zip(c, n):
            ci, ni = int(ci), int(ni)
            if ni < self.ks[-1]:
                raise ValueError(f"PassAtK: a problem has {ni} samples but pass@{self.ks[-1]} needs >= "
                                 f"{self.ks[-1]}; raise samples_per_prompt or drop that k")
            for j, k in enumerate(self.ks):
                sums[j] += ci / ni if k == 1 else pass_at_k(ni, ci, k)
        self.pass_sum += torch.tensor(sums, dtype=torch.float64, device=self.pass_sum.device)
        self.problems += len(c)

    def compute(self) -> dict[str, torch.Tensor]:
        if float(self.problems) == 0:
            if self.allow_empty:
                return {"problems": self.problems.float()}
            raise RuntimeError("PassAtK.compute with no problems: update() was never called (empty eval set?)")
        mean = (self.pass_sum / self.problems).float()
        out = {f"pass@{k}": mean[j] for j, k in enumerate(self.ks)}
        out["problems"] = self.problems.float()
        return out


@dataclass(frozen=True)
class EvalCounts:
    """Per-problem outcome of `evaluate_rollouts`.

    Attributes:
        num_correct: [P] correct samples per problem.
        num_samples: [P] samples per problem.
        domains: the problems' domains, in order.
        mean_reward: mean raw reward over all samples.
        mean_response_tokens: mean response length in tokens.
        texts: per problem, its sampled texts (only with `keep_texts=True`, else None).
        correct: per problem, whether each sample was correct (with `texts`, else None).
    """

    num_correct: torch.Tensor
    num_samples: torch.Tensor
    domains: tuple[str, ...]
    mean_reward: float
    mean_response_tokens: float
    texts: tuple[tuple[str, ...], ...] | None = None
    correct: tuple[tuple[bool, ...], ...] | None = None


def is_correct(result: RewardResult, threshold: float = 1.0) -> bool:
    """A valid result whose reward reaches `threshold`."""
    return bool(result.valid) and float(result.reward) >= threshold


def evaluate_rollouts(engine: RolloutEngine, tokenizer: Any, rows: Sequence[PromptRow], reward: Reward,
                      samples_per_prompt: int, sampling: SamplingConfig, correct_threshold: float = 1.0,
                      metrics: dict[str, PassAtK] | None = None, keep_texts: bool = False) -> EvalCounts:
    """Sample `samples_per_prompt` responses per row, score them with `reward`, count correct ones.

    The validation/test step of an RL module: call it with the batch's rows and update
    `metrics` (`"all"` gets every problem, a key equal to a domain gets that domain's problems),
    then log `metric.compute()` at epoch end. Prompts are rendered with the tokenizer's chat
    template exactly as `RolloutDataModule` does for training.

    Args:
        engine: the rollout engine (its weights must be the policy's).
        tokenizer: the policy's tokenizer (chat template).
        rows: held-out prompt rows (`data/prompts.py` schema).
        reward: the same reward (router) as training.
        samples_per_prompt: n, samples per problem.
        sampling: sampling settings (temperature, top_p, max_tokens, seed).
        correct_threshold: reward at or above which a valid sample is correct.
        metrics: PassAtK metrics to update: "all" and/or per-domain keys.
        keep_texts: also return the sampled texts and per-sample correctness (`EvalCounts.texts`,
            `.correct`); off by default, so a validation loop holds only counts.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"evaluate_rollouts: samples_per_prompt must be >= 1, got {samples_per_prompt}")
    if not rows:
        raise ValueError("evaluate_rollouts: no prompt rows to evaluate")
    prompts = [tokenizer.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=True,
                                             return_dict=False) for r in rows]
    comps = engine.generate(prompts, samples_per_prompt, sampling)
    if len(comps) != len(rows) or any(len(c) != samples_per_prompt for c in comps):
        raise RuntimeError(f"{type(engine).__name__}.generate returned {[len(c) for c in comps]} completions "
                           f"for {len(rows)} prompts × n={samples_per_prompt}")
    flat_rows = [r for r, cs in zip(rows, comps) for _ in cs]
    results = reward(flat_rows, [c.text for cs in comps for c in cs])
    if len(results) != len(flat_rows):
        raise RuntimeError(f"reward {type(reward).__name__} returned {len(results)} results for {len(flat_rows)} samples")
    correct = torch.tensor([is_correct(r, correct_threshold) for r in results], dtype=torch.long)
    num_correct = correct.view(len(rows), samples_per_prompt).sum(dim=1)  # [P]
    num_samples = torch.full((len(rows),), samples_per_prompt, dtype=torch.long)  # [P]
    domains = tuple(r.domain for r in rows)
    for key, metric in (metrics or {}).items():
        if key == "all":
            metric.update(num_correct, num_samples)
            continue
        sel = [i for i, d in enumerate(domains) if d == key]
        if sel:
            metric.update(num_correct[sel], num_samples[sel])
    n_tok = [len(c.token_ids) for cs in comps for c in cs]
    texts = per_sample = None
    if keep_texts:
        texts = tuple(tuple(c.text for c in cs) for cs in comps)
        flags = [bool(x) for x in correct.tolist()]
        per_sample = tuple(tuple(flags[i * samples_per_prompt:(i + 1) * samples_per_prompt]) for i in range(len(rows)))
    return EvalCounts(num_correct, num_samples, domains,
                      mean_reward=sum(float(r.reward) for r in results) / len(results),
                      mean_response_tokens=sum(n_tok) / len(n_tok), texts=texts, correct=per_sample)
