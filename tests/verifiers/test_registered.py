"""Every registered verifier documents itself for `distill ls`, and its example is a valid recipe entry."""

from __future__ import annotations

import pytest
import yaml

from distill.verifiers import VERIFIERS


def test_the_builtin_verifiers_are_registered():
    assert {"final-number", "math", "tool-call", "reasoning-format"} <= set(VERIFIERS.names())


@pytest.mark.parametrize("name", VERIFIERS.names())
def test_summary_and_example(name):
    entry = VERIFIERS.get(name)
    assert entry.summary and "\n" not in entry.summary
    [spec] = yaml.safe_load(entry.example)["verifiers"]
    assert spec.pop("name") == name
    for key in ("required", "threshold"):  # the recipe's own keys beside the verifier's
        spec.pop(key, None)
    entry.params(**spec)
