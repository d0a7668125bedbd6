"""Progress for `distill run`: rich bars on a terminal, and, where output goes to a file or to
`ray job logs` (no terminal, so no bar is drawn), a plain line per bar at least every
$DISTILL_PROGRESS_SECONDS (30 by default): done / total, rate and time left."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, TextIO

PROGRESS_SECONDS_ENV = "DISTILL_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0  # often enough to see a stage move, rare enough to keep logs readable


class RichBar:
    """One task of a rich Progress."""

    def __init__(self, progress, label: str):
        self.progress, self.label, self.task = progress, label, None

    def start(self, total: int, completed: int = 0):
        self.task = self.progress.add_task(self.label, total=total, completed=completed)

    def advance(self, n: int):
        self.progress.advance(self.task, n)


class LogBar:
    """The same interface as a bar, written as lines: one at the start, one at least every
    `every` seconds until the total is reached (also while nothing advances: an engine starting,
    a first batch still in the works), and one when it is reached. The latest bar started is the
    one that keeps time; an earlier one left unfinished falls silent."""

    _active: LogBar | None = None  # the bar whose heartbeat runs

    def __init__(self, label: str, every: float | None = None, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = True):
        self.label, self.out, self.clock, self.heartbeat = label, out, clock, heartbeat
        self.every = progress_seconds() if every is None else every
        self.total = self.done = self.first = 0
        self.started = self.last = 0.0
        self._lock = threading.Lock()

    def start(self, total: int, completed: int = 0):
        with self._lock:
            self.total, self.done, self.first = total, completed, completed
            self.started = self.last = self.clock()
            self._write(f"{self.label}: {completed}/{total}")
        LogBar._active = self
        if self.heartbeat and not self.finished:
            threading.Thread(target=self._beat, name=f"progress {self.label}", daemon=True).start()

    def advance(self, n: int):
        with self._lock:
            self.done += n
            now = self.clock()
            if self.done >= self.total or now - self.last >= self.every:
                self.last = now
                self._write(self.line(now))

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def tick(self) -> bool:
        """Writes a line if none was written for `every` seconds and the work is not done."""
        with self._lock:
            now = self.clock()
            if self.finished or now - self.last < self.every:
                return False
            self.last = now
            self._write(self.line(now))
            return True

    def _beat(self):
        started = self.started
        while LogBar._active is self and self.started == started and not self.finished:
            time.sleep(min(1.0, self.every / 4))
            if LogBar._active is self and self.started == started:
                self.tick()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.label}: {self.done}/{self.total}{share}, {rate:.2f}/s, {_clock(elapsed)} elapsed"
        if self.done >= self.total:
            return text + ", done"
        left = (self.total - self.done) / rate if rate > 0 else None
        return text + (f", about {_clock(left)} left" if left is not None else "")

    def _write(self, text: str) -> None:
        out = self.out or sys.stdout
        print(text, file=out, flush=True)


def progress_seconds() -> float:
    raw = os.environ.get(PROGRESS_SECONDS_ENV)
    try:
        value = float(raw) if raw else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        value = DEFAULT_PROGRESS_SECONDS
    return value if value > 0 else DEFAULT_PROGRESS_SECONDS


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
