"""Run an untrusted program (a teacher's code) in a sandbox and report what happened.

`run(argv, files=..., stdin=..., limits=...)` writes `files` into a new empty working directory,
runs `argv` there and returns a `Result`: exit code, captured stdout/stderr (at most
`max_output_bytes` each; the program is killed when it writes more), whether and why it was
stopped, the wall time and which isolation was actually applied (`isolation`) or could not be
(`missing`, each with the reason). A crash, a timeout or a failed isolation step is a result,
never an exception or a hang of the caller. The working directory is removed afterwards.

How: a small launcher (this file run as a script by the same interpreter, about 30 ms) sets the
program up and execs it, so nothing runs between fork and exec in the caller, which may have
threads. Isolation is tried step by step; whatever the kernel refuses is recorded in `missing`.

Every platform:
- its own session and process group, killed as a whole on timeout or too much output;
- an environment holding only PATH, LANG, LC_ALL, HOME and TMPDIR (both the working dir) and
  OMP/OPENBLAS/MKL_NUM_THREADS=1: nothing of the caller's environment;
- rlimits: CPU seconds (SIGXCPU, then SIGKILL a second later), address space, file size,
  open files 256, no core files; process count, see below.

Linux as root (this project's CI and containers), when the kernel allows namespaces (checked
on kernel 6.18 in a container with all capabilities: everything below applies):
- the program runs as an unused uid/gid (2**31 + a per-run number, no supplementary groups,
  no_new_privs, so setuid binaries cannot raise it again). A fresh uid per run matters: the
  kernel exempts uid 0 from RLIMIT_NPROC and counts processes per uid, so the process limit
  holds exactly and parallel runs neither share a count nor can signal each other;
- a network namespace whose only interface, loopback, is down: every address, 127.0.0.1
  included, is unreachable, and so are the host's abstract unix sockets;
- a mount namespace: every mount read-only; /tmp, /var/tmp, /dev/shm and /run replaced by empty
  directories of one private tmpfs of `scratch_mb` (host sockets there, e.g. Ray's, are out of
  reach), which also holds the working directory, so the disk it can fill is bounded too.
  Where the interpreter sits below a directory others may not enter (pyenv in /root, mode
  700), an empty read-only tmpfs covers that directory with just the interpreter bound back;
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

import json
import os
import signal
import sys

_LINUX = sys.platform.startswith("linux")
_OPEN_FILES = 256
# The program's PATH; HOME and TMPDIR are its working directory.
_PATH = "/usr/local/bin:/usr/bin:/bin"
# Linux constants (<sched.h>, <sys/mount.h>, <sys/prctl.h>).
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# Empty, private replacements for the places any user may write or find host sockets in.
_HIDDEN_DIRS = (("/tmp", "tmp", 0o1777), ("/var/tmp", "var-tmp", 0o1777),
                ("/dev/shm", "shm", 0o1777), ("/run", "run", 0o755))


# The launcher: this file run as a script, as the caller's user, in a fresh single-threaded
# process. It applies what it can, reports it on the status pipe, and execs the program.


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(libc, option: int, value: int) -> None:
    _check(libc.prctl(option, value, 0, 0, 0), f"prctl {option}")


def _report(fd: int, **fields) -> None:
    try:
        os.write(fd, (json.dumps(fields) + "\n").encode())
    except OSError:
        pass


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags a remount must keep) from /proc/self/mountinfo."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = fields[4].encode().decode("unicode_escape")  # "\040" is a space
            flags = sum(keep.get(opt, 0) for opt in fields[5].split(","))
            points.append((path, flags))
    return points


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _private_mounts(libc, cfg: dict, owner: int, applied: list, missing: list) -> None:
    """Read-only host, one size-limited tmpfs for the working dir and the world-writable dirs."""
    workdir, scratch = cfg["workdir"], cfg["limits"]["scratch_mb"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks back to the host
    files = {}
    for name in os.listdir(workdir):
        with open(os.path.join(workdir, name), "rb") as f:
            files[name] = f.read()
    failed = []
    for path, flags in _mount_points():
        try:
            _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            failed.append(f"{path} ({e.strerror})")
    if failed:
        missing.append(f"readonly-fs: could not remount {', '.join(failed[:5])}")
    else:
        applied.append("readonly-fs")
    # Binds below hide the working dir's own path, so the tmpfs is reached through an fd.
    _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={scratch}m,nr_inodes=16384,mode=0755")
    scratch_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    root = f"/proc/self/fd/{scratch_fd}"
    os.mkdir(f"{root}/work", 0o700)
    os.chown(f"{root}/work", owner, owner)
    for _, sub, mode in _HIDDEN_DIRS:
        os.mkdir(f"{root}/{sub}")
        os.chmod(f"{root}/{sub}", mode)
    # An interpreter or virtualenv under a hidden dir (a CI venv in /tmp) must stay visible.
    needed = _interpreter_dirs(cfg["argv"][0])
    hidden = []
    for target, sub, _ in _HIDDEN_DIRS:
        if not os.path.isdir(target) or os.path.islink(target):
            continue
        if any(_under(p, target) for p in needed):
            missing.append(f"hide {target}: the interpreter lives there")
            continue
        _mount(libc, f"{root}/{sub}", target, None, MS_BIND)
        hidden.append(target)
    os.makedirs(workdir, exist_ok=True)  # it may now sit in an empty replacement dir
    _mount(libc, f"{root}/work", workdir, None, MS_BIND)
    os.close(scratch_fd)
    for name, content in files.items():
        path = os.path.join(workdir, name)
        with open(path, "wb") as f:
            f.write(content)
        os.chown(path, owner, owner)
    applied.append("tmpfs-workdir")
    if hidden:
        applied.append("hidden:" + ",".join(hidden))
    if cfg["uid"] is not None:
        _expose(libc, needed, applied, missing)


def _interpreter_dirs(program: str) -> set[str]:
    """The program's install prefix and this interpreter's (a venv and its base): what it must read."""
    found = next((os.path.join(d, program) for d in _PATH.split(":") if "/" not in program
                  and os.access(os.path.join(d, program), os.X_OK)), program)
    dirs = {os.path.dirname(os.path.dirname(os.path.realpath(found))), os.path.abspath(found)}
    return dirs | {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}


def _expose(libc, paths: set[str], applied: list, missing: list) -> None:
    """Make dirs the new uid must read reachable when an ancestor is private (pyenv in /root, 0700).

    The private ancestor is covered by an empty read-only tmpfs holding just the path down to each
    needed dir, bound back in; the rest of it (root's home) stays out of sight.
    """
    by_blocker: dict[str, list[str]] = {}
    for path in sorted(paths):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            try:
                if not os.stat(ancestor).st_mode & 0o001:  # others may not traverse it
                    by_blocker.setdefault(ancestor, []).append(path)
                    break
            except OSError:
                break
    for blocker, inside in by_blocker.items():
        fds = {p: os.open(p, os.O_PATH) for p in inside if os.path.exists(p)}
        try:
            _mount(libc, "tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            for path, fd in fds.items():
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.makedirs(path, 0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                    open(path, "ab").close()
                _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND)
                _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            _mount(libc, None, blocker, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            applied.append(f"exposed:{','.join(sorted(fds))}")
        except OSError as e:
            missing.append(f"expose {', '.join(inside)}: {e}")
        finally:
            for fd in fds.values():
                os.close(fd)


def _user_namespace(libc) -> None:
    """Enter a new user namespace with this uid/gid mapped to themselves (no capabilities after exec)."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _process_count(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _kernel() -> tuple[int, ...]:
    release = os.uname().release.split("-")[0].split(".")
    return tuple(int(p) for p in release[:2] if p.isdigit())


def _set_limits(cfg: dict, namespaces: set, applied: list, missing: list) -> None:
    import resource

    lim = cfg["limits"]
    mb = 1024 * 1024
    wanted = [
        ("cpu", resource.RLIMIT_CPU, lim["cpu_seconds"], lim["cpu_seconds"] + 1),
        ("memory", resource.RLIMIT_AS, lim["memory_mb"] * mb, lim["memory_mb"] * mb),
        ("file size", resource.RLIMIT_FSIZE, lim["max_file_bytes"], lim["max_file_bytes"]),
        ("open files", resource.RLIMIT_NOFILE, _OPEN_FILES, _OPEN_FILES),
        ("core", resource.RLIMIT_CORE, 0, 0),
    ]
    if cfg["uid"] is not None:  # a fresh uid: nothing else counts
        wanted.append(("processes", resource.RLIMIT_NPROC, lim["max_processes"], lim["max_processes"]))
    elif "userns" in namespaces and _kernel() >= (5, 14):  # counted per user namespace since 5.14
        n = lim["max_processes"] + 2 * ("pidns" in namespaces)  # the launcher and init count too
        wanted.append(("processes", resource.RLIMIT_NPROC, n, n))
    elif _LINUX:
        n = _process_count(os.getuid()) + lim["max_processes"]
        wanted.append(("processes", resource.RLIMIT_NPROC, n, n))
        missing.append("processes: counted with all of this user's processes")
    else:
        missing.append("processes: RLIMIT_NPROC would count all of this user's processes")
    failed = []
    for what, which, soft, hard in wanted:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as e:
            failed.append(what)
            missing.append(f"rlimit {what}: {e}")
    if not failed:
        applied.append("rlimits")
    if sys.platform == "darwin":
        missing.append("memory: macOS does not enforce RLIMIT_AS")


def _launch(cfg: dict) -> None:
    fd = cfg["status_fd"]
    os.set_inheritable(fd, False)  # closed by exec: EOF tells the caller the program started
    applied, missing = ["session", "clean-env"], []
    uid = cfg["uid"]
    libc = _libc() if _LINUX else None
    if libc is not None:
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the caller
        if os.getppid() != cfg["parent"]:
            os._exit(1)
    namespaces = set()
    if libc is not None:
        if uid is None:
            try:
                _user_namespace(libc)
                namespaces.add("userns")
            except OSError as e:
                missing.append(f"userns: {e.strerror}")
        if uid is not None or namespaces:
            for name, flag in (("netns", CLONE_NEWNET), ("ipcns", CLONE_NEWIPC),
                               ("mountns", CLONE_NEWNS), ("pidns", CLONE_NEWPID)):
                try:
                    _check(libc.unshare(flag), f"unshare({name})")
                    namespaces.add(name)
                except OSError as e:
                    missing.append(f"{name}: {e.strerror}")
        else:
            missing.append("netns, mountns, pidns: need root or a user namespace")
        applied += sorted(namespaces)
        if "mountns" in namespaces:
            try:
                _private_mounts(libc, cfg, uid if uid is not None else os.getuid(), applied, missing)
            except OSError as e:
                missing.append(f"private mounts: {e}")
    else:
        missing.append(f"namespaces: none on {sys.platform}")
    if "pidns" in namespaces:
        # Process 1 of the namespace is a small init, not the program: the kernel drops signals
        # to process 1 that it has no handler for (its own SIGSEGV, SIGXCPU from the CPU limit).
        init: list[int] = []
        # The caller's SIGTERM means stop: killing init kills the whole namespace, and waiting for
        # init returns once every process in it is gone.
        signal.signal(signal.SIGTERM, lambda *_: init and os.kill(init[0], signal.SIGKILL))
        pid = os.fork()
        if pid:
            init.append(pid)
            os.waitpid(pid, 0)
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
        if "mountns" in namespaces:
            try:
                _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                applied.append("proc")
            except OSError as e:
                missing.append(f"proc: {e.strerror}")
        program = os.fork()
        if program:
            _init(fd, program)
    _exec(cfg, libc, uid, namespaces, applied, missing)


def _init(fd: int, program: int) -> None:
    """Reap orphans until the program exits, report its status, exit: the kernel kills the rest."""
    while True:
        pid, status = os.wait()
        if pid == program:
            _report(fd, exit=status)
            os._exit(0)


def _exec(cfg: dict, libc, uid: int | None, namespaces: set, applied: list, missing: list) -> None:
    fd, workdir = cfg["status_fd"], cfg["workdir"]
    if uid is not None and "mountns" not in namespaces:  # the host dir, usable by the new uid
        for name in [".", *os.listdir(workdir)]:
            os.chown(os.path.join(workdir, name), uid, uid)
    _set_limits(cfg, namespaces, applied, missing)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        applied.append("uid")
    if libc is not None:
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        applied.append("no-new-privs")
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change cleared it
    os.chdir(workdir)
    _report(fd, applied=applied, missing=missing)
    argv = cfg["argv"]
    try:
        os.execvpe(argv[0], argv, cfg["env"])
    except OSError as e:
        _report(fd, error=f"cannot run {argv[0]!r}: {e.strerror}")
        os._exit(127)


def _reap(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.kill(-1, signal.SIGKILL)  # every process this uid may signal: the run's leftovers
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    if sys.argv[1] == "--reap":
        _reap(int(sys.argv[2]))
        sys.exit(0)
    _config = json.loads(sys.argv[1])
    try:
        _launch(_config)
    except BaseException as e:  # noqa: BLE001 - anything here is reported, not raised
        _report(_config["status_fd"], error=f"{type(e).__name__}: {e}")
        os._exit(127)


# The caller's side. Its imports come after the launcher's entry point above, so the launcher,
# started once per program, does without them (about 50 ms less per run).
import itertools  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Mapping, Sequence  # noqa: E402

_UID_BASE = 2**31  # far above any real account; see _sandbox_uid
_READ_CHUNK = 65536
_LAUNCHER_ENV = {"PATH": _PATH, "LANG": "C.UTF-8"}
# One thread per numeric library: runs go in parallel, one per core, and threads count as processes.
_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Last lines of stderr that tell which limit a failed program ran into.
_LIMIT_MESSAGES = (
    ("MemoryError", "memory limit"),
    ("std::bad_alloc", "memory limit"),
    ("Cannot allocate memory", "memory limit"),
    ("File too large", "file size limit"),
    ("No space left on device", "disk limit"),
    ("Resource temporarily unavailable", "process limit"),
)


@dataclass(frozen=True)
class Limits:
    """Every limit of one run; the code verifier's params explain the defaults."""

    timeout_seconds: float  # wall clock, launcher start to exit
    cpu_seconds: int  # CPU seconds per process
    memory_mb: int  # address space per process
    max_processes: int  # processes and threads of the run
    max_output_bytes: int  # per stream; more and the program is killed
    max_file_bytes: int  # largest file it may write
    scratch_mb: int  # the tmpfs holding its working dir and /tmp (Linux namespaces only)


@dataclass(frozen=True)
class Result:
    exit_code: int | None  # negative: ended by that signal; None: it never started
    stdout: str
    stderr: str
    timed_out: bool
    killed: str | None  # why it was stopped or which limit it hit: "timeout", "memory limit", ...
    wall_seconds: float
    isolation: tuple[str, ...]  # applied: session, clean-env, rlimits, uid, netns, mountns, ...
    missing: tuple[str, ...]  # not applied, each "what: why"
    truncated: bool = False  # stdout or stderr was cut at max_output_bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed is None


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
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
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
        killed = _limit_hit(exit_code, stderr)
    return Result(exit_code, out.decode(errors="replace"), stderr, killed == "timeout", killed,
                  wall, isolation, missing, truncated)


def _limit_hit(exit_code: int | None, stderr: str) -> str | None:
    """Which limit a program that failed on its own most likely hit, if any."""
    if exit_code is None or exit_code == 0:
        return None
    if exit_code < 0:
        sig = -exit_code
        if sig == signal.SIGXCPU:
            return "cpu limit"
        if sig == signal.SIGXFSZ:
            return "file size limit"
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    tail = stderr[-2000:]
    return next((why for text, why in _LIMIT_MESSAGES if text in tail), None)


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
        subprocess.run([sys.executable, "-I", "-S", os.path.abspath(__file__), "--reap", str(uid)],
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


# The launcher: this file run as a script, as the caller's user, in a fresh single-threaded
