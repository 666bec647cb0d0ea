"""The rollout-engine seam: what the RL data module needs from a generator of on-policy samples.

Two engines implement it: `VLLMEngine` (vLLM embedded in the training process) and `HFEngine`
(batched `transformers.generate`, the reference and the fallback when vLLM is absent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample completions.

    Args:
        temperature: softmax temperature (0 = greedy).
        top_p: nucleus sampling mass.
        max_tokens: maximum completion length in tokens.
        stop: strings that end a completion (not included in the returned tokens' text).
        seed: base seed; the same prompts, n and seed give the same completions.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = [f"{name}={value!r} ({rule})" for name, value, ok, rule in (
            ("temperature", self.temperature, self.temperature >= 0, "must be >= 0; 0 = greedy"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("max_tokens", self.max_tokens, self.max_tokens >= 1, "must be >= 1; e.g. max_response_tokens"),
        ) if not ok]
        if problems:
            raise ValueError(f"SamplingConfig: {'; '.join(problems)}")


FinishReason = Literal["stop", "length"]


class EngineError(RuntimeError):
    """A rollout engine failed. The message names the engine, what failed (a start knob, a prompt,
    the backend's own error) and what to change. The backend's exception is chained as `__cause__`."""


class EngineStartError(EngineError, ValueError):
    """The engine cannot start with these settings (a knob the backend rejects, a model it cannot run,
    memory it cannot get, a missing package). Also a `ValueError`: it is a configuration problem."""


@dataclass(frozen=True)
class Completion:
    """One sampled response.

    Attributes:
        token_ids: the generated tokens (EOS included when generation ended on it).
        logprobs: log-probability of each generated token under the engine's policy
            (untempered distribution), same length as `token_ids`.
        text: detokenised `token_ids`.
        finish_reason: "stop" (EOS or a stop string) or "length" (hit max_tokens).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: FinishReason
    meta: dict = field(default_factory=dict, compare=False)


@runtime_checkable
class RolloutEngine(Protocol):
    """A generator of completions that can be kept in sync with the trainer's weights.

    An engine that generates with the trainer's own model object (HFEngine by default) sets the
    attribute `shares_trainer_model = True`; `RolloutDataModule` then refuses background sampling
    (`max_staleness >= 1`). Engines without the attribute are taken to hold their own weights.
    """

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """Sample `n` completions for each prompt (token ids). Returns one list of n per prompt."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights in place. Names are the trainer model's `state_dict` names."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory while the trainer runs (no-op where unsupported)."""
        ...

    def wake(self) -> None:
        """Re-acquire memory released by `sleep`."""
        ...

    def close(self) -> None:
        """Free the engine."""
        ...
