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
    """A thin layer over a wandb run; every method is a no-op when tracking is disabled."""

    def __init__(self, run, stage_names: list[str] | None = None):
        t = run.recipe.tracking
        self.mode = resolve_mode(t.wandb)
        self.wb = None
        if self.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # distill prints its own summary
        self.wb = wandb.init(
            project=t.project, entity=t.entity, mode=self.mode, dir=str(run.dir),
            group=run.id, name=f"{run.recipe.name}-{run.id}", job_type="distill-run",
            config={"recipe": run.recipe.resolved(), "recipe_hash": run.recipe_hash, "run_id": run.id,
                    "code_version": run.code_version, "teacher": run.teacher.model_dump(mode="json")},
            tags=["distill"] + (stage_names or []),
            settings=wandb.Settings(console="off", save_code=False, x_disable_stats=True),
            reinit="finish_previous",
        )

    @property
    def active(self) -> bool:
        return self.wb is not None

    def log(self, values: dict, prefix: str = "") -> None:
        if self.wb is not None:
            flat = _flatten(values, prefix)
            self.wb.log({k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def summary(self, values: dict, prefix: str = "") -> None:
        if self.wb is not None:
            self.wb.summary.update(_flatten(values, prefix))

    def table(self, name: str, rows: list[dict]) -> None:
        if self.wb is not None and rows:
            import wandb

            columns = list(rows[0])
            self.wb.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def finish(self, failed: bool = False) -> None:
        if self.wb is not None:
            self.wb.finish(exit_code=1 if failed else 0)
            self.wb = None


def _flatten(values: dict, prefix: str) -> dict:
    out = {}
    for k, v in values.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
