"""Fixtures and hooks shared by every test: the tiny model, a finished student run, an S3 bucket
on loopback, and the GPU skip. The helpers behind them live in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.models import build_tiny_model
from support.student import run_student_pipeline


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def student_run(tiny_model, tmp_path_factory) -> dict:
    """A finished student run (fake sampling and evaluation, real training), one per module."""
    return run_student_pipeline(tiny_model, tmp_path_factory.mktemp("student"))


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch):
    """An empty bucket in moto's S3 server on loopback, which s3fs is pointed at; yields its
    URI. Run directories' local copies go under tmp_path/cache. Nothing leaves the machine."""
    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "DISTILL_LINEAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        import urllib.request

        # moto keeps its buckets per process, not per server: start from none.
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
        # fsspec reads FSSPEC_S3_* variables once, at import: set its config directly.
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
        fs = fsspec.filesystem("s3")
        fs.mkdir("distill-test")
        yield "s3://distill-test"
    finally:
        server.stop()
