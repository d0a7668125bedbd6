"""The launcher's Linux calls: namespaces, mounts, prctl, and the private file system view.

Standard library only and no package imports: launcher.py loads this file by path in a process
started with `python -I -S`, where neither the package nor site-packages is importable.
Every failure is an OSError naming the call; the launcher records it in `missing`.
"""

from __future__ import annotations

import os
import sys

# <sched.h>, <sys/mount.h>, <sys/prctl.h>
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# The namespaces the launcher enters after the user namespace, in this order.
NAMESPACES = (("netns", CLONE_NEWNET), ("ipcns", CLONE_NEWIPC), ("mountns", CLONE_NEWNS), ("pidns", CLONE_NEWPID))
# Empty, private replacements for the places any user may write or find host sockets in.
_HIDDEN_DIRS = (("/tmp", "tmp", 0o1777), ("/var/tmp", "var-tmp", 0o1777),
                ("/dev/shm", "shm", 0o1777), ("/run", "run", 0o755))


def libc():
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.unshare.argtypes = [ctypes.c_int]
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return lib


def check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(lib, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(lib.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(lib, option: int, value: int) -> None:
    check(lib.prctl(option, value, 0, 0, 0), f"prctl {option}")


def unshare(lib, name: str, flag: int) -> None:
    check(lib.unshare(flag), f"unshare({name})")


def user_namespace(lib) -> None:
    """Enter a new user namespace with this uid/gid mapped to themselves (no capabilities after exec)."""
    uid, gid = os.getuid(), os.getgid()
    unshare(lib, "CLONE_NEWUSER", CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def mount_proc(lib) -> None:
    """A /proc of the new PID namespace: it shows only the run's own processes."""
    mount(lib, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


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


def private_mounts(lib, cfg: dict, owner: int, applied: list, missing: list) -> None:
    """Read-only host, one size-limited tmpfs for the working dir and the world-writable dirs."""
    workdir, scratch = cfg["workdir"], cfg["limits"]["scratch_mb"]
    mount(lib, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks back to the host
    files = {}
    for name in os.listdir(workdir):
        with open(os.path.join(workdir, name), "rb") as f:
            files[name] = f.read()
    failed = []
    for path, flags in _mount_points():
        try:
            mount(lib, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            failed.append(f"{path} ({e.strerror})")
    if failed:
        missing.append(f"readonly-fs: could not remount {', '.join(failed[:5])}")
    else:
        applied.append("readonly-fs")
    # Binds below hide the working dir's own path, so the tmpfs is reached through an fd.
    mount(lib, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch}m,nr_inodes=16384,mode=0755")
    scratch_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    root = f"/proc/self/fd/{scratch_fd}"
    os.mkdir(f"{root}/work", 0o700)
    os.chown(f"{root}/work", owner, owner)
    for _, sub, mode in _HIDDEN_DIRS:
        os.mkdir(f"{root}/{sub}")
        os.chmod(f"{root}/{sub}", mode)
    needed = _interpreter_dirs(cfg["argv"][0], cfg["env"]["PATH"])
    targets = [t for t, _, _ in _HIDDEN_DIRS if os.path.isdir(t) and not os.path.islink(t)]
    # Opened before the hiding binds: afterwards the host's copies are out of reach.
    kept = _in_sight(needed, targets)
    hidden = []
    for target, sub, _ in _HIDDEN_DIRS:
        if target in targets:
            mount(lib, f"{root}/{sub}", target, None, MS_BIND)
            hidden.append(target)
    _bind_back(lib, kept, applied, missing)
    os.makedirs(workdir, exist_ok=True)  # it may now sit in an empty replacement dir
    mount(lib, f"{root}/work", workdir, None, MS_BIND)
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
        _expose(lib, needed, applied, missing)


def _interpreter_dirs(program: str, search_path: str) -> set[str]:
    """The program's install prefix and this interpreter's (a venv and its base): what it must read.

    Directories a .pth file adds to sys.path (an editable install's checkout) are left out: site
    skips those it cannot find, and a teacher's program has no use for the caller's project.
    """
    found = next((os.path.join(d, program) for d in search_path.split(":") if "/" not in program
                  and os.access(os.path.join(d, program), os.X_OK)), program)
    invoked = os.path.abspath(found)
    dirs = {os.path.dirname(os.path.dirname(os.path.realpath(found))), invoked}
    # A venv is found from the path it was started by, not the binary it links to; with -S the
    # launcher's own sys.prefix is the base interpreter's, so the venv is only known this way.
    for venv in (os.path.dirname(invoked), os.path.dirname(os.path.dirname(invoked))):
        if os.path.isfile(os.path.join(venv, "pyvenv.cfg")):
            dirs.add(venv)
            break
    return dirs | {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}


def _in_sight(paths: set[str], hidden: list[str]) -> dict[str, str | int]:
    """What of `paths` lies strictly below a dir about to be hidden: path -> symlink text, or an
    O_PATH fd of the file or dir to bind back. Symlinks are followed, so a chain stays whole."""
    found: dict[str, str | None] = {}
    todo = list(paths)
    while todo:
        path = os.path.normpath(todo.pop())
        if path in found or not any(path != d and _under(path, d) for d in hidden):
            continue  # a hidden dir itself is never bound back: that would undo the hiding
        if os.path.islink(path):
            found[path] = os.readlink(path)
            todo.append(os.path.join(os.path.dirname(path), found[path]))
        elif os.path.exists(path):
            found[path] = None
    binds = [p for p, link in found.items() if link is None]
    kept: dict[str, str | int] = {}
    for path in sorted(found):
        if any(path != b and _under(path, b) for b in binds):
            continue  # visible through the bind of a dir above it
        kept[path] = found[path] if found[path] is not None else os.open(path, os.O_PATH)
    return kept


def _bind_back(lib, kept: dict[str, str | int], applied: list, missing: list) -> None:
    """Put what `_in_sight` found back at its own path in the private dirs, read-only.

    The dirs above it are made anew (the launcher's, 0755): the rest of the host's dir stays
    hidden, and the program cannot rename or replace what was bound back."""
    mask = os.umask(0o022)
    done = []
    try:
        for path, what in kept.items():
            try:
                if isinstance(what, str):
                    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                    os.symlink(what, path)
                else:
                    source = f"/proc/self/fd/{what}"
                    if os.path.isdir(source):
                        os.makedirs(path, 0o755, exist_ok=True)
                    else:
                        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                        open(path, "ab").close()
                    mount(lib, source, path, None, MS_BIND)
                    # In a user namespace a remount must keep the flags the source mount is locked with.
                    locked = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
                    mount(lib, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)
                done.append(path)
            except OSError as e:
                missing.append(f"bind back {path}: {e}")
    finally:
        os.umask(mask)
        for what in kept.values():
            if isinstance(what, int):
                os.close(what)
    if done:
        applied.append("bound-back:" + ",".join(done))


def _expose(lib, paths: set[str], applied: list, missing: list) -> None:
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
            mount(lib, "tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            for path, fd in fds.items():
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.makedirs(path, 0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                    open(path, "ab").close()
                mount(lib, f"/proc/self/fd/{fd}", path, None, MS_BIND)
                mount(lib, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            mount(lib, None, blocker, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            applied.append(f"exposed:{','.join(sorted(fds))}")
        except OSError as e:
            missing.append(f"expose {', '.join(inside)}: {e}")
        finally:
            for fd in fds.values():
                os.close(fd)
