"""A hard time limit for a verifier's work on one completion: the call runs in a worker process,
which is killed when the limit passes.

A limit inside the process cannot be trusted: math_verify's own timeout is `signal.alarm`, which
works on the main thread only, and no signal interrupts a long computation in C (a tower of
exponents handed to sympy), which also holds the GIL and with it the whole run. A worker process
can always be stopped. One worker per thread of the caller, started on first use (spawned, not
forked: the caller may hold threads and locks), kept for the next calls, and replaced after a kill.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import threading
from typing import Any, Callable

_local = threading.local()


class Outcome:
    """What a limited call gave: its value, or why there is none (an error text, or a timeout)."""

    def __init__(self, value: Any = None, error: str | None = None, timed_out: bool = False):
        self.value, self.error, self.timed_out = value, error, timed_out


def call(fn: Callable, args: tuple, seconds: float) -> Outcome:
    """fn(*args) in this thread's worker, stopped after `seconds`. `fn` must be importable by name
    (a module-level function) and its arguments and result picklable; pickle's error is raised
    here when they are not."""
    worker = getattr(_local, "worker", None)
    if worker is None or not worker.alive():
        worker = _local.worker = _Worker()
    return worker.call(fn, args, seconds)


# A new worker first imports what the call needs (sympy, math_verify: seconds on a loaded
# machine); that is not the verifier's time.
STARTUP_SECONDS = 60.0


class _Worker:
    def __init__(self):
        self.fresh = True
        self.path: list[str] | None = None
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="distill-verifier")
        self.process.start()
        child.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def call(self, fn: Callable, args: tuple, seconds: float) -> Outcome:
        blob = pickle.dumps((fn, args))  # here, so that what cannot be sent raises in the caller
        # The import path goes along when it changed: a plug-in imported after the worker started
        # (a recipe's dotted name) is found there too.
        path = list(sys.path)
        changed, self.path = path != self.path, path
        if self.fresh:
            seconds, self.fresh = seconds + STARTUP_SECONDS, False
        try:
            self.conn.send((path if changed else None, blob))
            if self.conn.poll(seconds):
                kind, value = self.conn.recv()
                return Outcome(value=value) if kind == "ok" else Outcome(error=value)
        except (EOFError, OSError, BrokenPipeError) as e:  # the worker died (out of memory, a crash)
            self.stop()
            return Outcome(error=f"the verifier's worker process ended ({type(e).__name__})")
        self.stop()
        return Outcome(timed_out=True)

    def stop(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _serve(conn) -> None:
    while True:
        try:
            path, blob = conn.recv()
        except (EOFError, OSError):
            return
        if path is not None:
            sys.path[:] = path
        try:
            fn, args = pickle.loads(blob)
            conn.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001  a verifier's failure is a verdict, never the worker's end
            conn.send(("error", f"{type(e).__name__}: {e}"))
