"""The sandbox launcher: the first program run for every sandboxed command (see `sandbox.py`).

Run as ``python -I -S sandbox_init.py LAUNCH_FILE -- PROGRAM ARGS...`` (LAUNCH_FILE: a marshal'ed
dict) as the trainer's user, inside the namespaces that `sandbox.py` made with `unshare` (or
directly, under "process" isolation). It is trusted code and uses the standard library only:

1. (namespaces only) builds a minimal root filesystem in a fresh tmpfs: read-only bind mounts of
   the system directories and the interpreter prefix, a few device nodes, a new /proc for the new
   PID namespace, a private /tmp and the working directory /tmp/sandbox (a copy of the staged
   files), then `chroot`s into it. Nothing the program writes reaches the host's disk, and the
   trainer's files (data, checkpoints, code) are not visible;
2. closes every inherited descriptor except 0-2, the result channel (moved to fd 3) and the
   status pipe (close-on-exec);
3. sets resource limits (address space, CPU time, processes, file size, open files, no core);
4. drops every privilege: supplementary groups, gid and uid become the run's unprivileged id, and
   `PR_SET_NO_NEW_PRIVS` stops set-uid binaries from gaining any back;
5. `exec`s the program with a scrubbed environment.

It writes "+" to the status pipe when it starts and the error if any step fails; the pipe closes
on the exec, so the program can never write there, and the trainer tells "the sandbox could not
start" (an infrastructure error) apart from anything the program does.

With ``--killall`` instead of a program it drops to the sandbox uid and sends SIGKILL to every
process of that uid (the clean-up of "process" isolation, where no PID namespace does it).
"""

import ctypes
import marshal
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
DEV_NODES = ("null", "zero", "full", "random", "urandom")
STATUS_FD = None  # the status pipe (set by main)

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src, dst, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    if _libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount({src!r} -> {dst!r}, {fstype!r}) failed: {os.strerror(err)}")


def _bind(src, dst, flags):
    _mount(src, dst, None, MS_BIND | MS_REC)
    _mount(None, dst, None, MS_REMOUNT | MS_BIND | flags)


def build_root(cfg):
    """Make and enter the minimal root filesystem; returns the working directory inside it."""
    root = cfg["root_dir"]
    uid, gid = cfg["uid"], cfg["gid"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(cfg['tmpfs_mb'])}m,mode=755")
    for path in cfg["ro_paths"]:
        if not os.path.lexists(path):
            continue
        dst = root + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(path):  # merged-/usr systems: /bin -> usr/bin, ...
            os.symlink(os.readlink(path), dst)
            continue
        if os.path.isdir(path):
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "w").close()
        _bind(path, dst, MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/dev", exist_ok=True)
    for name in DEV_NODES:
        if os.path.exists("/dev/" + name):
            open(f"{root}/dev/{name}", "w").close()
            _bind("/dev/" + name, f"{root}/dev/{name}", MS_NOSUID | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        os.makedirs(root + d, exist_ok=True)
        os.chmod(root + d, 0o1777)
    work = root + cfg["inner_workdir"]
    src_top = cfg["stage_files"]
    for dirpath, _, filenames in os.walk(src_top):
        dst_dir = work + dirpath[len(src_top):]
        os.makedirs(dst_dir, exist_ok=True)
        os.chown(dst_dir, uid, gid)
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as src, open(os.path.join(dst_dir, name), "wb") as dst:
                dst.write(src.read())
            os.chown(os.path.join(dst_dir, name), uid, gid)
    os.chmod(work, 0o700)
    os.chroot(root)
    os.chdir(cfg["inner_workdir"])


def set_limits(cfg):
    def lim(res, soft, hard=None):
        resource.setrlimit(res, (soft, soft if hard is None else hard))

    lim(resource.RLIMIT_CORE, 0)
    mem = int(cfg["memory_mb"]) * 1024 * 1024
    lim(resource.RLIMIT_AS, mem)
    cpu = int(cfg["cpu_time_s"])
    lim(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL one second later
    lim(resource.RLIMIT_NPROC, int(cfg["max_processes"]))
    lim(resource.RLIMIT_FSIZE, int(cfg["max_file_bytes"]))
    lim(resource.RLIMIT_NOFILE, int(cfg["max_open_files"]))


def drop_privileges(cfg):
    if os.geteuid() != 0:
        return  # nothing to drop (non-root "process" isolation; see sandbox.py)
    uid, gid = cfg["uid"], cfg["gid"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError(f"could not drop privileges to uid {uid}")


def no_new_privs():
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")


def close_fds(keep):
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = 65536 if top in (resource.RLIM_INFINITY, -1) else min(int(top), 1 << 20)
    prev = 2
    for fd in sorted(k for k in keep if k > 2) + [top]:
        if fd > prev + 1:
            os.closerange(prev + 1, fd)
        prev = fd


def main(argv):
    with open(argv[1], "rb") as f:
        cfg = marshal.load(f)
    os.umask(0o022)
    if argv[2] == "--killall":
        drop_privileges(cfg)
        try:
            os.kill(-1, 9)  # SIGKILL to every process this uid may signal, except this one
        except ProcessLookupError:
            pass
        return 0
    global STATUS_FD
    STATUS_FD = cfg["status_fd"]
    os.write(STATUS_FD, b"+")  # "started"; anything after it is a set-up error
    program = argv[3:]
    if cfg["namespaces"]:
        build_root(cfg)
    else:
        os.chdir(cfg["stage_files"])
    if cfg.get("channel_fd") is not None and cfg["channel_fd"] != 3 and STATUS_FD == 3:
        STATUS_FD = os.dup(3)  # fd 3 is about to become the channel
    os.set_inheritable(STATUS_FD, False)  # closed by the exec itself: the trainer then reads EOF only
    keep = [STATUS_FD]
    if cfg.get("channel_fd") is not None:  # the result channel always reaches the program as fd 3
        if cfg["channel_fd"] != 3:
            os.dup2(cfg["channel_fd"], 3)
            os.close(cfg["channel_fd"])
        os.set_inheritable(3, True)
        keep.append(3)
    close_fds(keep)  # before RLIMIT_NOFILE shrinks, so descriptors above it are closed too
    set_limits(cfg)
    drop_privileges(cfg)
    no_new_privs()
    env = dict(cfg["env"])
    os.execvpe(program[0], program, env)
    return 127


def report_failure(argv, err):
    """Tell the trainer through the status pipe (which the sandboxed program never holds)."""
    msg = f"ring_lightning sandbox launcher failed: {type(err).__name__}: {err}".encode("utf-8", "replace")
    if STATUS_FD is None:
        sys.stderr.write(msg.decode() + "\n")
        return
    try:
        os.write(STATUS_FD, msg[:4000])
    except Exception:  # noqa: BLE001 - fall back to stderr
        sys.stderr.write(msg.decode() + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BaseException as e:  # noqa: BLE001 - the reason must reach the trainer
        if isinstance(e, SystemExit):
            raise
        report_failure(sys.argv, e)
        os._exit(126)
