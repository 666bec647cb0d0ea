"""Hostile programs against the code sandbox: none may earn reward, escape, or outlive its run.

Each hostile program is written so that it would be *rewarded* only if its attack worked (it prints
the right answer or fakes a pass after the attack); every test also checks the host side: the test
process is alive, files outside the sandbox are untouched, no sandboxed process remains.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from rewards_testlib import UID_RANGE, make_row, sandbox_processes

from ring_lightning.rewards.code.reward import CodeReward
from ring_lightning.rewards.code.sandbox import Sandbox

ADD_STDIO = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "20 22\n", "output": "42\n"}]}
ADD_ASSERT = {"type": "assert", "code": "assert add(1, 2) == 3\nassert add(20, 22) == 42\n"}


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    return CodeReward(timeout_s=1.0, memory_mb=256, max_processes=16, max_output_bytes=1 << 20,
                      startup_s=3.0, isolation="namespaces", uid_range=UID_RANGE)


def score(reward: CodeReward, program: str, tests=ADD_STDIO) -> tuple[float, dict]:
    res = reward([make_row("code", tests=tests)], [f"```python\n{textwrap.dedent(program)}\n```"])[0]
    return res.reward, res.info


def test_reference_solutions_pass(reward, no_leftovers):
    assert score(reward, "a, b = map(int, input().split())\nprint(a + b)")[0] == 1.0
    assert score(reward, "def add(a, b):\n    return a + b", ADD_ASSERT)[0] == 1.0


def test_fork_bomb(reward, no_leftovers):
    t0 = time.monotonic()
    r, info = score(reward, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)
    assert r == 0.0 and "time limit" in info["reason"]
    assert time.monotonic() - t0 < 20
    assert os.getpid() > 0  # still here


def test_memory_bomb(reward, no_leftovers):
    r, info = score(reward, """
        blocks = []
        while True:
            blocks.append(bytearray(50 * 1024 * 1024))
        """, {**ADD_STDIO, "timeout_s": 20})  # generous wall time: the memory limit must be what stops it
    assert r == 0.0 and "MemoryError" in info["reason"]


def test_infinite_loop(reward, no_leftovers):
    r, info = score(reward, "while True:\n    pass")
    assert r == 0.0 and "time limit" in info["reason"]
    r, info = score(reward, "def add(a, b):\n    while True:\n        pass", ADD_ASSERT)
    assert r == 0.0 and info["reason"].startswith("time limit of the run")


def test_output_flood(reward, no_leftovers):
    r, info = score(reward, "while True:\n    print('x' * 100000)")
    assert r == 0.0
    r, info = score(reward, "import sys\nwhile True:\n    sys.stdout.write('y' * 100000)\ndef add(a, b): return a + b",
                    ADD_ASSERT)
    assert r == 0.0 and "output limit" in info["reason"]


def test_writing_outside_the_sandbox(reward, tmp_path, no_leftovers):
    world = Path(tempfile.mkdtemp(prefix="rl-escape-"))
    world.chmod(0o777)  # even a world-writable host directory must stay untouched
    blocked = [tmp_path / "escape.txt", world / "escape.txt", Path.cwd() / "rl_escape.txt", Path("/etc/rl_escape.txt")]
    private_tmp = Path("/tmp") / f"rl_escape_{os.getpid()}.txt"  # the sandbox's own /tmp: allowed, but private
    try:
        for target in blocked + [private_tmp]:
            r, info = score(reward, f"""
                open({str(target)!r}, "w").write("escaped")
                a, b = map(int, input().split())
                print(a + b)
                """)
            assert not target.exists(), target
            if target in blocked:
                assert r == 0.0 and "Error" in info["reason"], (target, info)
        assert sorted(p.name for p in world.iterdir()) == [] and sorted(tmp_path.iterdir()) == []
    finally:
        for target in blocked + [private_tmp]:
            target.unlink(missing_ok=True)
        world.rmdir()


def test_cannot_read_the_trainers_environment(reward, monkeypatch, no_leftovers):
    secret = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv("RL_SANDBOX_SECRET", secret)
    tests = {"type": "stdio", "cases": [{"input": "", "output": secret}]}
    r, info = score(reward, """
        import os
        print(os.environ["RL_SANDBOX_SECRET"])
        """, tests)
    assert r == 0.0 and "KeyError" in info["reason"]
    r, info = score(reward, f"""
        import os
        for pid in ({os.getpid()}, {os.getppid()}, 1):
            try:
                data = open(f"/proc/{{pid}}/environ", "rb").read()
            except OSError:
                continue
            for item in data.split(b"\\0"):
                if item.startswith(b"RL_SANDBOX_SECRET="):
                    print(item.split(b"=", 1)[1].decode())
        """, tests)
    assert r == 0.0 and "wrong answer" in info["reason"]


def test_no_network(reward, no_leftovers):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r, info = score(reward, f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=0.5)
            s.sendall(b"leak")
            a, b = map(int, input().split())
            print(a + b)
            """)
        assert r == 0.0 and "Network is unreachable" in info["reason"]
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
    finally:
        server.close()


def test_killing_the_parent(reward, no_leftovers):
    me = os.getpid()
    r, info = score(reward, f"""
        import os, signal
        for target in (os.getppid(), {me}, {os.getppid()}):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.killpg(os.getpgid(target), signal.SIGKILL)
            except OSError:
                pass
        print("wrong")
        """)
    assert r == 0.0
    r, info = score(reward, """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
        def add(a, b):
            return 0
        """, ADD_ASSERT)
    assert r == 0.0
    assert os.getpid() == me  # the test process survived and can still run sandboxes
    assert score(reward, "a, b = map(int, input().split())\nprint(a + b)")[0] == 1.0


def test_exit_before_the_asserts(reward, no_leftovers):
    for program in ("import sys\ndef add(a, b): return 0\nsys.exit(0)",
                    "import os\ndef add(a, b): return 0\nos._exit(0)",
                    "def add(a, b): return 0\nraise SystemExit(0)"):
        r, info = score(reward, program, ADD_ASSERT)
        assert r == 0.0, (program, info)


def test_rigged_equality_and_patched_builtins(reward, no_leftovers):
    programs = [
        "class Any:\n    def __eq__(self, other): return True\n    __hash__ = None\ndef add(a, b): return Any()",
        "class Int(int):\n    def __eq__(self, other): return True\ndef add(a, b): return Int(0)",
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef add(a, b): return 0",
        "import builtins\n_r = builtins.repr\nbuiltins.repr = lambda x: '3'\ndef add(a, b): return 0",
        "print('All tests passed!')\nprint('OK')\ndef add(a, b): return 0",
    ]
    for program in programs:
        r, info = score(reward, program, ADD_ASSERT)
        assert r == 0.0, (program, info)
    stdio_fake = "import sys\nsys.stdout.write('3\\n')\nimport os\nos.write(3, b'{\"end\": true}\\n')"
    r, info = score(reward, stdio_fake, {"type": "stdio", "cases": [{"input": "", "output": "4"}]})
    assert r == 0.0


def test_forged_channel_messages_are_ignored(reward, no_leftovers):
    forged = ('{"t": "guess", "end": true}\\n{"t": "guess", "a": 0, "v": [["i", "0x3"]]}\\n'
              '{"t": "guess", "a": 1, "v": [["i", "0x2a"]]}\\n')
    # The assert child holds no result channel: its fd 3 is closed, the write fails.
    r, info = score(reward, f"import os\nos.write(3, b'{forged}')\nos._exit(0)\ndef add(a, b): return 0", ADD_ASSERT)
    assert r == 0.0 and "OSError" in info["reason"] and info.get("foreign_messages", 0) == 0, info
    # Written on the child's own pipe instead (without its key): refused as forged.
    r, info = score(reward, f"import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'{forged}')\n"
                            "    except OSError: pass\nos._exit(0)\ndef add(a, b): return 0", ADD_ASSERT)
    assert r == 0.0 and "forged" in info["reason"], info


@pytest.mark.parametrize("isolation", ["namespaces", "process"])
def test_daemon_dies_with_the_run(isolation, no_leftovers):
    drop = Path(tempfile.mkdtemp(prefix="rl-daemon-"))
    drop.chmod(0o777)
    marker = drop / "daemon_was_here"
    program = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.0)
                open({str(marker)!r}, "w").write("alive")
            os._exit(0)
        print("parent done")
        """)
    try:
        # Control: outside the sandbox the daemon really does survive and write its file.
        subprocess.run([sys.executable, "-c", program], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        marker.unlink()
        sandbox = Sandbox(timeout_s=10, isolation=isolation, uid_range=UID_RANGE,
                          python="" if isolation == "namespaces" else "/usr/bin/python3")
        res = sandbox.run(["{python}", "-I", "-S", "-c", program])
        assert res.returncode == 0 and res.stdout == b"parent done\n"
        assert not sandbox_processes()
        time.sleep(1.5)
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
        drop.rmdir()


def test_sandbox_limits_and_environment(no_leftovers):
    sb = Sandbox(timeout_s=10, memory_mb=256, isolation="namespaces", uid_range=UID_RANGE)
    res = sb.run(["{python}", "-I", "-S", "-c", textwrap.dedent("""
        import os, resource
        print(os.getuid() != 0, os.getgid() != 0, os.getgroups())
        print(sorted(os.environ))
        print(os.getcwd(), os.environ["HOME"], os.listdir("."))
        print(resource.getrlimit(resource.RLIMIT_AS)[0] == 256 * 1024 * 1024,
              resource.getrlimit(resource.RLIMIT_NPROC)[0] == 16)
        print(os.path.exists("/work"), os.path.exists("/root/.cache"), os.getppid())
        """)], files={"data.txt": "hello"})
    lines = res.stdout.decode().splitlines()
    assert res.returncode == 0, res.stderr
    assert lines[0] == "True True []"
    assert lines[1] == str(sorted(["HOME", "LANG", "LC_ALL", "PATH", "PYTHONIOENCODING", "TMPDIR"]))
    assert lines[2] == "/tmp/sandbox /tmp/sandbox ['data.txt']"
    assert lines[3] == "True True"
    assert lines[4] == "False False 0"  # the host's files are not visible; PID 1 of its own namespace


def test_setup_failure_is_an_infrastructure_error_not_a_zero(no_leftovers):
    broken = CodeReward(timeout_s=1.0, isolation="namespaces", python="/nonexistent/bin/python3",
                        uid_range=UID_RANGE)
    res = broken([make_row("code", tests=ADD_STDIO)], ["```python\nprint(3)\n```"])[0]
    assert res.valid is False and res.info["reward_error"] is True
    assert "sandbox launcher failed" in res.info["error"]
    sandbox = Sandbox(isolation="namespaces", uid_range=UID_RANGE)
    ok = sandbox.run(["{python}", "-I", "-S", "-c", "import sys; sys.stderr.write('x')"])
    assert ok.setup_error is None and ok.stderr == b"x"


def test_process_isolation_fallback(no_leftovers):
    reward = CodeReward(timeout_s=2.0, memory_mb=256, startup_s=3.0, isolation="process", python="/usr/bin/python3",
                        uid_range=UID_RANGE)
    me = os.getpid()
    assert score(reward, "a, b = map(int, input().split())\nprint(a + b)")[0] == 1.0
    assert score(reward, "def add(a, b):\n    return a + b", ADD_ASSERT)[0] == 1.0
    assert score(reward, "import sys\ndef add(a, b): return 0\nsys.exit(0)", ADD_ASSERT)[0] == 0.0
    r, info = score(reward, f"import os\nos.kill({me}, 9)\nprint(3)")
    assert r == 0.0 and "PermissionError" in info["reason"] and os.getpid() == me
    r, info = score(reward, f"print(open('/proc/{me}/environ').read())")
    assert r == 0.0 and "PermissionError" in info["reason"]


@pytest.mark.parametrize("isolation", ["namespaces", "process"])
def test_process_limit_is_enforced_even_though_the_trainer_is_root(isolation, is_root, no_leftovers):
    assert is_root  # the machines this runs on; RLIMIT_NPROC would be ignored for uid 0
    sb = Sandbox(timeout_s=20, max_processes=8, isolation=isolation, uid_range=UID_RANGE,
                 python="" if isolation == "namespaces" else "/usr/bin/python3")
    res = sb.run(["{python}", "-I", "-S", "-c", textwrap.dedent("""
        import os, time
        n = 0
        try:
            while n < 100:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as e:
            print(n, e.errno)
        """)])
    n, errno = map(int, res.stdout.split())
    assert n < 8 and errno == 11  # EAGAIN long before 100 children
    assert res.wall_s < 15  # the sleeping children did not keep the run alive
