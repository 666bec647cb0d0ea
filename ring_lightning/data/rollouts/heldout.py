"""Held-out verifiable prompt sets of the RL data module: loading, validation, loaders and evaluators.

Ring-lite (arXiv 2506.14731, §5) reports pass@1 averaged over several samples per problem on
verifiable benchmarks, scored with the same verifiers as the RL rewards; `eval/passk.py` adds the
unbiased pass@k. `RolloutDataModule` keeps its held-out sets here: `val_sources` (validated during
`fit` every `trainer.val_check_interval` steps, and by `python -m ring_lightning validate`) and
`test_sources` (`... test`), each in the schema of the training `sources` (files or built-in tasks).

Choices where the report is silent:

* Held-out rows are checked by the same reward router as the training rows of the current stage
  (`validate(row, where)`), so a row no verifier can score fails at setup, naming file and row.
* The held-out set is scored by the reward of the stage training is in when it is evaluated (the
  stage restored from the checkpoint for `validate` / `test`), i.e. "the same rewards as training".
* A held-out prompt whose text is also a training prompt is reported with a warning at `fit` setup
  (not dropped: `validate` / `test` do not load the training sources, and the sets must not differ).
* Sampling uses its own settings (`EvalSpec`) and fixed seeds (`eval/rollout_eval.py`), so every
  evaluation of every checkpoint sees the same sampling noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.rows import PromptRow
from ring_lightning.eval.rollout_eval import RolloutEvaluator, eval_dataloader
from ring_lightning.rewards.base import Reward

SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvalSpec:
    """How held-out prompts are sampled and scored (see `RolloutDataModule`'s `eval_*` arguments).

    Args:
        samples_per_prompt: n, samples per problem (pass@1 is the mean over them).
        k: the k values of the unbiased pass@k (1 is always reported); each <= samples_per_prompt.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        max_tokens: maximum response length in tokens.
        batch_size: held-out prompts per validation / test step (per rank).
        seed: base sampling seed.
    """

    samples_per_prompt: int = 4
    k: tuple[int, ...] = (1, 4)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.batch_size < 1:
            raise ValueError(f"eval_samples_per_prompt and eval_batch_size must be >= 1, got "
                             f"{self.samples_per_prompt}, {self.batch_size}")
        if not self.k or min(self.k) < 1 or max(self.k) > self.samples_per_prompt:
            raise ValueError(f"eval_k={list(self.k)}: every k must be in 1..eval_samples_per_prompt="
                             f"{self.samples_per_prompt} (pass@k needs at least k samples per problem)")


def source_label(src: PromptSource) -> str:
    """Where a source's rows come from, for error messages."""
    return src.path or f"built-in task {src.task!r}"


def validate_rows(rows: Sequence[PromptRow], src: PromptSource, name: str, context: str, reward: Reward | None) -> None:
    """Check that `reward` can score every row (its optional `validate(row, where)`); errors name the row."""
    validate = getattr(reward, "validate", None)
    if validate is None:
        return
    for i, row in enumerate(rows):
        validate(row, f"{source_label(src)} row {i} (source {name!r}, {context})")


class HeldOutSets:
    """The val / test prompt sets of a `RolloutDataModule`.

    Args:
        sources: split ("val" / "test") -> {name: PromptSource}; a missing or empty split has no set.
        spec: sampling and scoring settings.
    """

    def __init__(self, sources: Mapping[str, Mapping[str, PromptSource] | None], spec: EvalSpec) -> None:
        unknown = sorted(set(sources) - set(SPLITS))
        if unknown:
            raise ValueError(f"held-out splits must be {SPLITS}, got {unknown}")
        self.sources = {s: {k: v if isinstance(v, PromptSource) else PromptSource(**v) for k, v in (srcs or {}).items()}
                        for s, srcs in sources.items()}
        self.spec = spec
        self.rows: dict[str, list[PromptRow]] = {}

    def configured(self, split: str) -> bool:
        return bool(self.sources.get(split))

    def load(self, split: str, reward: Reward | None, stage: str) -> None:
        """Load and validate `split`'s rows once (no-op when the split has no sources)."""
        if split in self.rows or not self.configured(split):
            return
        rows: list[PromptRow] = []
        for name, src in self.sources[split].items():
            loaded = src.load(name)
            validate_rows(loaded, src, name, f"{split} set, stage {stage!r}", reward)
            rows.extend(loaded)
        self.rows[split] = rows

    def overlap(self, split: str, train_rows: Sequence[PromptRow]) -> list[str]:
        """Ids of `split` rows whose prompt text is also a training prompt (not held out)."""
        seen = {r.prompt_text for r in train_rows}
        return [r.id for r in self.rows.get(split, []) if r.prompt_text in seen]

    def dataloader(self, split: str, trainer_fn: str | None) -> DataLoader | list:
        """The split's row batches; [] (no validation) when it has no sources during `fit`, an error
        naming the argument to set when `validate` / `test` was asked for explicitly."""
        if split not in self.rows:
            if trainer_fn in ("validate", "test"):
                raise ValueError(f"`{trainer_fn}` needs held-out prompts: set data.init_args.{split}_sources "
                                 "(same schema as `sources`: prompt files or built-in tasks)")
            return []
        return eval_dataloader(self.rows[split], self.spec.batch_size)

    def evaluator(self) -> RolloutEvaluator:
        """A fresh evaluator (torchmetrics PassAtK per domain) for one validation / test epoch."""
        s = self.spec
        return RolloutEvaluator(k=s.k, samples_per_prompt=s.samples_per_prompt, temperature=s.temperature,
                                top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
