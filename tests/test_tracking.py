"""The tracker never ends a run: a wandb that cannot start, or fails later, costs a warning only."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb
import yaml
from wandb.errors import CommError

from distill.recipe.schema import Tracking
from distill.tracking import Tracker


class FakeWandbRun:
    def __init__(self, mode: str, sync_dir: str, fail_on: str | None = None):
        self.mode, self.fail_on, self.calls = mode, fail_on, []
        self.settings = SimpleNamespace(sync_dir=sync_dir)
        self.summary = SimpleNamespace(update=lambda values: self._record("summary", values))

    def _record(self, what, value):
        self.calls.append((what, value))
        if what == self.fail_on:
            raise CommError("upload refused")

    def log(self, values):
        self._record("log", values)

    def finish(self, exit_code=0):
        self._record("finish", exit_code)


class FakeInit:
    """Stands in for wandb.init: fails for the modes in `fail`, records every call."""

    def __init__(self, tmp_path: Path, fail=(), fail_on=None):
        self.tmp_path, self.fail, self.fail_on, self.calls, self.runs = tmp_path, set(fail), fail_on, [], []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if kwargs["mode"] in self.fail:
            raise CommError("Timed out while retrying: Post \"http://127.0.0.1:9/graphql\"\nConsider increasing "
                            "the init_timeout setting")
        run = FakeWandbRun(kwargs["mode"], str(self.tmp_path / "wandb" / f"{kwargs['mode']}-run-1"), self.fail_on)
        self.runs.append(run)
        return run


def fake_run(tmp_path: Path, **tracking):
    recipe = SimpleNamespace(tracking=Tracking(**tracking), name="unit", resolved=lambda: {"name": "unit"})
    return SimpleNamespace(recipe=recipe, dir=tmp_path, id="abc123", recipe_hash="h", code_version="v",
                           teacher=SimpleNamespace(model_dump=lambda mode: {"id": "t"}))


def warnings_from_tracker(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "distill.tracking" and r.levelno == logging.WARNING]


def test_an_online_start_that_fails_continues_offline_with_one_warning(tmp_path, monkeypatch, caplog):
    init = FakeInit(tmp_path, fail={"online"})
    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(fake_run(tmp_path, wandb="online"))
    assert [c["mode"] for c in init.calls] == ["online", "offline"]
    assert tracker.active and tracker.mode == "offline"
    (message,) = warnings_from_tracker(caplog)
    assert "\n" not in message and "CommError" in message and "offline" in message
    assert f"wandb sync {tmp_path / 'wandb' / 'offline-run-1'}" in message
    tracker.log({"x": 1}, "prompts")
    assert init.runs[0].calls == [("log", {"prompts/x": 1})]


def test_a_start_that_fails_in_every_mode_disables_tracking(tmp_path, monkeypatch, caplog):
    init = FakeInit(tmp_path, fail={"online", "offline"})
    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(fake_run(tmp_path, wandb="online"))
    assert not tracker.active and tracker.mode == "disabled"
    (message,) = warnings_from_tracker(caplog)
    assert "online" in message and "offline" in message and "without tracking" in message
    tracker.log({"x": 1})
    tracker.summary({"x": 1})
    tracker.table("rows", [{"a": 1}])
    tracker.finish()
    assert len(init.calls) == 2


def test_an_offline_start_that_fails_is_not_retried(tmp_path, monkeypatch, caplog):
    init = FakeInit(tmp_path, fail={"offline"})
    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(fake_run(tmp_path, wandb="offline"))
    assert not tracker.active and [c["mode"] for c in init.calls] == ["offline"]
    assert len(warnings_from_tracker(caplog)) == 1


@pytest.mark.parametrize("failing", ["log", "summary", "finish"])
def test_a_call_that_fails_mid_run_warns_once_and_tracking_stops(tmp_path, monkeypatch, caplog, failing):
    init = FakeInit(tmp_path, fail_on=failing)
    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(fake_run(tmp_path, wandb="offline"))
    wb = init.runs[0]
    for _ in range(3):
        tracker.log({"a": 1})
        tracker.summary({"b": 2})
        tracker.table("rows", [{"c": 3}])
    tracker.finish(failed=True)
    tracker.finish()
    assert not tracker.active
    (message,) = warnings_from_tracker(caplog)
    assert f"wandb {failing} failed" in message and f"wandb sync {wb.settings.sync_dir}" in message
    first_failure = next(i for i, (what, _) in enumerate(wb.calls) if what == failing)
    assert len(wb.calls) == first_failure + 1, "nothing reaches wandb after the failure"


def test_the_init_timeout_reaches_wandbs_settings(tmp_path, monkeypatch):
    init = FakeInit(tmp_path, fail={"online"})
    monkeypatch.setattr(wandb, "init", init)
    Tracker(fake_run(tmp_path, wandb="online", init_timeout_s=2.5))
    assert [c["settings"].init_timeout for c in init.calls] == [2.5, 2.5]


def test_an_unreachable_server_costs_the_timeout_not_the_run(tmp_path, monkeypatch, caplog):
    """Real wandb, a fake key and a closed loopback port: `auto` picks online, which cannot connect."""
    from support.fakes import FakeBackend, write_recipe

    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    path = write_recipe(tmp_path)
    text = yaml.safe_load(path.read_text())
    text["tracking"] = {"wandb": "auto", "init_timeout_s": 2}
    path.write_text(yaml.safe_dump(text))
    started = time.monotonic()
    run, summaries = run_pipeline(load_recipe(path), until="prompts", backend=FakeBackend())
    assert time.monotonic() - started < 60
    assert len(run.files.read_prompts("train")) == 4 and "prompts" in summaries
    (message,) = warnings_from_tracker(caplog)
    assert "continuing with an offline run" in message and "wandb sync" in message
    assert list((run.dir / "wandb").glob("offline-run-*/*.wandb")), "the offline run is in the run directory"
