"""judge: the template renders question, answer and reference; the verdict is read at the
judge's conclusion; failures are None, never a guess."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from distill.stages.verify import VerifyContext
from distill.verifiers import VERIFIERS
from distill.verifiers.judge import JudgeParams, judge_prompt, read_verdict, verify_with_judge

P = JudgeParams(model="judge-model")


@pytest.mark.parametrize("text, score", [
    ("The arithmetic checks out.\nVERDICT: CORRECT", 1.0),
    ("VERDICT: INCORRECT", 0.0),
    ("verdict: correct", 1.0),  # case does not matter
    ("**VERDICT: CORRECT**", 1.0),
    # It changed its mind: the last verdict wins.
    ("At first VERDICT: CORRECT, but 3 + 4 is 7, not 8.\nVERDICT: INCORRECT", 0.0),
    ("I think the answer is right.", None),
    ("", None),
    (None, None),
])
def test_read_verdict(text, score):
    assert read_verdict(text, P).score == score


def test_own_labels_and_pattern():
    p = JudgeParams(model="m", pattern=r"Score:\s*(\w+)", labels={"good": 1.0, "partial": 0.5, "bad": 0.0})
    assert read_verdict("Score: partial", p).score == 0.5
    v = read_verdict("Score: awful", p)
    assert v.score is None and "not one of" in v.reason


@pytest.mark.parametrize("params, message", [
    ({"model": "m", "pattern": "VERDICT"}, "needs a group"),
    ({"model": "m", "pattern": "(["}, "not a regular expression"),
    ({"model": "m", "labels": {"yes": 2.0}}, "score in"),
    ({"model": "m", "template": "missing.jinja"}, "template file not found"),
    ({}, "model"),
])
def test_bad_params(params, message):
    with pytest.raises(ValidationError, match=message):
        JudgeParams(**params)


def test_the_shipped_template_shows_the_reference_only_when_there_is_one():
    with_ref = judge_prompt(P, "What is 3 + 4?", "It is 7.", "7")
    without = judge_prompt(P, "Name a colour.", "Blue.", None)
    assert "What is 3 + 4?" in with_ref and "It is 7." in with_ref and "Reference answer:\n7" in with_ref
    assert "Reference answer" not in without and "Blue." in without
    assert "VERDICT: CORRECT" in with_ref


def test_own_template(tmp_path):
    (tmp_path / "t.jinja").write_text("Q={{ question }} A={{ answer }} R={{ reference }}")
    p = JudgeParams.model_validate({"model": "m", "template": "t.jinja"}, context={"base_dir": tmp_path})
    assert judge_prompt(p, "q", "a", "r") == "Q=q A=a R=r"


class Judge:
    """Says CORRECT when the answer holds the reference; fails the request for 'boom'."""

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            text = r["messages"][0]["content"]
            answer = text.split("Answer to grade:\n")[1]
            ref = text.split("Reference answer:\n")[1].split("\n")[0] if "Reference answer:" in text else None
            if "boom" in answer:
                out.append({"work_id": r["work_id"], "text": None, "error": "engine died"})
            else:
                ok = ref is not None and ref in answer
                out.append({"work_id": r["work_id"], "text": f"VERDICT: {'CORRECT' if ok else 'INCORRECT'}", "error": ""})
        yield out[:1]
        yield out[1:]  # in two batches, as real backends do


def test_judging_a_batch():
    judge = Judge()
    ctx = VerifyContext(questions=["What is 1+1?", "What is 2+2?", "x"], finish_reasons=["stop"] * 3,
                        backend_for=lambda model: judge)
    verdicts = verify_with_judge(["It is 2.", "It is 5.", "boom"], ["2", "4", "1"], P, ctx)
    assert [v.score for v in verdicts] == [1.0, 0.0, None]
    assert "engine died" in verdicts[2].reason
    assert all(r["sampling_params"]["temperature"] == 0.0 for r in judge.requests)


def test_judge_outside_a_run_says_why():
    with pytest.raises(RuntimeError, match="needs a model backend"):
        verify_with_judge(["a"], ["b"], P, VerifyContext(["q"], ["stop"]))


def test_registered_as_a_model_verifier():
    entry = VERIFIERS.get("judge")
    assert entry.uses_model and entry.fn is verify_with_judge
    [spec] = yaml.safe_load(entry.example)["verifiers"]
    spec.pop("name"), spec.pop("required")
    JudgeParams(**spec)
