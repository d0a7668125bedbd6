"""The child side of the sandbox: what runs in the new process before the untrusted program.

The caller starts it as a script, `python -I -S launcher.py CONFIG_JSON`, in a fresh
single-threaded process with its own session, as the caller's user. It enters what namespaces
it can, sets up the file system view and the limits, drops to the run's uid and execs the
program, so nothing runs between fork and exec in the caller, which may have threads.
`launcher.py --reap UID` kills whatever that uid left behind.

It reports on the status pipe (`status_fd` in the config), one JSON object a line:
`{"applied": [...], "missing": [...]}` just before exec (the pipe closes on exec),
`{"error": "..."}` when a step or the exec fails, and `{"exit": <wait status>}` from the PID
namespace's init when the program ends (the caller's own wait sees only the launcher).

Standard library only, and with `-I -S` neither the package nor site-packages is importable:
its helpers next to it (namespaces.py, rlimits.py) are loaded by path.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _sibling(name: str):
    from importlib.util import module_from_spec, spec_from_file_location

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = spec_from_file_location(f"_sandbox_{name}", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ns = _sibling("namespaces")
rlimits = _sibling("rlimits")


def _report(fd: int, **fields) -> None:
    try:
        os.write(fd, (json.dumps(fields) + "\n").encode())
    except OSError:
        pass


def _launch(cfg: dict) -> None:
    fd = cfg["status_fd"]
    os.set_inheritable(fd, False)  # closed by exec: EOF tells the caller the program started
    applied, missing = ["session", "clean-env"], []
    uid = cfg["uid"]
    libc = ns.libc() if sys.platform.startswith("linux") else None
    if libc is not None:
        ns.prctl(libc, ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the caller
        if os.getppid() != cfg["parent"]:
            os._exit(1)
    namespaces = set()
    if libc is not None:
        if uid is None:
            try:
                ns.user_namespace(libc)
                namespaces.add("userns")
            except OSError as e:
                missing.append(f"userns: {e.strerror}")
        if uid is not None or namespaces:
            for name, flag in ns.NAMESPACES:
                try:
                    ns.unshare(libc, name, flag)
                    namespaces.add(name)
                except OSError as e:
                    missing.append(f"{name}: {e.strerror}")
        else:
            missing.append("netns, mountns, pidns: need root or a user namespace")
        applied += sorted(namespaces)
        if "mountns" in namespaces:
            try:
                ns.private_mounts(libc, cfg, uid if uid is not None else os.getuid(), applied, missing)
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
        ns.prctl(libc, ns.PR_SET_PDEATHSIG, signal.SIGKILL)
        if "mountns" in namespaces:
            try:
                ns.mount_proc(libc)
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
    rlimits.set_limits(cfg, namespaces, applied, missing)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        applied.append("uid")
    if libc is not None:
        ns.prctl(libc, ns.PR_SET_NO_NEW_PRIVS, 1)
        applied.append("no-new-privs")
        ns.prctl(libc, ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change cleared it
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
