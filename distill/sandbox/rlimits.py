"""The launcher's resource limits: CPU, memory, file size, open files, core files, processes.

Standard library only and no package imports, like launcher.py, which loads this file by path.
"""

from __future__ import annotations

import os
import resource
import sys

_LINUX = sys.platform.startswith("linux")
_OPEN_FILES = 256


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


def set_limits(cfg: dict, namespaces: set, applied: list, missing: list) -> None:
    """Every rlimit of the run; how processes are counted depends on the uid and namespaces it got."""
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
