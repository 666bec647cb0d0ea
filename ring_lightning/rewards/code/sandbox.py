"""Run untrusted programs (model-written code) in a sandbox: namespaces, an unprivileged uid, limits.

Ring-lite (arXiv 2506.14731, the reinforcement-learning data section on code) rewards code by
executing the model's program against the problem's test cases in a sandbox; the report does not
describe the sandbox, so this is our design. It assumes the trainer runs as root, as it does on our
CI and GPU machines, and uses only `unshare` (util-linux) and the kernel:

* **Namespaces** (isolation="namespaces"): ``unshare --fork --pid --mount --net --ipc --uts
  --kill-child`` starts `sandbox_init.py`, which builds a minimal read-only root (system
  directories, the interpreter prefix, /dev/{null,zero,full,random,urandom}, a fresh /proc, a
  tmpfs /tmp) and chroots into it. The fresh network namespace has only a downed loopback: no
  connection leaves the sandbox, not even to 127.0.0.1 of the host. In the PID namespace the
  program is PID 1: when it exits or is killed, the kernel kills every process it spawned,
  double-forked daemons included. Files written go to a size-limited tmpfs that vanishes with it.
* **Unprivileged uid**: each run gets a fresh random uid/gid (`uid_range`, never one in
  /etc/passwd), no supplementary groups and `PR_SET_NO_NEW_PRIVS`. As a non-root uid it cannot
  signal the trainer (root), read root's files or environment (/proc/PID/environ), and
  RLIMIT_NPROC is enforced (the kernel does not enforce it for root).
* **Limits** (per process): RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC (processes + threads),
  RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps; a wall-clock timeout enforced by the trainer,
  which then kills the session (`killpg`) and with it the namespace; stdout / stderr / result
  channel are read with a byte cap (over the cap: killed, `output_truncated`).
* **Environment**: only PATH, HOME, TMPDIR, LANG, LC_ALL, PYTHONIOENCODING; the working
  directory (and HOME) is a private directory holding a copy of the given files, removed after.
* **Result channel**: with ``channel=True`` the program gets a pipe as fd 3 that the trainer reads
  separately from stdout, so harnesses can report results that printed text cannot mix with.

Fallback, isolation="process" (or "auto" when `unshare` is missing or not permitted, e.g. in a
container without CAP_SYS_ADMIN; a warning names the reason): same uid drop, limits, scrubbed
environment and private directory, but **no network isolation, no private filesystem view**
(/tmp, /var/tmp and /dev/shm stay writable; the trainer's world-readable files are readable) and
left-over processes are killed by signalling every process of the run's uid (``kill(-1)``). When
the trainer is not root there is no uid to drop to: the program can then do whatever the
trainer's user can (including killing it) — use only for trusted tests.

Limits not covered: memory is limited per process, so a run can hold up to `max_processes` x
`memory_mb` (no cgroup); CPU time is per process; the kernel is shared (no seccomp filter).
"""

from __future__ import annotations

import marshal
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ring_lightning.rewards.code.capped_io import communicate

Isolation = Literal["auto", "namespaces", "process"]
INIT_SCRIPT = Path(__file__).with_name("sandbox_init.py")
INNER_WORKDIR = "/tmp/sandbox"
DEFAULT_RO_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailableError(RuntimeError):
    """The requested isolation cannot be provided on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run.

    Attributes:
        returncode: exit status (negative: killed by that signal); None when the trainer killed it.
        stdout / stderr / channel: what the program wrote (each at most `max_output_bytes`).
        timed_out: the wall-clock limit was hit.
        output_truncated: an output stream went over its cap (the run was killed).
        stopped: the caller's `should_stop` ended the run early.
        wall_s: seconds from start to the end of the run.
        isolation: "namespaces" or "process".
        setup_error: why the sandbox could not be set up (the program never ran), else None.
    """

    returncode: int | None
    stdout: bytes
    stderr: bytes
    channel: bytes
    timed_out: bool
    output_truncated: bool
    stopped: bool
    wall_s: float
    isolation: str
    setup_error: str | None = None


_probe_lock = threading.Lock()
_probe_cache: dict[tuple, tuple[bool, str]] = {}
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


def _world_accessible(path: str) -> bool:
    """True if "others" may traverse every parent of `path` and execute it."""
    p = Path(os.path.realpath(path))
    try:
        if not p.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in p.parents)
    except OSError:
        return False


class Sandbox:
    """Runs commands in the sandbox described in the module docstring. Picklable; thread-safe.

    Args:
        timeout_s: default wall-clock limit of one run, in seconds.
        cpu_time_s: RLIMIT_CPU of each process, in seconds (rounded up).
        memory_mb: RLIMIT_AS of each process, in MiB.
        max_processes: RLIMIT_NPROC for the run's uid (processes and threads together).
        max_output_bytes: cap on each of stdout, stderr and the result channel.
        max_file_mb: RLIMIT_FSIZE: the largest file the program may write, in MiB.
        max_open_files: RLIMIT_NOFILE.
        tmpfs_mb: size of the private root filesystem (/tmp and the working directory), in MiB.
        isolation: "namespaces" (fail if unavailable), "process" (no namespaces; see module
            docstring for what that loses) or "auto" (namespaces if they work here, else
            "process" with a warning).
        python: interpreter used for the "{python}" placeholder in commands; "" = the base
            interpreter of the running Python (its prefix is mounted read-only in the sandbox).
            Under "process" isolation it must be executable by an unprivileged user.
        ro_paths: extra host paths (besides the system directories) made visible read-only.
        uid_range: [first, last) uids to draw the run's unprivileged uid from.
        workdir_root: where staging directories are made ("" = the system temp dir).
    """

    def __init__(self, timeout_s: float = 10.0, cpu_time_s: float = 10.0, memory_mb: int = 1024,
                 max_processes: int = 16, max_output_bytes: int = 1 << 20, max_file_mb: int = 16,
                 max_open_files: int = 64, tmpfs_mb: int = 128, isolation: Isolation = "auto",
                 python: str = "", ro_paths: Sequence[str] = (), uid_range: tuple[int, int] = (2_000_000, 2_100_000),
                 workdir_root: str = "") -> None:
        if isolation not in ("auto", "namespaces", "process"):
            raise ValueError(f"Sandbox isolation must be 'auto', 'namespaces' or 'process', got {isolation!r}")
        if uid_range[0] < 1000 or uid_range[1] <= uid_range[0] + 16:
            raise ValueError(f"Sandbox uid_range {uid_range} must be a wide range of unused uids >= 1000")
        self.timeout_s = float(timeout_s)
        self.cpu_time_s = float(cpu_time_s)
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.max_output_bytes = int(max_output_bytes)
        self.max_file_mb = int(max_file_mb)
        self.max_open_files = int(max_open_files)
        self.tmpfs_mb = int(tmpfs_mb)
        self.isolation_request = isolation
        self.python_request = python
        self.ro_paths = tuple(ro_paths)
        self.uid_range = (int(uid_range[0]), int(uid_range[1]))
        self.workdir_root = workdir_root

    # ---- configuration resolved once per process -------------------------------------------
    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def python(self, isolation: str | None = None) -> str:
        """The interpreter that "{python}" stands for, as a path valid inside the sandbox."""
        isolation = isolation or self.isolation
        if self.python_request:
            return self.python_request
        base = os.path.realpath(sys.executable)
        if isolation == "namespaces" or not self.is_root or _world_accessible(base):
            return base
        for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if os.path.exists(cand) and _world_accessible(cand):
                return cand
        raise SandboxUnavailableError(
            f"isolation='process' runs programs as an unprivileged uid, which cannot execute {base}; "
            "pass Sandbox(python=...) an interpreter every user may run (e.g. /usr/bin/python3)")

    def _interpreter_paths(self) -> list[str]:
        exe = self.python("namespaces")
        prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
        if not any(exe.startswith(p + os.sep) for p in prefixes):
            prefixes.add(str(Path(exe).parent.parent))
        return sorted(p for p in prefixes if p not in ("/", "/usr"))

    @property
    def isolation(self) -> str:
        """The isolation actually used: "namespaces" or "process"."""
        if self.isolation_request == "process":
            return "process"
        ok, why = self._probe_namespaces()
        if ok:
            return "namespaces"
        if self.isolation_request == "namespaces":
            raise SandboxUnavailableError(
                f"namespace sandbox unavailable: {why}. Run the trainer as root on a host (or a container "
                "with CAP_SYS_ADMIN) with util-linux `unshare`, or set isolation='process' and accept its limits")
        return "process"

    def _probe_namespaces(self) -> tuple[bool, str]:
        key = (self.ro_paths, self.uid_range, self.workdir_root)
        with _probe_lock:
            if key in _probe_cache:
                return _probe_cache[key]
            if not self.is_root:
                result = (False, "the trainer is not root")
            elif shutil.which("unshare") is None:
                result = (False, "`unshare` (util-linux) is not installed")
            else:
                prober = Sandbox(isolation="namespaces", ro_paths=self.ro_paths, uid_range=self.uid_range,
                                 workdir_root=self.workdir_root)  # default limits: probe the mechanism only
                probe = prober._run(["/bin/sh", "-c", "exit 0"], {}, b"", 30.0, False, None, "namespaces")
                result = (probe.returncode == 0 and probe.setup_error is None,
                          f"probe exited {probe.returncode}: {probe.setup_error or ''} "
                          f"{probe.stderr.decode(errors='replace').strip()[-400:]}")
            if not result[0] and self.isolation_request == "auto":
                warnings.warn(f"ring_lightning Sandbox: namespaces unavailable ({result[1]}); falling back to "
                              "isolation='process' (no network or filesystem isolation)", RuntimeWarning, stacklevel=3)
            _probe_cache[key] = result
            return result

    # ---- running ----------------------------------------------------------------------------
    def run(self, argv: Sequence[str], files: Mapping[str, str | bytes] | None = None, stdin: bytes = b"",
            timeout_s: float | None = None, channel: bool = False,
            should_stop: Callable[[bytes], bool] | None = None, cpu_time_s: float | None = None) -> SandboxResult:
        """Run `argv` ("{python}" is replaced by the sandbox interpreter) in a fresh sandbox.

        `files` (relative path -> content) are written into the working directory first; `stdin`
        is fed to the program; with `channel` it gets a result pipe as fd 3; `should_stop`, called
        with everything read from the channel so far, may end the run early by returning True.
        `timeout_s` / `cpu_time_s` override the configured limits for this run.
        """
        iso = self.isolation
        return self._run(argv, dict(files or {}), stdin, timeout_s or self.timeout_s, channel, should_stop, iso,
                         cpu_time_s or self.cpu_time_s)

    def _alloc_uid(self) -> int:
        lo, hi = self.uid_range
        with _uid_lock:
            for _ in range(1000):
                uid = random.randrange(lo, hi)
                if uid in _uids_in_use:
                    continue
                try:
                    pwd.getpwuid(uid)
                    continue
                except KeyError:
                    _uids_in_use.add(uid)
                    return uid
        raise RuntimeError(f"no free sandbox uid in {self.uid_range}")

    def _run(self, argv, files, stdin, timeout_s, channel, should_stop, iso, cpu_time_s=None) -> SandboxResult:
        start = time.monotonic()
        python = self.python(iso)
        argv = [python if a == "{python}" else a for a in argv]
        stage = Path(tempfile.mkdtemp(prefix="rl-sandbox-", dir=self.workdir_root or None))
        uid = self._alloc_uid() if self.is_root else os.getuid()
        chan_r = chan_w = status_r = None
        proc, out = None, None
        try:
            work = stage / "work"
            work.mkdir(mode=0o700)
            for rel, content in files.items():
                path = work / rel
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise ValueError(f"sandbox file name {rel!r} must be a relative path inside the sandbox")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            if iso == "namespaces":
                (stage / "root").mkdir(mode=0o700)
                home = INNER_WORKDIR
            else:
                home = str(work)
                os.chmod(stage, 0o711)  # the run's uid may pass through to work/, not list the stage
                if self.is_root:
                    for dirpath, _, filenames in os.walk(work):
                        os.chown(dirpath, uid, uid)
                        for f in filenames:
                            os.chown(os.path.join(dirpath, f), uid, uid)
            if channel:
                chan_r, chan_w = os.pipe()
            status_r, status_w = os.pipe()
            cfg = {
                "namespaces": iso == "namespaces", "uid": uid, "gid": uid, "root_dir": str(stage / "root"),
                "stage_files": str(work), "inner_workdir": INNER_WORKDIR, "tmpfs_mb": self.tmpfs_mb,
                "ro_paths": list(DEFAULT_RO_PATHS) + self._interpreter_paths() + list(self.ro_paths),
                "memory_mb": self.memory_mb, "cpu_time_s": max(1, int(-(-(cpu_time_s or self.cpu_time_s) // 1))),
                "max_processes": self.max_processes, "max_file_bytes": self.max_file_mb * 1024 * 1024,
                "max_open_files": self.max_open_files, "channel_fd": chan_w, "status_fd": status_w,
                "env": {"PATH": SANDBOX_PATH, "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                        "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
            }
            launch = stage / "launch.marshal"
            launch.write_bytes(marshal.dumps(cfg, 4))
            os.chmod(launch, 0o600)
            init = [os.path.realpath(sys.executable), "-I", "-S", str(INIT_SCRIPT), str(launch), "--", *argv]
            if iso == "namespaces":
                init = ["unshare", "--fork", "--pid", "--mount", "--net", "--ipc", "--uts", "--kill-child", *init]
            env = {"PATH": os.environ.get("PATH", SANDBOX_PATH), "LANG": "C.UTF-8"}
            try:
                proc = subprocess.Popen(init, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        pass_fds=(status_w,) + ((chan_w,) if chan_w is not None else ()),
                                        start_new_session=True, env=env, close_fds=True)
            finally:
                os.close(status_w)
            if chan_w is not None:
                os.close(chan_w)
                chan_w = None
            on_exit = (lambda: self._killall(stage, uid)) if iso == "process" and self.is_root else None
            out = communicate(proc, stdin, chan_r, start + timeout_s, self.max_output_bytes, should_stop, on_exit,
                              self._kill)
            chan_r = None  # closed by communicate()
            os.set_blocking(status_r, False)
            try:
                status = os.read(status_r, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                status = ""
            returncode = None if (out["timed_out"] or out["truncated"] or out["stopped"]) else proc.returncode
            # The launcher writes "+" when it starts and its error (if any) after; the program never can.
            if status.startswith("+"):
                status = status[1:]
            else:
                status = ("the sandbox launcher never started: "
                          + out["stderr"].decode("utf-8", "replace").strip()[-1000:])
            return SandboxResult(returncode=returncode, stdout=out["stdout"], stderr=out["stderr"],
                                 channel=out["channel"], timed_out=out["timed_out"],
                                 output_truncated=out["truncated"], stopped=out["stopped"],
                                 wall_s=time.monotonic() - start, isolation=iso, setup_error=status or None)
        finally:
            for fd in (chan_r, chan_w, status_r):
                if fd is not None:
                    os.close(fd)
            killed = proc is not None and proc.poll() is None
            if killed:
                self._kill(proc)
                proc.wait()
            if iso == "process" and self.is_root:
                self._killall(stage, uid)
            # SIGKILLed processes may still be exiting (large buffers, a loaded host): return only once
            # they are gone. A namespace whose init exited by itself is already empty (the kernel reaps
            # the namespace before the init's parent sees it exit), so that common case skips the scan.
            if self.is_root and (iso == "process" or killed or out is None
                                 or out["timed_out"] or out["truncated"] or out["stopped"]):
                _wait_uid_gone(uid)
            shutil.rmtree(stage, ignore_errors=True)
            with _uid_lock:
                _uids_in_use.discard(uid)

    def _kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare + the namespace's PID 1 -> the whole namespace
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass

    def _killall(self, stage: Path, uid: int) -> None:
        """"process" isolation: SIGKILL every process of the run's (unique) uid."""
        launch = stage / "launch.marshal"
        if launch.exists():
            subprocess.run([os.path.realpath(sys.executable), "-I", "-S", str(INIT_SCRIPT), str(launch), "--killall"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={"PATH": SANDBOX_PATH}, timeout=30)


def _uid_alive(uid: int) -> bool:
    """Whether a process (not a zombie) of `uid` is alive, from /proc (ids as this namespace sees them)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "0").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            return True
    return False


def _wait_uid_gone(uid: int, timeout_s: float = 5.0) -> None:
    """After the kill: wait (bounded) until no process of the run's private uid is alive, so that `run`
    returns only when the program and everything it started have exited (the kernel may take a moment
    to tear down a SIGKILLed process; a run's uid is never reused while its processes live)."""
    deadline = time.monotonic() + timeout_s
    while _uid_alive(uid) and time.monotonic() < deadline:
        time.sleep(0.005)
