"""The test harness that runs *inside* the sandbox for `CodeReward` (trusted code, standard library only).

`reward.py` copies this file into the sandbox with the program and a marshal'ed config and runs
``python -I -S harness.py``. It reads a random token from stdin (then stdin is closed), runs the
tests in forked children and reports on the result channel (fd 3) as JSON lines carrying the token;
the trainer decides pass/fail. A child that runs untrusted code never holds the channel (in assert
mode not the token either).

* stdio: per case a child gets the input as stdin and a file as stdout (Python runs in the forked
  interpreter, other languages are `exec`ed); this process reports its exit status, output sizes
  and the SHA-256 of the normalised output (`normalize_output`; expected outputs never enter).
* assert (`harness_assert.py`, run in this namespace): a child forked before the token is read runs
  program and tests and reports on its own pipe; this process relays its checked records and alone
  writes ``end``. `normalize_output` is shared with the trainer.
"""

import builtins
import io
import marshal
import os
import sys
import time

CHANNEL_FD = 3
_JSON_ESCAPES = {i: "\\u%04x" % i for i in list(range(32)) + list(range(0xD800, 0xE000))}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def normalize_output(text):
    """Stdout as compared: trailing whitespace of every line and trailing empty lines removed."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def to_json(obj):
    """JSON text of None / bool / int / str / list / dict[str, ...] (no `json` import: startup cost)."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    t = type(obj)
    if t is int:
        return str(obj)
    if t is str:
        return '"' + obj.translate(_JSON_ESCAPES) + '"'
    if t is list or t is tuple:
        return "[" + ",".join(to_json(x) for x in obj) + "]"
    if t is dict:
        return "{" + ",".join(to_json(k) + ":" + to_json(v) for k, v in obj.items()) + "}"
    raise TypeError(f"cannot write {t.__name__} as JSON")


class Unencodable(Exception):
    pass


def encode_value(x, budget=None, depth=0):
    """Tagged, exact encoding of a built-in value; anything else (subclasses too) is refused."""
    if budget is None:
        budget = [200_000]
    budget[0] -= 1
    if budget[0] < 0 or depth > 100:
        raise Unencodable("value too large or too deeply nested")
    t = type(x)
    if x is None:
        return ["N"]
    if t is bool:
        return ["b", 1 if x else 0]
    if t is int:
        return ["i", hex(x)]
    if t is float:
        return ["f", float.hex(x)]
    if t is complex:
        return ["c", float.hex(x.real), float.hex(x.imag)]
    if t is str:
        return ["s", str.__str__(x)]
    if t is bytes:
        return ["y", bytes.hex(x)]
    tags = {list: "l", tuple: "t", set: "S", frozenset: "F"}
    if t in tags:
        return [tags[t], [encode_value(v, budget, depth + 1) for v in t.__iter__(x)]]
    coll = sys.modules.get("collections")
    dict_types = (dict,) + ((coll.OrderedDict, coll.defaultdict, coll.Counter) if coll else ())
    if t in dict_types:
        return ["d", [[encode_value(k, budget, depth + 1), encode_value(v, budget, depth + 1)]
                      for k, v in dict.items(x)]]
    raise Unencodable(f"a value of type {t.__module__}.{t.__qualname__} (only built-in types are compared)")


class Channel:
    """JSON records, one a line, on `fd`: with the `token` inside (the result channel) or after a
    `key` (the assert child's pipe)."""

    def __init__(self, token, fd=CHANNEL_FD, key=b""):
        self.token, self.fd, self.key = token, fd, key

    def send(self, **fields):
        if self.token is not None:
            fields["t"] = self.token
        self.write(to_json(fields) + "\n")

    def write(self, text):
        view = memoryview(self.key + text.encode("utf-8"))
        while view:
            view = view[os.write(self.fd, view):]


def _child_stdio(in_path, out_path, err_path, cfg, code):
    """In the forked child: become the program for one test case. Never returns."""
    rc = 1
    try:
        for fd, path, flags in ((0, in_path, os.O_RDONLY), (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        os.closerange(3, 4096)  # the result channel included
        import resource
        cpu = int(cfg["case_cpu_s"])
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        hard = cpu + 1 if hard == resource.RLIM_INFINITY else min(hard, cpu + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, hard), hard))
        lang = cfg["language"]
        if code is None:
            os.execvp(lang["run"][0], lang["run"])
        sys.stdin = io.open(0, "r", encoding="utf-8", closefd=False)
        sys.stdout = io.open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = io.open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
        sys.argv = [lang["source_file"]]
        rc = _exec_program(code, lang["source_file"])
    finally:
        os._exit(rc & 0xFF if rc >= 0 else 1)


def _exec_program(code, source_file):
    """Run `code` as __main__; the exit status. A pass (0) is set only after the program returned
    normally and its output was flushed: a crash whose traceback cannot be written stays 1."""
    status = 1
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins, "__file__": source_file})
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            try:
                print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - the status is already decided
                pass
    except BaseException:  # noqa: BLE001 - report like the interpreter does, without harness frames
        status = 1
        try:
            import traceback
            etype, err, tb = sys.exc_info()
            traceback.print_exception(etype, err, tb.tb_next)
        except BaseException:  # noqa: BLE001 - e.g. EFBIG on a full stderr: still a failure
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - output that could not be written fails the case
        status = status or 1
    return status


def _wait(pid, timeout_s):
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _kill_leftovers(cfg):
    """SIGKILL everything else this run started (when allowed) and reap what is ours to reap."""
    for _ in range(5000):
        if cfg["kill_all"]:
            try:
                os.kill(-1, 9)  # as PID 1 of the namespace (or as the run's own uid): all the others
            except ProcessLookupError:
                pass
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            return
        if not cfg["kill_all"]:
            return
        time.sleep(0.001)


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path, n=300):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_stdio(cfg, chan):
    import hashlib

    lang = cfg["language"]
    code = None
    if lang.get("compile"):
        pid = os.fork()
        if pid == 0:
            try:
                f = os.open(".compile.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, 1)
                os.dup2(f, 2)
                os.closerange(3, 4096)
                os.execvp(lang["compile"][0], lang["compile"])
            finally:
                os._exit(127)
        rc, timed_out = _wait(pid, cfg["compile_timeout_s"])
        _kill_leftovers(cfg)
        if rc != 0 or timed_out:
            chan.send(compile_error=("timed out; " if timed_out else f"exit {rc}; ") + _tail(".compile.err", 2000))
            return
    if not lang.get("run"):
        with open(lang["source_file"], "rb") as f:
            source = f.read()
        try:
            code = compile(source, lang["source_file"], "exec")
        except (SyntaxError, ValueError) as e:
            chan.send(compile_error=f"{type(e).__name__}: {e}")
            return
    cap = cfg["max_output_bytes"]
    import resource
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    fsize = float("inf") if fsize == resource.RLIM_INFINITY else fsize
    for i, text in enumerate(cfg["inputs"]):
        with open(".case.in", "wb") as f:
            f.write(text.encode("utf-8"))
        pid = os.fork()
        if pid == 0:
            _child_stdio(".case.in", ".case.out", ".case.err", cfg, code)
        rc, timed_out = _wait(pid, cfg["case_timeout_s"])
        _kill_leftovers(cfg)
        try:
            with open(".case.out", "rb") as f:
                raw = f.read(cap + 1)
        except OSError:
            raw = b""
        out = normalize_output(raw[:cap].decode("utf-8", "replace"))
        sizes = [_size(".case.out"), _size(".case.err")]
        # A stream that reached RLIMIT_FSIZE had a write refused (EFBIG): the run was cut short.
        over = len(raw) > cap or any(n >= fsize for n in sizes)
        chan.send(case=i, exit=rc, timeout=timed_out, over=over, out_bytes=sizes[0], err_bytes=sizes[1],
                  sha=hashlib.sha256(out.encode("utf-8")).hexdigest(), head=out[:200], err=_tail(".case.err"))
    chan.send(end=True)


def main():
    with open("harness_config.marshal", "rb") as f:
        cfg = marshal.load(f)
    child = None
    if cfg["mode"] == "assert":  # the assert side lives in its own file, run in this namespace
        with open("harness_assert.py", "rb") as f:
            exec(compile(f.read(), "harness_assert.py", "exec"), globals())
        child = globals()["start_assert"](cfg)
    token = b""
    while not token.endswith(b"\n"):
        chunk = os.read(0, 256)
        if not chunk:
            break
        token += chunk
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    chan = Channel(token.decode().strip())
    if cfg["mode"] == "stdio":
        run_stdio(cfg, chan)
    else:
        globals()["run_assert"](cfg, chan, child)


if __name__ == "__main__":
    main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)
