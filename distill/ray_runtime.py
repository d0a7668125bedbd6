"""Ray start-up for the driver: a local Ray for a laptop run, or the recipe's cluster."""

from __future__ import annotations

import os


def start_ray(address: str | None = None, verbose: bool = False) -> None:
    """Connects to `address` (None: starts a local Ray); does nothing when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    # A data factory does not report usage to anyone unless its user opts in.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=verbose,  # worker logs (vLLM's included) stay in Ray's session log folder
        logging_level="INFO" if verbose else "WARNING",
    )
