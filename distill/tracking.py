"""Experiment tracking with wandb: one wandb run per `distill run` invocation, grouped by run id.

Offline unless the user has logged in (an API key in the environment or ~/.netrc), so a
laptop demo sends nothing anywhere; offline runs land in the run directory's `wandb/` and
`wandb sync` uploads them later. The API key is never written by distill: the config
logged is the resolved recipe, which has no credentials in it.
"""

from __future__ import annotations

import logging
import netrc
import os
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(setting: str) -> str:
    """The recipe's `tracking.wandb` as a wandb mode: auto picks online only for a logged-in user."""
    if setting == "auto":
        return "online" if logged_in() else "offline"
    return setting


class Tracker:
    """A thin layer over a wandb run; every method is a no-op when tracking is disabled.

    Tracking never ends a run: if wandb cannot start online it starts offline in the run
    directory, if it cannot start at all tracking is off, and a call that fails mid-run stops
    tracking for the rest of the run. Each case is one warning line naming the `wandb sync`
    command for what was recorded.
    """

    def __init__(self, run, stage_names: list[str] | None = None):
        t = run.recipe.tracking
        self.mode = resolve_mode(t.wandb)
        self.wb = None
        if self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")  # distill prints its own summary
        try:
            import wandb
        except Exception as e:  # noqa: BLE001 - a broken install is no reason to lose the run either
            self._give_up(f"wandb could not be imported ({_reason(e)})")
            return
        kwargs = {
            "project": t.project, "entity": t.entity, "dir": str(run.dir),
            "group": run.id, "name": f"{run.recipe.name}-{run.id}", "job_type": "distill-run",
            "config": {"recipe": run.recipe.resolved(), "recipe_hash": run.recipe_hash, "run_id": run.id,
                       "code_version": run.code_version, "teacher": run.teacher.model_dump(mode="json")},
            "tags": ["distill"] + (stage_names or []),
            "reinit": "finish_previous",
        }

        def start(mode: str):
            settings = wandb.Settings(console="off", save_code=False, x_disable_stats=True,
                                      init_timeout=t.init_timeout_s)
            return wandb.init(mode=mode, settings=settings, **kwargs)

        try:
            self.wb = start(self.mode)
            return
        except Exception as e:  # noqa: BLE001 - wandb raises many kinds (network, auth, quota, timeout)
            first = e
        if self.mode != "online":
            self._give_up(f"wandb could not start an {self.mode} run ({_reason(first)})")
            return
        try:
            self.wb = start("offline")
        except Exception as e:  # noqa: BLE001 - as above: tracking is never worth the run
            self._give_up(f"wandb could not start online ({_reason(first)}) nor offline ({_reason(e)})")
            return
        self.mode = "offline"
        sync = self._sync_dir()
        log.warning("wandb could not start online (%s; tracking.init_timeout_s is %gs); continuing with an "
                    "offline run in %s; upload it later with `wandb sync %s`", _reason(first), t.init_timeout_s,
                    sync, sync)

    @property
    def active(self) -> bool:
        return self.wb is not None

    def log(self, values: dict, prefix: str = "") -> None:
        if self.wb is not None:
            flat = _flatten(values, prefix)
            self._call("log", self.wb.log,
                       {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def summary(self, values: dict, prefix: str = "") -> None:
        if self.wb is not None:
            self._call("summary", lambda: self.wb.summary.update(_flatten(values, prefix)))

    def table(self, name: str, rows: list[dict]) -> None:
        if self.wb is not None and rows:
            import wandb

            columns = list(rows[0])
            self._call("table", lambda: self.wb.log(
                {name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}))

    def finish(self, failed: bool = False) -> None:
        if self.wb is not None:
            self._call("finish", self.wb.finish, exit_code=1 if failed else 0)
            self.wb = None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        """Runs one wandb call; on an error, warns and stops tracking, so the run carries on."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracking failure must not end the run
            sync = self._sync_dir()
            self.wb = None  # later calls do nothing: a half-working tracker would warn on every step
            log.warning("wandb %s failed (%s); the run continues without tracking; what was recorded is in %s, "
                        "upload it later with `wandb sync %s`", what, _reason(e), sync, sync)

    def _sync_dir(self) -> str:
        try:
            return str(self.wb.settings.sync_dir)
        except Exception:  # noqa: BLE001 - only the warning's text depends on it
            return "the run directory's wandb/"

    def _give_up(self, what: str) -> None:
        self.mode, self.wb = "disabled", None
        log.warning("%s; the run continues without tracking", what)


def _reason(e: BaseException) -> str:
    """The exception's type and its message's first line: wandb's own messages run to several."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _flatten(values: dict, prefix: str) -> dict:
    out = {}
    for k, v in values.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
