"""Reading a child's output pipes with byte caps and a deadline (used by `sandbox.py`).

A sandboxed program may print without end or hold its pipes open from a daemon; `communicate`
never buffers more than the cap per stream and never waits past the deadline.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable


def communicate(proc: subprocess.Popen, stdin: bytes, chan_r: int | None, deadline: float, cap: int,
                should_stop: Callable[[bytes], bool] | None, on_main_exit: Callable[[], None] | None,
                kill: Callable[[subprocess.Popen], None]) -> dict:
    """Feed stdin and read stdout / stderr / the channel until EOF, the deadline, a cap or `should_stop`.

    Each stream keeps at most `cap` bytes; more sets "truncated" and ends the run. `should_stop`
    gets everything read from the channel so far. `on_main_exit` runs once when the main process
    has exited while its outputs are still open (left-over children hold them). On a timeout, cap
    or stop the process is ended with `kill`. Closes the pipes and `chan_r`. Returns
    {"stdout", "stderr", "channel": bytes, "timed_out", "truncated", "stopped": bool}.
    """
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "channel": bytearray()}
    sel = selectors.DefaultSelector()
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    if chan_r is not None:
        names[chan_r] = "channel"
    for fd in names:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    timed_out = truncated = stopped = False
    open_reads = len(names)
    try:
        while open_reads:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        n = os.write(fd, pending[:65536])
                        pending = pending[n:]
                    except (BrokenPipeError, BlockingIOError) as e:
                        if isinstance(e, BrokenPipeError):
                            pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    open_reads -= 1
                    continue
                buf = bufs[names[fd]]
                room = cap - len(buf)
                buf += data[:max(room, 0)]
                if len(data) > room:
                    truncated = True
                if names[fd] == "channel" and should_stop is not None and should_stop(bytes(buf)):
                    stopped = True
            if truncated or stopped:
                break
            if on_main_exit is not None and open_reads and proc.poll() is not None:
                on_main_exit()
                on_main_exit = None
        if not (timed_out or truncated or stopped):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or truncated or stopped:
            kill(proc)
            proc.wait()
    finally:
        sel.close()
        for f in (proc.stdout, proc.stderr, proc.stdin):
            try:
                f.close()
            except OSError:
                pass
        if chan_r is not None:
            os.close(chan_r)
    return {"stdout": bytes(bufs["stdout"]), "stderr": bytes(bufs["stderr"]),
            "channel": bytes(bufs["channel"]), "timed_out": timed_out, "truncated": truncated,
            "stopped": stopped}
