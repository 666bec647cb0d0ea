"""A small process pool whose calls each have a hard timeout: a call that overruns kills its worker.

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot stop one running task. Why not
signal-based timeouts (math-verify's own `timeout_seconds` / `parsing_timeout`): `signal.alarm`
works only in the main thread (rewards run in the router's threads) and cannot interrupt a long
C-level computation such as a huge integer power, which is what pathological LaTeX
(``2^{2^{2^{2^{2^{2}}}}}``) turns into. Here each call runs in a worker process; the caller waits
on a pipe with a deadline and SIGKILLs the worker when it passes; a new worker is started for the
next call. Thread-safe: up to `num_workers` calls run at once, further callers wait for a worker.
Workers are started with the "spawn" method by default (safe beside CUDA and threads), lazily.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Callable
from typing import Any


class CallTimeout(TimeoutError):
    """The call did not finish within its timeout; its worker was killed."""


class WorkerDied(RuntimeError):
    """The worker process died during the call (e.g. out of memory)."""


def _worker_loop(conn, initializer) -> None:
    if initializer is not None:
        try:
            initializer()
        except BaseException as e:  # noqa: BLE001
            conn.send((False, f"worker initializer failed: {type(e).__name__}: {e}"))
            return
    conn.send((True, "ready"))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            out = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - the caller re-raises it
            out = (False, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self, ctx, initializer, startup_timeout_s: float) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, initializer), daemon=True)
        self.proc.start()
        child.close()
        try:
            ready = self.conn.recv() if self.conn.poll(startup_timeout_s) else (False, "no answer in time")
        except (EOFError, OSError):
            ready = (False, "worker exited during start-up")
        if not ready[0]:
            self.kill()
            raise WorkerDied(f"worker process did not start: {ready[1]}")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class TimeoutPool:
    """Run picklable module-level functions in worker processes with a per-call timeout.

    Args:
        num_workers: the most calls running at once (and worker processes alive).
        start_method: multiprocessing start method for workers ("spawn", "forkserver", "fork").
        initializer: picklable module-level function each worker runs once before its first call
            (e.g. heavy imports), not counted in any call's timeout.
        startup_timeout_s: how long a new worker may take to start and initialise.
    """

    def __init__(self, num_workers: int = 2, start_method: str = "spawn",
                 initializer: Callable[[], Any] | None = None, startup_timeout_s: float = 300.0) -> None:
        if num_workers < 1:
            raise ValueError(f"TimeoutPool num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.start_method = start_method
        self.initializer = initializer
        self.startup_timeout_s = startup_timeout_s
        self._ctx = mp.get_context(start_method)
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(num_workers):
            self._idle.put(None)  # a free slot without a started worker
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()
        self.restarts = 0
        self._generation = 0

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        """`fn(*args)` in a worker; raises CallTimeout, WorkerDied or RuntimeError (fn raised)."""
        worker = self._idle.get()
        try:
            if worker is None:
                worker = _Worker(self._ctx, self.initializer, self.startup_timeout_s)
                with self._lock:
                    self._all.add(worker)
            worker.conn.send((fn, args))
            if not worker.conn.poll(timeout_s):
                self._discard(worker)
                worker = None
                raise CallTimeout(f"{getattr(fn, '__name__', fn)} took longer than {timeout_s:g} s")
            try:
                ok, value = worker.conn.recv()
            except (EOFError, OSError):
                self._discard(worker)
                worker = None
                raise WorkerDied(f"worker process died while running {getattr(fn, '__name__', fn)}") from None
        except BaseException:
            if worker is not None and not worker.proc.is_alive():
                self._discard(worker)
                worker = None
            if worker is None:  # start the replacement in the background: this call returns now
                threading.Thread(target=self._replace, args=(self._generation,), daemon=True).start()
            else:
                self._idle.put(worker)
            raise
        self._idle.put(worker)
        if not ok:
            raise RuntimeError(value)
        return value

    def _replace(self, generation: int) -> None:
        """Start a worker for a freed slot (a failed start leaves an empty slot, retried on use)."""
        try:
            worker = _Worker(self._ctx, self.initializer, self.startup_timeout_s)
        except BaseException:  # noqa: BLE001 - the next call starts one itself and reports why
            worker = None
        with self._lock:
            if generation != self._generation:  # `close` refilled the slots meanwhile
                if worker is not None:
                    worker.kill()
                return
            if worker is not None:
                self._all.add(worker)
        self._idle.put(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            self.restarts += 1

    def close(self) -> None:
        """Kill every worker (idempotent). Calls made afterwards start new workers."""
        with self._lock:
            workers, self._all = list(self._all), set()
            self._generation += 1
        for w in workers:
            w.kill()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for _ in range(self.num_workers):
            self._idle.put(None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
