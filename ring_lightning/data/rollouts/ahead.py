"""Sampling rollout batches ahead of training in a background thread (RolloutDataModule's
`max_staleness >= 1`).

Ring-lite (arXiv 2506.14731, §3.2) trains on-policy; overlapping generation with training is a
systems option the report does not discuss. Here one worker thread calls `sample(on_draw)` whenever
fewer than `depth` batches are queued. The engine is shared with the weight sync, which takes the
data module's lock, so a batch is generated entirely with one weight version and a sync waits for
an in-flight generation: a batch consumed at step t was sampled at most `depth` updates earlier.

Resume bookkeeping: `on_draw(state)` is called (by the sample function, under its own lock) with the
prompt-stream position *before* the batch's prompts were drawn; those positions stay recorded until
the batch is consumed, so `oldest_state()` is where a resumed run must restart for no prompt to be
skipped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class AheadSampler:
    """A background producer of up to `depth` sampled batches.

    Args:
        sample: produces one batch; receives `on_draw`, to call with the stream state before drawing.
        depth: batches kept ready (the maximum staleness in optimizer steps), >= 1.
    """

    def __init__(self, sample: Callable[[Callable[[dict[str, Any]], None]], Any], depth: int) -> None:
        if depth < 1:
            raise ValueError(f"AheadSampler depth must be >= 1, got {depth}")
        self.sample, self.depth = sample, depth
        self._queue: deque[Any] = deque()
        self._states: deque[dict[str, Any]] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="rollout-ahead", daemon=True)
        self._thread.start()

    def _record(self, state: dict[str, Any]) -> None:
        with self._cv:
            self._states.append(state)

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._stop or len(self._queue) < self.depth)
                    if self._stop:
                        return
                batch = self.sample(self._record)
                with self._cv:
                    self._queue.append(batch)
                    self._cv.notify_all()
        except BaseException as e:  # surfaced in the training thread by `next`
            with self._cv:
                self._error = e
                self._cv.notify_all()

    @property
    def queued(self) -> int:
        """Batches ready now."""
        with self._cv:
            return len(self._queue)

    def next(self) -> Any:
        """The oldest ready batch (waits for the worker); re-raises a worker failure."""
        with self._cv:
            self._cv.wait_for(lambda: self._queue or self._error is not None)
            if self._error is not None:
                raise RuntimeError("the background rollout sampler failed") from self._error
            batch = self._queue.popleft()
            self._states.popleft()
            self._cv.notify_all()
            return batch

    def oldest_state(self) -> dict[str, Any] | None:
        """Stream position before the oldest drawn-but-unconsumed batch (None when there is none)."""
        with self._cv:
            return self._states[0] if self._states else None

    def stop(self) -> None:
        """Stop the worker (after its in-flight batch) and drop every queued batch."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()
        self._queue.clear()
        self._states.clear()
