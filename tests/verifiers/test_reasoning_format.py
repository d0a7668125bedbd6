import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, VerifyContext
from distill.verifiers.reasoning_format import ReasoningFormatParams, verify_reasoning_format


def verdict(completion, reference=None, **params):
    [v] = verify_reasoning_format([completion], [reference], ReasoningFormatParams(**params), VerifyContext.blank(1))
    return v


@pytest.mark.parametrize(
    "completion, params, expected",
    [
        ("<think>2 + 2 is 4.</think>The answer is 4.", {}, 1.0),
        ("\n<think>\nAdd them.\n</think>\n\n4", {}, 1.0),
        ("<think>Add them.</think>4", {}, 1.0),
        ("The answer is 4.", {}, 0.0),  # no think block
        ("<think>Add them, 2 + 2 is", {}, 0.0),  # truncated: never closed
        ("<think>Add them.</think>", {}, 0.0),  # no answer
        ("<think>Add them.</think>  \n ", {}, 0.0),
        ("<think>\n\n</think>\n\n4", {}, 0.0),  # empty thinking: thinking was switched off
        ("<think>\n\n</think>\n\n4", {"min_thinking": None}, 1.0),
        ("Sure! <think>Add them.</think>4", {}, 0.0),  # text before the block
        ("<think>a</think><think>b</think>4", {}, 0.0),  # twice
        ("<think>a</think>4</think>", {}, 0.0),  # a stray close tag in the answer
        ("</think>Add them.<think>4", {}, 0.0),  # close before open
        # The template put <think> in the prompt: the completion starts inside the block.
        ("Add them.</think>4", {}, 0.0),
        ("Add them.</think>4", {"require_open_tag": False}, 1.0),
        ("<think>Add them.</think>4", {"require_open_tag": False}, 1.0),
        ("Add them, 2 + 2 is", {"require_open_tag": False}, 0.0),  # truncated
        # Length bounds, inclusive, in words by default.
        ("<think>one two three</think>four", {"min_thinking": 3, "max_thinking": 3}, 1.0),
        ("<think>one two</think>four", {"min_thinking": 3}, 0.0),
        ("<think>one two three four</think>five", {"max_thinking": 3}, 0.0),
        ("<think>one</think>a b c", {"max_answer": 2}, 0.0),
        ("<think>one</think>a b", {"min_answer": 2, "max_answer": 2}, 1.0),
        ("<think>one</think>a", {"min_answer": 2}, 0.0),
        ("<think>一二三四五</think>六", {"length_unit": "chars", "min_thinking": 5}, 1.0),
        ("<think>一二三四五</think>六", {"min_thinking": 5}, 0.0),  # one word without spaces
        ("<think>abcdef</think>xy", {"length_unit": "chars", "max_thinking": 5}, 0.0),
        # Other tag names.
        ("<reasoning>Add.</reasoning>4", {"open_tag": "<reasoning>", "close_tag": "</reasoning>"}, 1.0),
        ("<think>Add.</think>4", {"open_tag": "<reasoning>", "close_tag": "</reasoning>"}, 0.0),
        ("", {}, 0.0),
        (None, {}, 0.0),
    ],
)
def test_reasoning_format_table(completion, params, expected):
    assert verdict(completion, **params).score == expected


@pytest.mark.parametrize(
    "completion, params, reason",
    [
        ("<think>Add them.</think>The answer is 4.", {}, "thinking 2 words, answer 4 words"),
        ("The answer is 4.", {}, "no <think> block"),
        ("<think>Add them, 2 + 2 is", {}, "<think> block not closed (truncated generation?)"),
        ("<think>Add them.</think>\n", {}, "no answer after </think>"),
        ("Sure! <think>Add.</think>4", {}, "text before <think>: 'Sure!'"),
        ("<think>a</think><think>b</think>4", {}, "<think> appears 2 times and </think> 2 times; expected once each"),
        ("Add.</think>4", {}, "</think> without <think>"),
        ("</think>Add.<think>4", {}, "</think> comes before <think>"),
        ("<think>one two</think>a b c", {"min_thinking": 3, "max_answer": 2},
         "thinking is 2 words, below min_thinking 3; answer is 3 words, above max_answer 2"),
        ("<think>abcdef</think>x", {"length_unit": "chars", "max_thinking": 5}, "thinking is 6 chars, above max_thinking 5"),
    ],
)
def test_reasoning_format_reasons(completion, params, reason):
    assert verdict(completion, **params).reason == reason


def test_reasoning_format_ignores_reference():
    completions = ["<think>a</think>4", "4"]
    verdicts = verify_reasoning_format(completions, ["5", None], ReasoningFormatParams(), VerifyContext.blank(2))
    assert [v.score for v in verdicts] == [1.0, 0.0]


def test_reasoning_format_registered_with_params():
    entry = VERIFIERS.get("reasoning-format")  # the documented example is checked for every verifier in test_registered.py
    assert entry.fn is verify_reasoning_format and entry.params is ReasoningFormatParams


@pytest.mark.parametrize(
    "bad",
    [
        {"max_thinking_words": 10},  # unknown key
        {"min_thinking": -1},
        {"min_answer": 10, "max_answer": 5},
        {"open_tag": ""},
        {"open_tag": "|", "close_tag": "|"},
        {"length_unit": "tokens"},
    ],
)
def test_reasoning_format_params_rejected(bad):
    with pytest.raises(ValidationError):
        ReasoningFormatParams(**bad)


@pytest.mark.parametrize("finish, params, passed, reason", [
    ("stop", {}, True, "thinking"),
    ("length", {}, False, "truncated"),
    ("length", {"reject_truncated": False}, True, "thinking"),
    (None, {}, True, "thinking"),  # no finish reason known: judged from the text alone
])
def test_reasoning_format_sees_the_finish_reason(finish, params, passed, reason):
    from types import SimpleNamespace

    from distill.stages.verify import verify_batch

    spec = SimpleNamespace(name="reasoning-format", required=True, threshold=1.0, params=ReasoningFormatParams(**params))
    [[v]] = verify_batch([spec], ["<think>add them</think> 5"], [None], finish_reasons=[finish])
    assert v["passed"] is passed and reason in v["reason"]
