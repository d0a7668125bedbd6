"""What a sandboxed run may use (`Limits`) and what came of it (`Result`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass

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


def limit_hit(exit_code: int | None, stderr: str) -> str | None:
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
