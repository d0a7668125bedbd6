"""Recall of the redaction on planted values, per kind, against floors measured on this code.

A planted value is found when none of its words (3+ letters or digits) is left in the redacted
text. PLANTED grew together with the rules; HELD_OUT was written afterwards and never tuned
against, so its figures are the ones to quote. The floors are the recall measured when they were
set (as fractions of the table): a lower figure is a regression; a higher one, a reason to raise
the floor. With NER is measured where the `ner` extra is installed (scripts/install.sh does it).
"""

from collections import Counter

import pytest

from distill.filters.ner import load_ner
from distill.usage.records import Call, Source
from distill.usage.redaction import KINDS, Redactor
from support.usage_logs import HELD_OUT, PLANTED, words

FLOORS = {  # (table, ner) -> kind -> found / planted, as measured
    ("planted", False): {"person": 18 / 20},
    ("planted", True): {"person": 19 / 20},
    ("held-out", False): {"person": 14 / 20, "address": 8 / 10},
    ("held-out", True): {"person": 15 / 20, "address": 8 / 10},
}
TABLES = {"planted": PLANTED, "held-out": HELD_OUT}

# Agent traffic with nothing to redact: cities, products, versions, dates, code, ids of things.
BENIGN = [
    "What is the weather in Paris tomorrow?", "Call get_weather with city=Berlin.",
    "The meeting is on Monday, March 3 at 10:00.", "Order #48213 shipped via DHL, 3 items.",
    "Use version 2.3.1 of the SDK.", "The answer is 42.", "Microsoft Teams and Google Drive are integrated.",
    "Flight LH400 departs Frankfurt at 13:05 from gate B44.", "Summarise the Q3 report for the Finance Team.",
    "Install numpy 1.26.4 with pip.", "The Eiffel Tower is 330 m tall.", "Set max_tokens to 512 and temperature to 0.7.",
    "Bill Payment is due on the 5th.", "Total: 1,234.56 EUR", "Room 101 is on floor 3.", "Hello World",
    "def main():\n    return Path('data') / 'x.json'", "Amazon Web Services (AWS) region us-east-1",
    "Invoice INV-2024-0042 for ACME GmbH", "New York and Los Angeles", "Step 2: Drive to the airport.",
    "HTTP 404 Not Found", "Thanks!\nThe Support Team", "ISO 8601 date 2025-05-01T10:00:00Z",
    "invalid_api_key: Incorrect API key provided", '{"name": "get_weather", "city": "Lisbon"}',
]


def calls_of(texts: list[str]) -> list[Call]:
    return [Call(Source("planted", i), "openai", str(i), prompt=[{"role": "user", "content": t}], completion=[])
            for i, t in enumerate(texts)]


def recall(table, use_ner: bool) -> tuple[dict[str, float], list[str]]:
    calls = calls_of([context.format(value) for _, value, context in table])
    Redactor(use_ner).redact(calls)
    found, planted, missed = Counter(), Counter(), []
    for (kind, value, context), call in zip(table, calls):
        text = call.prompt[0]["content"]
        planted[kind] += 1
        if any(w in text for w in words(value) if w not in context):
            missed.append(f"{kind}: {text!r}")
        else:
            found[kind] += 1
    return {k: found[k] / planted[k] for k in planted}, missed


def test_every_kind_is_planted_in_both_tables():
    for table in TABLES.values():
        assert {kind for kind, _, _ in table} == set(KINDS)


@pytest.mark.parametrize("name, use_ner", list(FLOORS), ids=[f"{t}-{'ner' if n else 'rules'}" for t, n in FLOORS])
def test_recall_per_kind_is_at_its_floor(name, use_ner):
    if use_ner and load_ner() is None:
        pytest.skip("the ner extra is not installed (pip install 'distill[ner]')")
    measured, missed = recall(TABLES[name], use_ner)
    floors = {kind: FLOORS[(name, use_ner)].get(kind, 1.0) for kind in KINDS}
    below = {k: f"{measured[k]:.2f} < {floors[k]:.2f}" for k in KINDS if measured[k] < floors[k] - 1e-9}
    assert not below, f"{below}; missed: {missed}"


def test_ordinary_agent_text_is_left_alone():
    calls = calls_of(BENIGN)
    Redactor().redact(calls)
    changed = [(text, call.prompt[0]["content"]) for text, call in zip(BENIGN, calls) if call.redactions]
    assert changed == []
