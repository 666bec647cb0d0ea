"""The RL prompt stream: named prompt sources, weighted mixtures of them ("stages"), and a
deterministic, resumable draw order.

Ring-lite (arXiv 2506.14731, §3.2–3.3 and §4) trains RL in stages — reasoning RL on math / code /
logic, then general RL on instruction-following and preference data — and mixes domains by weight
inside a stage. The report gives no sampling procedure, so we chose:

* A *stage* is a named mixture ``{source name: weight}``. Every prompt of a step picks its source
  independently with probability proportional to the weights (a seeded `random.Random`), so a
  step's domain mix is the stage's mix in expectation. A callback can switch the stage at run time
  (`set_stage`); the switch takes effect at the next draw.
* Each source is read without replacement in a seeded random order; when a source is exhausted its
  next epoch starts with a new order (seed, source, epoch). Sources shared by two stages keep their
  position across a stage switch.
* The stream is global: every data-parallel rank draws the same prompts and keeps its own slice,
  so the saved position (stage, RNG state, per-source epoch and cursor, draws) resumes exactly on
  any number of ranks.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ring_lightning.rows import PromptRow


@dataclass
class PromptSource:
    """One source of RL prompts: a file or a built-in synthetic task (exactly one of the two).

    Args:
        path: a .jsonl / .parquet file or a local `datasets` directory (`data/prompts.py` schema).
        task: a built-in task of `data/synthetic/rl_tasks.py` ("arithmetic", "countdown", "mixed",
            "arithmetic_steps", "instruction").
        size: number of rows to generate for a built-in task.
        seed: generator seed of a built-in task.
        task_kwargs: extra knobs of the built-in task (e.g. `{"max_ops": 1}` for arithmetic_steps).
        domain: the domain of the file's rows that have no `domain` (e.g. "math"); None = every row names it.
        fields: {schema field: the file's column} for peers' files, dotted for nested columns, e.g.
            `{answer: solution}` or `{answer: reward_model.ground_truth}` (docs/data_formats.md).
    """

    path: str | None = None
    task: str | None = None
    size: int = 1000
    seed: int = 1
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    domain: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def load(self, name: str) -> list[PromptRow]:
        """The validated rows of this source (`name` is used in errors)."""
        if (self.path is None) == (self.task is None):
            raise ValueError(f"prompt source {name!r}: set exactly one of 'path' (a prompt file) or "
                             f"'task' (a built-in task), got path={self.path!r}, task={self.task!r}")
        if self.path is not None:
            from ring_lightning.data.prompts import load_prompts

            rows = load_prompts(self.path, domain=self.domain, fields=self.fields)
        else:
            from ring_lightning.data.synthetic.rl_tasks import rl_task_rows

            rows = rl_task_rows(self.task, self.size, self.seed, **self.task_kwargs)
        if not rows:
            raise ValueError(f"prompt source {name!r} ({self.path or self.task}) has no rows")
        return rows


class PromptStream:
    """A weighted, stage-switchable, resumable stream of prompt rows.

    Args:
        sources: source name -> its rows.
        stages: stage name -> {source name: weight}; weights must be >= 0 and not all 0.
        stage: the initial stage.
        seed: seed of the source choice and the per-source orders.
    """

    def __init__(self, sources: Mapping[str, Sequence[PromptRow]], stages: Mapping[str, Mapping[str, float]],
                 stage: str, seed: int = 0) -> None:
        if not sources:
            raise ValueError("PromptStream needs at least one prompt source")
        for sname, mix in stages.items():
            unknown = sorted(set(mix) - set(sources))
            if unknown:
                raise ValueError(f"stage {sname!r} names unknown prompt sources {unknown}; "
                                 f"known: {sorted(sources)}")
            if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"stage {sname!r}: weights must be >= 0 with a positive sum, got {dict(mix)}")
        self.sources = {k: list(v) for k, v in sources.items()}
        self.stages = {k: dict(v) for k, v in stages.items()}
        self.seed = seed
        self._rng = random.Random(f"ring-lightning-prompt-stream-{seed}")
        self._cursor = {name: [0, 0] for name in self.sources}  # name -> [epoch, position]
        self._orders: dict[str, tuple[int, list[int]]] = {}
        self.draws = 0
        self.stage = ""
        self.set_stage(stage)

    def set_stage(self, name: str) -> None:
        """Switch the mixture used by the next draws."""
        if name not in self.stages:
            raise KeyError(f"unknown RL stage {name!r}; configured stages: {sorted(self.stages)}")
        self.stage = name

    def _order(self, name: str, epoch: int) -> list[int]:
        cached = self._orders.get(name)
        if cached is None or cached[0] != epoch:
            order = list(range(len(self.sources[name])))
            random.Random(f"ring-lightning-source-{self.seed}-{name}-{epoch}").shuffle(order)
            self._orders[name] = cached = (epoch, order)
        return cached[1]

    def _next_from(self, name: str) -> PromptRow:
        epoch, pos = self._cursor[name]
        if pos >= len(self.sources[name]):
            epoch, pos = epoch + 1, 0
        row = self.sources[name][self._order(name, epoch)[pos]]
        self._cursor[name] = [epoch, pos + 1]
        return row

    def draw(self, n: int) -> list[PromptRow]:
        """The next `n` prompts of the current stage's mixture."""
        mix = self.stages[self.stage]
        names = [k for k, w in mix.items() if w > 0]
        weights = [mix[k] for k in names]
        picks = self._rng.choices(names, weights=weights, k=n)
        self.draws += n
        return [self._next_from(name) for name in picks]

    def state_dict(self) -> dict[str, Any]:
        """The stream position (plain Python values; safe in a Lightning checkpoint)."""
        version, internal, gauss = self._rng.getstate()
        return {"stage": self.stage, "rng": [version, list(internal), gauss], "draws": self.draws,
                "cursors": {k: list(v) for k, v in self._cursor.items()},
                "sizes": {k: len(v) for k, v in self.sources.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`; sources must have the sizes they had when it was saved."""
        for name, size in state["sizes"].items():
            if name not in self.sources:
                raise ValueError(f"checkpointed prompt source {name!r} is not configured any more; "
                                 f"configured: {sorted(self.sources)}")
            if len(self.sources[name]) != size:
                raise ValueError(f"prompt source {name!r} has {len(self.sources[name])} rows but had "
                                 f"{size} when the checkpoint was saved; resume with the same data")
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.draws = int(state["draws"])
        for name, cur in state["cursors"].items():
            self._cursor[name] = [int(cur[0]), int(cur[1])]
        self.set_stage(state["stage"])
