"""Test doubles shared by the RL unit tests (tests/unit/modules/test_rl*.py, tests/unit/data/test_rollouts_datamodule.py):
a deterministic fake rollout engine (and one whose samples depend on its weights), a parity reward, a metrics
recorder, an in-memory logger and a float64 RLModule.
Imported as `unit.rl_fixtures` (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import Logger

from ring_lightning.modules.rl import RLModule
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rows import PromptRow
from ring_lightning.rollout.engine import Completion


def checksum(named) -> float:
    """An order-sensitive checksum of named tensors (tells weight versions apart)."""
    return float(sum(t.detach().double().sum() * (k + 1) for k, (_, t) in enumerate(named)))


class FakeEngine:
    """Deterministic completions from (seed, prompt, sample): `min_len..max_len` tokens in 3..200, each with
    logprob `logprob` (None: -0.5 - 0.01·position). Records the weight version and checksum it generated with.

    Args:
        min_len: shortest completion.
        max_len: longest completion.
        logprob: the engine logprob of every token; None = position-dependent.
    """

    def __init__(self, min_len: int = 3, max_len: int = 12, logprob: float | None = None) -> None:
        self.min_len, self.max_len, self.logprob = min_len, max_len, logprob
        self.version, self.weights = 0, None
        self.generated: list[tuple[int, float | None]] = []
        self.sleeps = self.wakes = 0

    @property
    def generated_at(self) -> list[int]:
        return [v for v, _ in self.generated]

    def generate(self, prompts, n, sampling):
        self.generated.append((self.version, self.weights))
        out = []
        for p in prompts:
            group = []
            for j in range(n):
                rng = random.Random(self._seed_key(sampling.seed, p, j))
                toks = tuple(rng.randint(3, 200) for _ in range(rng.randint(self.min_len, self.max_len)))
                lps = tuple(self.logprob if self.logprob is not None else -0.5 - 0.01 * k for k in range(len(toks)))
                group.append(Completion(toks, lps, " ".join(map(str, toks)), "stop"))
            out.append(group)
        return out

    def _seed_key(self, seed, prompt, j) -> str:
        """What sample `j` of `prompt` is drawn from."""
        return f"{seed}-{prompt}-{j}"

    def update_weights(self, named_tensors):
        self.weights = checksum(list(named_tensors))
        self.version += 1

    def sleep(self):
        self.sleeps += 1

    def wake(self):
        self.wakes += 1

    def close(self): ...


def recording_engine() -> FakeEngine:
    """The engine of the RLModule tests: 4..14 tokens, engine logprob -5 per token."""
    return FakeEngine(min_len=4, max_len=14, logprob=-5.0)


class ParityReward:
    """1 when the sum of the response's token ids is even."""

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        return [RewardResult(float(sum(map(int, t.split())) % 2 == 0)) for t in responses]


class Record(Callback):
    """Logged metrics and the policy checksum after every training step."""

    def __init__(self) -> None:
        self.metrics, self.after_step = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.after_step.append(checksum(pl_module.policy.named_parameters()))


class WeightEngine(FakeEngine):
    """A FakeEngine whose samples depend on the weights it holds (checksum of the policy it was built from,
    then of every `update_weights`): pass counts tell weight versions apart. Build it with
    `engine=WeightEngine.factory` (a `(policy, tokenizer) -> engine` callable); `built` lists every engine."""

    built: list["WeightEngine"] = []

    def __init__(self, policy=None) -> None:
        super().__init__(min_len=3, max_len=10, logprob=-2.0)
        self.weights = checksum(policy.named_parameters()) if policy is not None else None
        self.syncs = 0

    @staticmethod
    def factory(policy, tokenizer) -> "WeightEngine":
        engine = WeightEngine(policy)
        WeightEngine.built.append(engine)
        return engine

    def update_weights(self, named_tensors):
        super().update_weights(named_tensors)
        self.syncs += 1

    def _seed_key(self, seed, prompt, j) -> str:
        return f"{seed}-{prompt}-{j}-{self.weights:.9e}"


class ListLogger(Logger):
    """Keeps what Lightning sends to loggers: `rows` of (step, {name: value})."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None: ...

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, {k: float(v) for k, v in metrics.items()}))


class Float64C3PO(RLModule):
    """RLModule with a float64 policy and reference (exactness tests)."""

    def configure_model(self):
        super().configure_model()
        self.policy.double()
        for ref in self._ref:
            ref.double()


def alternating_reward(rows, texts):
    """Rewards 0, 1, 0, 1, ... in sample order (every group has both)."""
    return [RewardResult(float(i % 2)) for i in range(len(texts))]


def write_sft_export(out: Path, preset: str = "bailing-tiny", sft_tokens: int = 200) -> Path:
    """An HF directory like an SFT export: the preset's policy + tokenizer and its SFT token count."""
    from ring_lightning.callbacks.token_efficiency import META_FILE
    from ring_lightning.models.loading import load_policy

    policy, tok = load_policy(preset)
    policy.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / META_FILE).write_text(json.dumps({"sft_loss_tokens_seen": sft_tokens}))
    return out
