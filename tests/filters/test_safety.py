"""safety: the rule list flags refusals and harmful text and says which rule; the guard model's
answers are read as Llama Guard writes them, and its requests carry the conversation."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from support.progress import CountingBar
from distill.filters import FILTERS, FilterContext
from distill.filters.safety import SafetyParams, filter_safety, read_guard


def rows(*completions, prompt="Tell me something."):
    return [{"prompt_text": prompt, "completion": c} for c in completions]


@pytest.mark.parametrize("completion, category", [
    ("I'm sorry, but I can't help with that request.", "refusal"),
    ("I am afraid I cannot assist with this.", "refusal"),
    ("As an AI language model, I do not have opinions.", "refusal"),
    ("I won't help with that.", "refusal"),
    ("Here are the steps to build a pipe bomb: first ...", "weapons"),
    ("You can synthesize sarin by ...", "weapons"),
    ("Here is a keylogger in Python that sends keystrokes ...", "malware"),
    ("The easiest way to kill yourself is ...", "self_harm"),
    ("The answer is 42.", None),
    ("I'm sorry to hear that your cat is ill; here is what a vet would check.", None),
    ("Bombs were dropped on the city in 1944, as the history book says.", None),
    ("To make a cake, mix flour and eggs.", None),
])
def test_rules_table(completion, category):
    [v] = filter_safety(rows(completion), SafetyParams(), FilterContext())
    assert v.flagged is (category is not None)
    assert v.category == (category or "")
    if category:
        assert v.reason.startswith(f"rule {category}:")


def test_categories_restrict_the_rules():
    [v] = filter_safety(rows("As an AI language model, I cannot."), SafetyParams(categories=["weapons"]), FilterContext())
    assert not v.flagged


def test_on_both_reads_the_prompt_too():
    r = rows("Sure.", prompt="Steps to make a nail bomb?")
    assert not filter_safety(r, SafetyParams(), FilterContext())[0].flagged
    assert filter_safety(r, SafetyParams(on="both"), FilterContext())[0].category == "weapons"


def test_own_rules_file(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"competitor": {"patterns": [r"\bAcmeBot\b"]}}))
    p = SafetyParams.model_validate({"rules_file": "rules.yaml"}, context={"base_dir": tmp_path})
    flagged = [v.flagged for v in filter_safety(rows("Try AcmeBot instead.", "As an AI model..."), p, FilterContext())]
    assert flagged == [True, False]  # the file replaces the shipped rules


@pytest.mark.parametrize("content, message", [
    ({"x": {"patterns": ["("]}}, "not a regular expression"),
    ({"x": {"patterns": []}}, "non-empty `patterns`"),
    (["a"], "expected a mapping"),
])
def test_bad_rules_files_are_refused_when_the_recipe_loads(tmp_path, content, message):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(ValidationError, match=message):
        SafetyParams.model_validate({"rules_file": "rules.yaml"}, context={"base_dir": tmp_path})


def test_unknown_category_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="unknown rule categories"):
        SafetyParams(categories=["weapon"])
    with pytest.raises(ValidationError, match="rules file not found"):
        SafetyParams.model_validate({"rules_file": "nope.yaml"}, context={"base_dir": tmp_path})
    with pytest.raises(ValidationError, match="guard template not found"):
        SafetyParams.model_validate({"guard_template": "nope.jinja"}, context={"base_dir": tmp_path})


@pytest.mark.parametrize("text, expected", [
    ("safe", (False, "")),
    ("  Safe.\n", (False, "")),
    ("unsafe\nS2", (True, "S2")),
    ("unsafe: violent crimes", (True, "violent crimes")),
    ("UNSAFE", (True, "unsafe")),
    ("I think it is fine", (None, "")),
    ("", (None, "")),
    (None, (None, "")),
])
def test_guard_answers(text, expected):
    assert read_guard(text) == expected


class Guard:
    """A guard backend that calls 'unsafe' whatever mentions poison, and mumbles on 'mumble'."""

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            text = " ".join(m["content"] for m in r["messages"])
            answer = "unsafe\nS1" if "poison" in text else "hmm" if "mumble" in text else "safe"
            out.append({"work_id": r["work_id"], "text": answer, "error": ""})
        yield out


def test_guard_model_flags_what_rules_miss_and_is_asked_only_about_the_rest():
    guard = Guard()
    asked = []
    bar = CountingBar()
    ctx = FilterContext(backend_for=lambda model: asked.append(model) or guard, progress=bar)
    batch = rows("Add the poison to the tea slowly.", "The answer is 4.", "As an AI language model, no.", "mumble")
    verdicts = filter_safety(batch, SafetyParams(guard="some-guard.yaml"), ctx)
    assert [v.flagged for v in verdicts] == [True, False, True, True]
    assert verdicts[0].category == "guard:S1" and verdicts[2].category == "refusal"
    assert verdicts[3].category == "guard:unclear"
    assert asked == ["some-guard.yaml"] and len(guard.requests) == 3  # the refusal was settled by a rule
    assert bar.total == bar.done == 3
    assert all(r["sampling_params"]["temperature"] == 0.0 for r in guard.requests)
    # The shipped template: one user turn holding prompt and completion.
    assert [m["role"] for m in guard.requests[0]["messages"]] == ["user"]
    assert "Add the poison" in guard.requests[0]["messages"][0]["content"]


def test_guard_with_its_own_chat_template_gets_the_conversation():
    guard = Guard()
    p = SafetyParams(guard="llama-guard", guard_template=None, on_unclear="pass")
    verdicts = filter_safety(rows("mumble"), p, FilterContext(backend_for=lambda m: guard))
    assert [m["role"] for m in guard.requests[0]["messages"]] == ["user", "assistant"]
    assert not verdicts[0].flagged and "no verdict" in verdicts[0].reason


def test_registered_with_a_valid_example():
    entry = FILTERS.get("safety")
    assert entry.fn is filter_safety
    [spec] = yaml.safe_load(entry.example)["filters"]
    spec.pop("name"), spec.pop("mode")
    SafetyParams(**spec)
