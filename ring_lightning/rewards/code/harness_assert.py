"""The assert side of the in-sandbox harness (`harness.py` runs this file in its own namespace).

A child, forked before the harness reads its token, runs the program as module ``solution`` and then
the tests `assert_probes.py` rewrote into ``__rl_probe__(id, operand, ...)`` calls. The child holds
neither the result channel nor the token: it writes records on its own pipe, each tagged with a key
it drew before the program ran. The parent (which never runs untrusted code) relays only tagged
records, wrapped as ``{"c": text}`` (the trainer accepts only the kinds the child writes), and
alone writes ``end``: after the child's ``done`` and a clean exit within the limit. A forged line
fails the run. What stays possible: a program that finds the key in its own process (frame
introspection) can send made-up operands for asserts whose both sides are computed in the sandbox;
literal sides never enter it.
"""

import builtins
import os
import sys
import time

if __name__ != "__main__":  # imported in the trainer (tests); in the sandbox these names are harness.py's
    from ring_lightning.rewards.code.harness import Channel, Unencodable, _kill_leftovers, _wait, encode_value


def start_assert(cfg):
    """Fork the child that runs program + tests before the token is read: (pid, pipe, key), or a
    compile error."""
    lang = cfg["language"]
    with open(lang["source_file"], "rb") as f:
        source = f.read()
    try:
        code = compile(source, lang["source_file"], "exec")
        tests = compile(cfg["tests"], "tests.py", "exec")
    except (SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    key = os.urandom(16).hex().encode() + b" "  # made before the program runs; tags the child's records
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)  # the token, still unread on the stdin pipe, is out of reach
            os.closerange(3, report_w)  # the result channel and every other inherited descriptor
            os.closerange(report_w + 1, 4096)
            _child_assert(code, tests, lang, cfg["max_events"], Channel(None, report_w, key))
            status = 0
        finally:
            os._exit(status)
    os.close(report_w)
    return pid, report_r, key


def _child_assert(code, tests, lang, max_events, report):
    snapshot = dict(builtins.__dict__)  # taken before the program can patch builtins
    enc, unenc, send = encode_value, Unencodable, report.send
    count = [0]

    def probe(aid, *values):
        count[0] += 1
        if count[0] > max_events:
            raise RuntimeError("too many assertions executed")
        try:
            send(a=aid, v=[enc(v) for v in values])
        except unenc as e:
            send(a=aid, e=str(e))

    module = type(sys)("solution")  # importable as `solution` by the tests
    module.__file__ = lang["source_file"]
    sys.modules["solution"] = module
    try:
        exec(code, module.__dict__)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: exiting early is a failure
        send(error=f"the program raised {type(e).__name__}: {str(e)[:300]}")
        return
    scope = {k: v for k, v in module.__dict__.items() if k not in snapshot}
    scope.update(__name__="__main__", __builtins__=snapshot, __rl_probe__=probe)
    try:
        exec(tests, scope)
    except BaseException as e:  # noqa: BLE001
        send(error=f"the tests raised {type(e).__name__}: {str(e)[:300]}")
        return
    send(done=True)


DONE = '{"done":true}'  # the child's last record, exactly as `to_json` writes it


def _relay(line, key, chan):
    """Pass a line of the child's pipe on to the result channel as ``{"c": record text}`` (the trainer
    checks the record's kind): the text, or None when the line does not carry the child's key."""
    if not line.startswith(key):
        return None
    text = line[len(key):].decode("utf-8", "replace")
    chan.send(c=text)
    return text


def _collect(pid, fd, key, chan, deadline, cap):
    """Relay the child's records until its pipe closes, it exits, or it forges one (a line without
    its key, or after ``done``): (done, forged, exit status or None)."""
    import select

    buf, done, forged = b"", False, False
    while not forged and time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, min(0.05, deadline - time.monotonic())))[0]:
            exited, status = os.waitpid(pid, os.WNOHANG)  # exited, its pipe kept open by a descendant
            if exited:
                return done, False, os.waitstatus_to_exitcode(status)
            continue
        chunk = os.read(fd, 1 << 16)
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            text = None if done else _relay(line, key, chan)
            forged, done = forged or text is None, done or text == DONE
        if not chunk:
            break
        forged = forged or len(buf) > cap
    return done, forged, None


def run_assert(cfg, chan, child):
    """Relay the child's records; write ``end`` only after its ``done`` and a clean exit in time."""
    if isinstance(child, str):
        return chan.send(compile_error=child)
    pid, fd, key = child
    limit = cfg["assert_timeout_s"]
    deadline = time.monotonic() + limit
    done, forged, rc = _collect(pid, fd, key, chan, deadline, 2 * cfg["max_output_bytes"] + (1 << 20))
    timed_out = False
    if rc is None:
        if forged:
            os.kill(pid, 9)
        rc, timed_out = _wait(pid, max(0.0, deadline - time.monotonic()))
    _kill_leftovers(cfg)
    os.close(fd)
    if forged:
        chan.send(error="the test run wrote a record its harness never writes (forged or corrupt)")
    elif timed_out or rc == -24:
        chan.send(error=f"time limit of the assert suite ({f'{limit:g} s wall' if timed_out else 'CPU'}) exceeded")
    elif rc != 0 or not done:
        chan.send(error=f"the test run exited with status {rc} before finishing" if rc else
                  "the test run exited without reporting that the tests finished")
    else:
        chan.send(end=True)
