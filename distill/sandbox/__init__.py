"""Run an untrusted program (a teacher's code) in a sandbox and report what happened.

`run(argv, files=..., stdin=..., limits=...)` writes `files` into a new empty working directory,
runs `argv` there and returns a `Result`: exit code, captured stdout/stderr (at most
`max_output_bytes` each; the program is killed when it writes more), whether and why it was
stopped, the wall time and which isolation was actually applied (`isolation`) or could not be
(`missing`, each with the reason). A crash, a timeout or a failed isolation step is a result,
never an exception or a hang of the caller. The working directory is removed afterwards.

How: a small launcher (launcher.py, run by file path by the same interpreter with `-I -S`,
standard library only) sets the program up and execs it, so nothing runs between fork and exec in
the caller, which may have threads. Isolation is tried step by step; whatever the kernel refuses
is recorded in `missing`. The launcher's Linux calls and file system view are in namespaces.py,
its rlimits in rlimits.py; this module is the caller's side: start, supervise, stop, clean up.

Every platform:
- its own session and process group, killed as a whole on timeout or too much output;
- an environment holding only PATH, LANG, LC_ALL, HOME and TMPDIR (both the working dir) and
  OMP/OPENBLAS/MKL_NUM_THREADS=1: nothing of the caller's environment;
- rlimits: CPU seconds (SIGXCPU, then SIGKILL a second later), address space, file size,
  open files 256, no core files; process count, see below.

Linux as root (this project's CI and containers), when the kernel allows namespaces (a
container with all capabilities: everything below applies):
- the program runs as an unused uid/gid (2**31 + a per-run number, no supplementary groups,
  no_new_privs, so setuid binaries cannot raise it again). A fresh uid per run matters: the
  kernel exempts uid 0 from RLIMIT_NPROC and counts processes per uid, so the process limit
  holds exactly and parallel runs neither share a count nor can signal each other;
- a network namespace whose only interface, loopback, is down: every address, 127.0.0.1
  included, is unreachable, and so are the host's abstract unix sockets;
- a mount namespace: every mount read-only; /tmp, /var/tmp, /dev/shm and /run replaced by empty
  directories of one private tmpfs of `scratch_mb` (host sockets there, e.g. Ray's, are out of
  reach), which also holds the working directory, so the disk it can fill is bounded too.
  Whatever of the interpreter lies in one of those directories (a venv in /tmp, the interpreter
  it links to) is bound back read-only at its own path, in directories made anew above it, and
  nothing else of the host's /tmp is visible. Where the interpreter sits below a directory
  others may not enter (pyenv in /root, mode 700), an empty read-only tmpfs covers that
  directory with just the interpreter bound back;
- a PID namespace with a fresh /proc: it sees only its own processes (not the caller's
  environment through /proc). Its process 1 is a small init, the program process 2 (process 1
  would not get its own SIGSEGV or the CPU limit's SIGXCPU); stopping a run kills the init, and
  with it, by the kernel, every process of the run, including any that left the process group;
- an IPC namespace (no System V shared memory with the host).
Without namespaces (e.g. a container whose seccomp profile forbids unshare) it still runs as
the unused uid and leftovers of that uid are killed after the run, but the network is reachable,
world-writable directories (/tmp, /dev/shm) are writable, and the interpreter must be readable
by any user.

Linux as an ordinary user: the same namespaces inside a new user namespace (uid mapped to
itself, so the program has no capabilities) where the kernel allows unprivileged user
namespaces; processes are then counted per namespace (kernel 5.14 and later). Without them:
only the every-platform list, RLIMIT_NPROC set to the user's current process count plus the
limit, the network reachable, the file system writable wherever the user may write, the
caller's environment readable in /proc/<pid>/environ (same uid), and a process that calls
setsid() can outlive the run. Do not run untrusted code that way.

macOS (and other POSIX systems; untested): the every-platform list, and the unused uid when run
as root; the kernel does not enforce RLIMIT_AS (no memory limit), RLIMIT_NPROC is set only as
root, and there is no network, mount or PID isolation. Do not run untrusted code there outside
a VM.

Windows is not supported.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Mapping, Sequence

# Relative: the package is standard library only and also runs copied elsewhere, as a top-level package.
from .result import Limits, Result, limit_hit

__all__ = ["Limits", "Result", "run"]

# Run by file path: with -I -S the package need not be importable in the child.
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
# The program's PATH; HOME and TMPDIR are its working directory.
_PATH = "/usr/local/bin:/usr/bin:/bin"
_UID_BASE = 2**31  # far above any real account; see _sandbox_uid
_READ_CHUNK = 65536
_LAUNCHER_ENV = {"PATH": _PATH, "LANG": "C.UTF-8"}
# One thread per numeric library: runs go in parallel, one per core, and threads count as processes.
_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(argv: Sequence[str], *, limits: Limits, files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None) -> Result:
    """Run argv (argv[0] is looked up in the sandbox's PATH) in a new working dir holding `files`."""
    workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
    try:
        for name, content in (files or {}).items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file name {name!r} must be a plain file name")
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return _supervise(list(argv), workdir, limits, data)
    finally:
        _remove(workdir)


_run_numbers = itertools.count()


def _sandbox_uid() -> int:
    # Unique per run within this process, and across processes unless their pids agree in the
    # low 15 bits while both are running; stays below 2**32 - 1 (which means "no uid").
    return _UID_BASE + ((os.getpid() & 0x7FFF) << 15 | next(_run_numbers) & 0x7FFF)


def _supervise(argv: list[str], workdir: str, limits: Limits, stdin: bytes | None) -> Result:
    uid = _sandbox_uid() if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    env = {"PATH": _PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
           **_THREADS}
    status_r, status_w = os.pipe()
    config = {"argv": argv, "env": env, "workdir": workdir, "uid": uid, "status_fd": status_w,
              "parent": os.getpid(), "limits": asdict(limits)}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _LAUNCHER, json.dumps(config)],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
            start_new_session=True, env=_LAUNCHER_ENV, cwd="/",
        )
    except OSError as e:
        os.close(status_r)
        return Result(None, "", "", False, f"sandbox error: cannot start the launcher: {e}",
                      time.monotonic() - start, (), ())
    finally:
        os.close(status_w)

    out, err, status = bytearray(), bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
    killed, truncated = None, False
    deadline = start + limits.timeout_seconds
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        if stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        sent = 0
        while sel.get_map() and killed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed = "timeout"
                break
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd not in buffers:  # stdin
                    try:
                        sent += os.write(fd, stdin[sent:sent + _READ_CHUNK])
                    except BlockingIOError:
                        continue
                    except OSError:  # it exited or closed stdin without reading it all
                        sent = len(stdin)
                    if sent >= len(stdin):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                data = os.read(fd, _READ_CHUNK)
                if not data:
                    sel.unregister(fd)
                    continue
                buf = buffers[fd]
                room = (limits.max_output_bytes if fd != status_r else 1 << 16) - len(buf)
                buf += data[:room]
                if len(data) > room:  # more than we keep: stop it rather than read on
                    killed, truncated = "output limit", True
                    break
    if killed is None:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:  # closed its output but kept running
            killed = "timeout"
    if killed is not None:
        _stop(proc, "pidns" in _read_status(bytes(status)).get("applied", ()))
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # stuck in the kernel; the zombie is reaped by Popen later
        pass
    wall = time.monotonic() - start
    _kill_group(proc.pid)  # anything it left in its group (namespaced runs have none)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            f.close()
    os.close(status_r)

    report = _read_status(bytes(status))
    isolation, missing = tuple(report.get("applied", ())), tuple(report.get("missing", ()))
    if uid is not None and "pidns" not in isolation:
        _reap_uid(uid)
    exit_code = proc.returncode
    if "exit" in report:
        exit_code = os.waitstatus_to_exitcode(report["exit"])
    elif killed is not None and "pidns" in isolation:  # we killed its namespace, launcher aside
        exit_code = -signal.SIGKILL
    stderr = err.decode(errors="replace")
    if killed is None and "error" in report:
        killed = f"sandbox error: {report['error']}"
    if killed is None:
        killed = limit_hit(exit_code, stderr)
    return Result(exit_code, out.decode(errors="replace"), stderr, killed == "timeout", killed,
                  wall, isolation, missing, truncated)


def _read_status(data: bytes) -> dict:
    """Merge the launcher's JSON lines; a torn last line (it was killed mid-write) is dropped."""
    report: dict = {}
    for line in data.splitlines():
        try:
            report.update(json.loads(line))
        except ValueError:
            continue
    return report


def _stop(proc: subprocess.Popen, namespaced: bool) -> None:
    """Kill the run; with a PID namespace, return once all its processes are gone."""
    if namespaced:  # the launcher kills the namespace's init and waits for it
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_uid(uid: int) -> None:
    """Without a PID namespace, kill whatever the run's uid left behind (setsid escapes the group)."""
    try:
        subprocess.run([sys.executable, "-I", "-S", _LAUNCHER, "--reap", str(uid)],
                       env=_LAUNCHER_ENV, cwd="/", timeout=10, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _remove(path: str) -> None:
    """Remove a directory the program may have made unreadable (chmod 000) inside."""

    def retry(func, failed, _exc):
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
