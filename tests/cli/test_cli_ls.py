"""`distill ls`: every registered component is listed from the registries; `distill ls NAME`
documents one (its module's text, parameters with defaults, an example)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.filters import FILTERS
from distill.verifiers import VERIFIERS

runner = CliRunner()


def test_ls_lists_every_verifier_and_filter():
    out = runner.invoke(app, ["ls"], terminal_width=200)
    assert out.exit_code == 0
    for name in VERIFIERS.names() + FILTERS.names():
        assert name in out.stdout, name
    assert len(FILTERS.names()) >= 7  # exact-dedup, near-dedup, decontaminate, pii, safety, length, language


@pytest.mark.parametrize("name", sorted(set(VERIFIERS.names() + FILTERS.names())))
def test_ls_name_documents_one_component(name):
    out = runner.invoke(app, ["ls", name], terminal_width=200)
    assert out.exit_code == 0, out.output
    registry = VERIFIERS if name in VERIFIERS else FILTERS
    entry = registry.get(name)
    assert " ".join(entry.summary.split()) in " ".join(out.stdout.split())
    assert "parameters" in out.stdout and "example:" in out.stdout
    for key in entry.params.model_fields:
        assert key in out.stdout, key


def test_ls_unknown_name_suggests_the_closest():
    out = runner.invoke(app, ["ls", "safty"])
    assert out.exit_code == 2
    assert "did you mean 'safety'?" in out.output
