"""A verifier's hard time limit: the work runs in a worker process that is killed at the limit."""

from __future__ import annotations

import os
import time

import pytest

from distill.verifiers import hard_limit


def double(x):
    return 2 * x


def sleep_forever():
    while True:
        time.sleep(1)


def fail():
    raise ValueError("no good")


def die():
    os._exit(3)


def test_a_value_an_error_a_timeout_and_a_dead_worker():
    assert hard_limit.call(double, (21,), 5).value == 42
    out = hard_limit.call(fail, (), 5)
    assert out.error == "ValueError: no good" and not out.timed_out
    started = time.monotonic()
    out = hard_limit.call(sleep_forever, (), 1)
    assert out.timed_out and out.value is None
    assert time.monotonic() - started < 30
    assert hard_limit.call(double, (2,), 5).value == 4  # a new worker after the kill
    out = hard_limit.call(die, (), 5)
    assert out.error and "ended" in out.error
    assert hard_limit.call(double, (3,), 5).value == 6


def test_a_module_importable_only_since_the_worker_started_is_found(tmp_path, monkeypatch):
    """A recipe's dotted-name plug-in is imported after the worker may have started (for math)."""
    assert hard_limit.call(double, (1,), 60).value == 2  # the worker is up
    (tmp_path / "late_plugin_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_plugin_mod

    assert hard_limit.call(late_plugin_mod.triple, (5,), 5).value == 15


def test_what_cannot_be_sent_raises_in_the_caller():
    import pickle

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        hard_limit.call(lambda: 1, (), 5)
