"""tool-tasks: every generated conversation is well formed, its expected calls pass the tool-call
verifier and copy values written in the request, and the params shape the mix."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from distill.prompts import conversation, load_prompts
from distill.prompts.tool_tasks import CATEGORIES, CHAT, ToolTasksParams, catalogue, generate_tool_tasks
from distill.verifiers import VerifyContext
from distill.verifiers.tool_call import ToolCallParams, verify_tool_call

from test_prompts import recipe_with


def generate(**kw) -> list[dict]:
    return list(generate_tool_tasks(ToolTasksParams(**{"count": 500, "seed": 0, "multi_turn": 0.2, **kw})))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate()


def expected(row: dict) -> list[dict]:
    return json.loads(row["reference"])["expected"]


def hermes(calls: list[dict]) -> str:
    """The completion that makes exactly these calls; a plain reply for none."""
    blocks = [f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n</tool_call>"
              for c in calls]
    return "\n".join(blocks) or "Sure! Here is my answer, no tool needed."


def scores(rows: list[dict], completions: list[str]) -> list[float | None]:
    verdicts = verify_tool_call(completions, [r["reference"] for r in rows], ToolCallParams(),
                                VerifyContext.blank(len(rows)))
    return [v.score for v in verdicts]


def family_of(tool: dict) -> str:
    return catalogue()["functions"][tool["function"]["name"]]["family"]


def written(value, text: str) -> bool:
    """The value as the request writes it: a string verbatim, a number not part of a longer one."""
    if isinstance(value, str):
        return value in text
    return re.search(rf"(?<![\d.]){re.escape(json.dumps(value))}(?!\d|\.\d)", text) is not None


def test_rows_are_valid_conversations(rows):
    assert len(rows) == 500
    for r in rows:
        assert set(r) == {"question", "reference", "messages", "tools", "category", "family"}
        assert conversation.problems(r["messages"], r["tools"]) == [], r["messages"]
        assert r["messages"][-1] == {"role": "user", "content": r["question"]}
        assert r["messages"][0] == {"role": "system", "content": ToolTasksParams(count=1).system_prompt}
        assert json.loads(r["reference"])["tools"] == r["tools"]
        assert r["category"] in CATEGORIES


def test_expected_calls_score_full_marks_and_others_do_not(rows):
    assert scores(rows, [hermes(expected(r)) for r in rows]) == [1.0] * len(rows)
    # The verifier is not trivially satisfied: a reply where a call is due, a call where none is, fail.
    wrong = [hermes([]) if expected(r) else hermes([{"name": r["tools"][0]["function"]["name"], "arguments": {}}])
             for r in rows]
    assert scores(rows, wrong) == [0.0] * len(rows)


def test_call_values_are_written_in_the_request(rows):
    checked = 0
    for r in rows:
        for call in expected(r):
            for arg, value in call["arguments"].items():
                if isinstance(value, bool):  # implied by the wording ("unread emails"), not copied
                    assert "unread" in r["question"]
                    continue
                assert written(value, r["question"]), (arg, value, r["question"])
                checked += 1
    assert checked > 1000


def test_calls_and_tools_fit_the_category(rows):
    for r in rows:
        calls, offered = expected(r), [t["function"]["name"] for t in r["tools"]]
        assert {c["name"] for c in calls} <= set(offered)
        if r["category"] == "single":
            assert len(calls) == 1 and len(offered) == 1
        elif r["category"] == "multiple":
            assert len(calls) == 1 and 2 <= len(offered) <= 4
        elif r["category"] == "parallel":
            assert 2 <= len(calls) <= 3 and len(offered) <= 4
        else:
            assert calls == [] and 1 <= len(offered) <= 4


def test_no_call_rows_offer_no_tool_that_serves_the_request(rows):
    families = catalogue()["families"]
    no_call = [r for r in rows if r["category"] == "no_call"]
    assert {r["family"] for r in no_call} > {CHAT}  # chit-chat and other families' requests
    for r in no_call:
        unfit = {r["family"], *families.get(r["family"], {}).get("overlaps", [])}
        for tool in r["tools"]:
            assert family_of(tool) not in unfit, (r["question"], tool["function"]["name"])
            assert not families[family_of(tool)].get("general"), (r["question"], tool["function"]["name"])


def test_category_mix_follows_mix(rows):
    assert Counter(r["category"] for r in rows) == {"single": 175, "multiple": 150, "parallel": 75, "no_call": 100}
    custom = generate(count=41, mix={"single": 1, "no_call": 3})
    assert Counter(r["category"] for r in custom) == {"single": 10, "no_call": 31}


def test_seeded_and_distinct(rows):
    assert generate() == rows
    assert generate(seed=1) != rows
    assert len({json.dumps([r["messages"], r["tools"]], sort_keys=True) for r in rows}) == len(rows)


def test_multi_turn_rows_hold_a_finished_exchange(rows):
    earlier = [r for r in rows if len(r["messages"]) > 2]
    assert 60 <= len(earlier) <= 140  # multi_turn 0.2 of 500
    for r in earlier:
        _system, user, call, result, answer, request = r["messages"]
        assert [user["role"], call["role"], result["role"], answer["role"]] == ["user", "assistant", "tool", "assistant"]
        (made,) = call["tool_calls"]
        assert made["function"]["name"] in [t["function"]["name"] for t in r["tools"]]
        assert result["tool_call_id"] == made["id"]
        assert json.loads(result["content"]) and answer["content"]
        asked = {"name": made["function"]["name"], "arguments": json.loads(made["function"]["arguments"])}
        assert asked not in expected(r) and user["content"] != request["content"]
    assert all(len(r["messages"]) == 2 for r in generate(count=50, multi_turn=0))


def test_every_request_template_is_used():
    """A template whose values cannot be drawn (say, 3 cities sharing one 2-value pool) never
    yields a row; this finds it."""
    cat = catalogue()
    texts = [t if isinstance(t, str) else t["text"] for fn in cat["functions"].values() for t in fn["templates"]]
    texts += [t["text"] for f in cat["families"].values() for t in f.get("parallel", [])] + cat["chat"]["templates"]
    patterns = {t: re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)) + "$") for t in texts}
    questions = [r["question"] for r in generate(count=3000, multi_turn=0)]
    unused = [t for t, p in patterns.items() if not any(p.match(q) for q in questions)]
    assert unused == []


def test_families_choose_the_tools():
    picked = generate(count=100, families=["weather", "units"])
    assert {r["family"] for r in picked} <= {"weather", "units", CHAT}
    assert {family_of(t) for r in picked for t in r["tools"]} == {"weather", "units"}


@pytest.mark.parametrize("params, message", [
    ({"families": ["wether"]}, "unknown tool family 'wether' (did you mean 'weather'?)"),
    ({"mix": {"single": 0, "no_call": 0}}, "give at least one category a weight above 0"),
    ({"mix": {"singel": 1}}, "Input should be 'single', 'multiple', 'parallel' or 'no_call'"),
    ({"tools_offered": [0, 3]}, "[0, 3] is not a range [min, max] with 1 <= min <= max <= 10"),
    ({"tools_offered": [4, 2]}, "[4, 2] is not a range"),
    ({"tools_offered": [2, 11]}, "[2, 11] is not a range"),
    ({"families": ["units"]}, "mix.multiple: the families units have one function"),
    ({"families": ["web_search"], "mix": {"no_call": 1}}, "mix.no_call: the tools of web_search serve almost any"),
])
def test_bad_params_say_what_is_wrong(params, message):
    with pytest.raises(ValidationError) as info:
        ToolTasksParams(count=10, **params)
    assert message in str(info.value)


def test_loads_through_a_recipe(tmp_path):
    recipe = recipe_with(tmp_path, "- {source: tool-tasks, count: 40, seed: 2, multi_turn: 0.5}\n")
    loaded = load_prompts(recipe.prompts.train, "train")
    assert len(loaded) == 40
    assert {r["category"] for r in loaded} == set(CATEGORIES)
    for r in loaded:
        assert r["source"] == "tool-tasks" and r["source_licence"] == "apache-2.0"
        messages, tools = json.loads(r["messages"]), json.loads(r["tools"])
        assert messages[-1] == {"role": "user", "content": r["question"]}
        assert json.loads(r["reference"])["tools"] == tools
