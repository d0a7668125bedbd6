"""Progress without a terminal: a bar becomes lines, at least every DISTILL_PROGRESS_SECONDS."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

import distill.pipeline
from distill.cli import app
from distill.cli.progress import LogBar, progress_seconds

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo" / "smollm2-135m-from-smollm2-135m.yaml"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_line_at_the_start_every_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LogBar("sampling", every=30, out=out, clock=clock, heartbeat=False)
    bar.start(total=100)
    clock.now += 10
    bar.advance(10)  # within the interval: no line
    clock.now += 21
    bar.advance(10)  # 31 s in: a line with rate and time left
    clock.now += 49
    bar.advance(80)
    lines = out.getvalue().splitlines()
    assert lines[0] == "sampling: 0/100"
    assert lines[1] == "sampling: 20/100 (20%), 0.65/s, 0:31 elapsed, about 2:04 left"
    assert lines[2] == "sampling: 100/100 (100%), 1.25/s, 1:20 elapsed, done"
    assert len(lines) == 3


def test_a_resumed_bar_counts_its_rate_from_what_it_did():
    out, clock = io.StringIO(), Clock()
    bar = LogBar("training", every=5, out=out, clock=clock, heartbeat=False)
    bar.start(total=50, completed=40)
    clock.now += 10
    bar.advance(5)
    assert out.getvalue().splitlines()[-1] == "training: 45/50 (90%), 0.50/s, 0:10 elapsed, about 0:10 left"


def test_a_line_comes_every_interval_while_nothing_advances_and_stops_when_another_bar_starts():
    import time

    out = io.StringIO()
    first = LogBar("sampling", every=0.2, out=out)
    first.start(total=10)
    time.sleep(0.9)  # an engine starting: no batch back yet
    waiting = [line for line in out.getvalue().splitlines() if line.startswith("sampling: 0/10 (0%)")]
    assert len(waiting) >= 2, out.getvalue()
    assert "elapsed" in waiting[0] and "left" not in waiting[0]  # no rate yet, so no estimate
    second = LogBar("training", every=0.2, out=out)
    second.start(total=3)
    time.sleep(0.1)
    before = out.getvalue().count("sampling:")
    time.sleep(0.6)
    assert out.getvalue().count("sampling:") == before  # the abandoned bar fell silent
    assert out.getvalue().count("training:") >= 3
    second.advance(3)
    time.sleep(0.1)
    after = out.getvalue().count("training:")
    time.sleep(0.5)
    assert out.getvalue().count("training:") == after  # done: no more lines


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "5")
    assert progress_seconds() == 5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", bad)
        assert progress_seconds() == 30


def test_distill_run_without_a_terminal_prints_progress_lines(monkeypatch, tmp_path):
    def fake_pipeline(recipe, until=None, *, progress_factory=None, verbose=False, **kw):
        bar = progress_factory("sampling")
        bar.start(total=4)
        bar.advance(4)
        return SimpleNamespace(remote=None, dir=tmp_path), {}

    monkeypatch.setattr(distill.pipeline, "run_pipeline", fake_pipeline)
    result = CliRunner().invoke(app, ["run", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "sampling: 0/4" in result.output
    assert "sampling: 4/4 (100%)" in result.output and "done" in result.output
