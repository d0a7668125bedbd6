"""The tool-call verifier judges BFCL's tests as BFCL's own AST checker does (bench/bfcl_agreement.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("jsonschema")
if importlib.util.find_spec("bfcl_eval") is None:
    pytest.skip("needs the bfcl-eval package (scripts/install.sh installs it)", allow_module_level=True)

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture(scope="module")
def agreement():
    sys.path.insert(0, str(BENCH))
    try:
        import bfcl_agreement
    finally:
        sys.path.remove(str(BENCH))
    return bfcl_agreement


@pytest.fixture(scope="module")
def rows(agreement):
    return agreement.compare(agreement.CATEGORIES)


def test_the_verifier_agrees_with_bfcl_on_at_least_99_percent_of_candidates(rows):
    judged = [r for r in rows if isinstance(r["bfcl"], bool)]
    assert len(judged) > 20_000  # every single-turn AST category, ~11 candidates per test
    disagree = [r for r in judged if r["bfcl"] != r["distill"]]
    assert len(disagree) / len(judged) <= 0.01, disagree[:5]


def test_the_candidates_hold_right_and_wrong_answers_of_every_kind(rows):
    """An agreement that cannot fail proves nothing: both checkers must see accepted and rejected
    calls, the right ones accepted and the broken ones rejected."""
    by_kind = Counter((r["kind"], r["bfcl"]) for r in rows)
    for kind in ("first values", "last values", "optional left out", "reversed order", "upper case",
                 "punctuation dropped", "int for float"):
        assert by_kind[(kind, True)] > 0.98 * (by_kind[(kind, True)] + by_kind[(kind, False)]), kind
    for kind in ("other function", "unknown argument", "changed value", "other type", "required dropped",
                 "call missing", "call repeated", "float for int", "int for bool"):
        assert by_kind[(kind, False)] > 0.98 * (by_kind[(kind, True)] + by_kind[(kind, False)]), kind
