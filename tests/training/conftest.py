"""Fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def local_ray(monkeypatch):
    """A local Ray of two logical CPUs, one per Ray Train worker: Ray Train's controller and
    distill's progress relay ask for none, and the driver holds none, so nothing else can take a
    worker's slot."""
    import ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
