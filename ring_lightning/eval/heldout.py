"""Held-out evaluation of an exported model: pass@1 (avg over n samples) ± standard error, pass@k, per set.

Ring-lite (arXiv 2506.14731, §5) evaluates each model by sampling several responses per problem
and reporting the average pass@1, scored by the same verifiers as the RL rewards. The pipeline
(`ring_lightning/pipeline.py`) runs this after every stage on the stage's HF export, so the report
can show what SFT, reasoning RL and general RL each changed, on prompts no stage trained on.

What the report leaves open, and what we chose: docs/design.md#eval-heldout.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.rows import PromptRow
from ring_lightning.eval.diagnostics import analyze, examples, paired
from ring_lightning.eval.passk import EvalCounts, evaluate_rollouts, pass_at_k
from ring_lightning.rewards.base import Reward
from ring_lightning.rewards.unscored import UNSCORED
from ring_lightning.rollout.engine import SamplingConfig

DIAGNOSTICS_VERSION = 3  # in the signature: results stored without (or with other) diagnostics are redone


@dataclass
class HeldoutEval:
    """What to evaluate after each pipeline stage, and how.

    Args:
        sets: set name -> prompt source (e.g. `{task: addition, size: 64, seed: 7, task_kwargs:
            {split: heldout}}`); each set gets its own rows in the results (and per-domain rows
            when it mixes domains).
        samples_per_prompt: n, samples per prompt (pass@1 is the mean of c/n).
        k: the k values of the unbiased pass@k (1 always); each <= samples_per_prompt.
        temperature: sampling temperature (the RL stages' by default).
        top_p: nucleus sampling mass.
        max_tokens: maximum response length.
        seed: sampling seed (the same for every evaluated model).
        correct_threshold: a valid sample with reward >= this is correct.
        engine: "hf" (transformers generate; fastest for tiny models) or "vllm".
        engine_kwargs: extra arguments of the engine (HFEngine: max_batch_size; VLLMEngine:
            max_model_len, ...).
        stages: the stages to evaluate after; None = every stage.
        torch_threads: torch intra-op threads during the evaluation (restored after); None = unchanged.
            1 suits a tiny model (its kernels are too small to split; extra threads only contend).
    """

    sets: dict[str, PromptSource] = field(default_factory=dict)
    samples_per_prompt: int = 8
    k: list[int] = field(default_factory=lambda: [1, 8])
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 1234
    correct_threshold: float = 1.0
    engine: Literal["hf", "vllm"] = "hf"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    stages: list[str] | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        self.sets = {name: src if isinstance(src, PromptSource) else PromptSource(**src)
                     for name, src in self.sets.items()}
        if not self.sets:
            raise ValueError("evaluation: `sets` is empty; name at least one prompt set (e.g. {math: {task: "
                             "addition, size: 64, task_kwargs: {split: heldout}}})")
        if self.samples_per_prompt < 1:
            raise ValueError(f"evaluation: samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        ks = sorted({1, *(int(x) for x in self.k)})
        if ks[0] < 1 or ks[-1] > self.samples_per_prompt:
            raise ValueError(f"evaluation: every k must be in [1, samples_per_prompt={self.samples_per_prompt}], "
                             f"got {list(self.k)}")
        self.k = ks
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"evaluation: torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"evaluation: engine must be 'hf' or 'vllm', got {self.engine!r}")

    def signature(self) -> dict[str, Any]:
        """What the results depend on (a resumed pipeline re-evaluates only when this changed)."""
        return {"sets": {n: vars(s) for n, s in self.sets.items()}, "samples_per_prompt": self.samples_per_prompt,
                "k": self.k, "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "correct_threshold": self.correct_threshold,
                "diagnostics": DIAGNOSTICS_VERSION}


def summarize(counts: EvalCounts, ks: Sequence[int], domains: Sequence[str] | None = None) -> dict[str, Any]:
    """pass@1 (mean c/n) ± standard error, pass@k, and the per-problem counts of `counts`' problems
    (restricted to `domains` when given)."""
    sel = [i for i, d in enumerate(counts.domains) if domains is None or d in domains]
    if not sel:
        raise ValueError(f"summarize: no problem of domains {domains} among {sorted(set(counts.domains))}")
    c = [int(counts.num_correct[i]) for i in sel]
    n = [int(counts.num_samples[i]) for i in sel]
    rates = [ci / ni for ci, ni in zip(c, n)]
    mean = sum(rates) / len(rates)
    var = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1) if len(rates) > 1 else 0.0
    out: dict[str, Any] = {"prompts": len(sel), "samples": sum(n), "pass@1": mean,
                           "pass@1_se": math.sqrt(var / len(rates))}
    for k in ks:
        if k > 1:
            out[f"pass@{k}"] = sum(pass_at_k(ni, ci, k) for ci, ni in zip(c, n)) / len(sel)
    out["num_correct"], out["num_samples"] = c, n
    return out


def paired_difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[float, float]:
    """(mean, standard error) of after − before pass@1 over the same problems (per-problem differences)."""
    b, a = before["num_correct"], after["num_correct"]
    nb, na = before["num_samples"], after["num_samples"]
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(b)} vs {len(a)} problems; both must score the same prompt set")
    return paired([bi / nbi for bi, nbi in zip(b, nb)], [ai / nai for ai, nai in zip(a, na)])


def load_sets(spec: HeldoutEval, reward: Reward | None = None) -> dict[str, list[PromptRow]]:
    """The rows of every set, checked by `reward.validate` when it has one (naming set and row)."""
    out = {}
    for name, src in spec.sets.items():
        rows = src.load(name)
        validate = getattr(reward, "validate", None)
        if validate is not None:
            where = src.path or f"built-in task {src.task!r}"
            for i, row in enumerate(rows):
                validate(row, f"evaluation set {name!r} ({where}) row {i}")
        out[name] = rows
    return out


def _engine(spec: HeldoutEval, model_dir: str):
    if spec.engine == "vllm":
        from ring_lightning.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(model_dir, **spec.engine_kwargs)
        return engine, engine.tokenizer
    from ring_lightning.rollout.hf_engine import HFEngine

    engine = HFEngine(model_dir, **spec.engine_kwargs)
    # An RL checkpoint may carry use_cache=False from training; sampling with the KV cache is the same
    # distribution, and far faster (transformers' generate takes the model's generation_config value).
    engine.model.config.use_cache = True
    engine.model.generation_config.use_cache = True
    return engine, engine.tokenizer


def evaluate_model(model_dir: str, spec: HeldoutEval, reward: Reward | None = None) -> dict[str, Any]:
    """Evaluate the HF model directory on every set of `spec`.

    Returns {"model", "seconds", "sets": {name: summary}, "domains": {name: {domain: summary}}} where a
    summary is `summarize`'s dict plus `scored` (False for a set of control prompts only: reward
    "unscored", no pass@1 to read), `mean_reward`, `mean_response_tokens`, `analysis` ({domain:
    ...}, `eval/diagnostics.analyze`: math trace modes, instruction compliance and shortcut controls)
    and `examples` (the first prompts' first samples, cut short). `reward` defaults to the RL stages'
    `RewardRouter()`; it is closed afterwards only when created here.
    """
    import torch

    started = time.time()
    threads = torch.get_num_threads()
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    own = reward is None
    if own:
        from ring_lightning.rewards.router import RewardRouter

        reward = RewardRouter()
    try:
        sets = load_sets(spec, reward)
        engine, tokenizer = _engine(spec, model_dir)
        results: dict[str, Any] = {"model": str(model_dir), "sets": {}, "domains": {}}
        for i, (name, rows) in enumerate(sets.items()):
            sampling = SamplingConfig(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                                      seed=spec.seed + 7919 * i)
            counts = evaluate_rollouts(engine, tokenizer, rows, reward, spec.samples_per_prompt, sampling,
                                       correct_threshold=spec.correct_threshold, keep_texts=True)
            summary = summarize(counts, spec.k)
            summary.update(scored=any(r.reward != UNSCORED for r in rows),
                           mean_reward=counts.mean_reward, mean_response_tokens=counts.mean_response_tokens,
                           analysis=analyze(rows, counts.texts, counts.correct),
                           examples=examples(rows, counts.texts))
            results["sets"][name] = summary
            if len(set(counts.domains)) > 1:
                results["domains"][name] = {d: summarize(counts, spec.k, [d]) for d in sorted(set(counts.domains))}
        close = getattr(engine, "close", None)
        if callable(close):
            close()
    finally:
        torch.set_num_threads(threads)
        if own:
            close_rewards(reward)
    results["seconds"] = time.time() - started
    return results


def close_rewards(reward: Any) -> None:
    """Stop worker processes of a reward or of a router's rewards (MathReward's verifier pool)."""
    for r in [reward, *getattr(reward, "rewards", {}).values()]:
        close = getattr(r, "close", None)
        if callable(close):
            close()


def summary_line(result: Mapping[str, Any]) -> str:
    """One line: pass@1 ± SE per set."""
    return ", ".join(f"{name} pass@1 {r['pass@1']:.3f} ± {r['pass@1_se']:.3f}" if r.get("scored", True)
                     else f"{name}: {r['prompts']} control prompts (unscored)" for name, r in result["sets"].items())


class ExportEvaluator:
    """The pipeline's evaluation of stage exports: one reward router (and math-verify worker pool) for
    every evaluation, results stamped with the settings (`spec`) so unchanged ones are not redone.

    Args:
        spec: what to evaluate and how.
    """

    def __init__(self, spec: HeldoutEval) -> None:
        self.spec = spec
        self.reward: Reward | None = None

    def wants(self, stage: str) -> bool:
        return self.spec.stages is None or stage in self.spec.stages

    def is_done(self, previous: Mapping[str, Any], model: str) -> bool:
        """`previous` (a stored result) scored this model with these settings."""
        return previous.get("model") == model and previous.get("spec") == self.spec.signature()

    def describe(self) -> str:
        return (f"{', '.join(self.spec.sets)}; {self.spec.samples_per_prompt} samples per prompt, temperature "
                f"{self.spec.temperature}")

    def evaluate(self, model: str, out: str | Path) -> dict[str, Any]:
        """`evaluate_model` + the settings, also written (atomically) to `out` as JSON."""
        if self.reward is None:
            from ring_lightning.rewards.router import RewardRouter

            self.reward = RewardRouter()
        result = {**evaluate_model(model, self.spec, reward=self.reward), "spec": self.spec.signature()}
        out = Path(out)
        tmp = out.with_name(f".tmp-{out.name}")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        return result

    def close(self) -> None:
        if self.reward is not None:
            close_rewards(self.reward)
            self.reward = None
