"""Conversation prompts with tools: read from JSONL, Parquet and `datasets`, ids over the whole
conversation, every bad row reported at once with its place."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.prompts import conversation, load_prompts, prompt_id
from distill.recipe import RecipeError

from test_prompts import recipe_with, write_jsonl

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
EARLIER = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 3}'},
    {"role": "assistant", "content": "3 degrees in Oslo."},
]
ROWS = [
    {"conv": [{"role": "system", "content": "You book things."}, {"role": "user", "content": "Weather in Rome?"}],
     "fns": [WEATHER], "ref": {"expected": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}, "kind": "single"},
    {"conv": EARLIER + [{"role": "user", "content": "And in Paris?"}], "fns": [WEATHER],
     "ref": {"expected": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}, "kind": "multi_turn"},
    {"conv": [{"role": "user", "content": "Tell me a joke"}], "fns": [WEATHER], "ref": {"expected": []},
     "kind": "no_call"},
]
SOURCE = """\
- source: {fmt}
  path: {path}
  messages_field: conv
  tools_field: fns
  answer_field: ref
  category_field: kind
  licence: apache-2.0
"""


def _read(tmp_path: Path, fmt: str, rows: list[dict]) -> list[dict]:
    if fmt == "jsonl":
        write_jsonl(tmp_path / "c.jsonl", rows)
        path = "c.jsonl"
    elif fmt == "parquet":  # nested columns as JSON text, as tables often hold them
        table = pa.Table.from_pylist([{k: json.dumps(v) if k != "kind" else v for k, v in r.items()} for r in rows])
        pq.write_table(table, tmp_path / "c.parquet")
        path = "c.parquet"
    else:
        from datasets import Dataset

        Dataset.from_list([{**r, "conv": json.dumps(r["conv"]), "fns": json.dumps(r["fns"]),
                            "ref": json.dumps(r["ref"])} for r in rows]).save_to_disk(str(tmp_path / "ds"))
        path = "ds"
    recipe = recipe_with(tmp_path, SOURCE.format(fmt=fmt, path=path))
    return load_prompts(recipe.prompts.train, "train")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf-disk"])
def test_conversation_rows_keep_turns_tools_reference_and_category(tmp_path, fmt):
    rows = _read(tmp_path, fmt, ROWS)
    assert [r["category"] for r in rows] == ["single", "multi_turn", "no_call"]
    assert [r["question"] for r in rows] == ["Weather in Rome?", "And in Paris?", "Tell me a joke"]
    second = rows[1]
    turns = json.loads(second["messages"])
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant", "user"]
    assert turns[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert turns[2]["tool_call_id"] == "c1"
    assert json.loads(second["tools"]) == [WEATHER]
    assert json.loads(second["reference"]) == ROWS[1]["ref"]


def test_ids_hash_the_whole_conversation_and_tools(tmp_path):
    first = _read(tmp_path, "jsonl", ROWS)
    again = _read(tmp_path, "jsonl", ROWS[::-1])
    assert {r["prompt_id"] for r in first} == {r["prompt_id"] for r in again}
    # Same last question, other earlier turns or other tools: other prompts.
    other_history = [{**ROWS[1], "conv": [{"role": "user", "content": "And in Paris?"}]}]
    other_tools = [{**ROWS[1], "fns": [WEATHER, {"type": "function", "function": {"name": "noop"}}]}]
    ids = {r["prompt_id"] for r in first}
    assert _read(tmp_path, "jsonl", other_history)[0]["prompt_id"] not in ids
    assert _read(tmp_path, "jsonl", other_tools)[0]["prompt_id"] not in ids
    # ... and never the id of the bare question.
    assert first[1]["prompt_id"] != prompt_id("And in Paris?")


def test_a_bare_function_definition_is_read_as_an_openai_tool(tmp_path):
    rows = _read(tmp_path, "jsonl", [{**ROWS[0], "fns": [WEATHER["function"]]}])
    assert json.loads(rows[0]["tools"]) == [WEATHER]


def test_every_bad_conversation_row_is_reported_with_its_line(tmp_path):
    bad = [
        ROWS[0],
        {**ROWS[0], "conv": [{"role": "robot", "content": "hi"}]},
        {**ROWS[0], "conv": EARLIER[:1] + [{**EARLIER[1], "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}]
            + [{"role": "user", "content": "ok"}]},
        {**ROWS[0], "conv": EARLIER[:2] + [{"role": "tool", "content": "{}"}]},
        {**ROWS[0], "conv": EARLIER[:1] + [{**EARLIER[1], "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": '}}]}]
            + [{"role": "user", "content": "ok"}]},
        {**ROWS[0], "conv": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    write_jsonl(tmp_path / "c.jsonl", bad)
    with pytest.raises(RecipeError) as e:
        recipe_with(tmp_path, SOURCE.format(fmt="jsonl", path="c.jsonl"))
    text = str(e.value)
    assert "c.jsonl:1" not in text
    assert "c.jsonl:2: messages[0] has unknown role 'robot'" in text
    assert "c.jsonl:3: messages[1] tool_calls[0] calls 'get_time', which no tool definition has" in text
    assert "c.jsonl:4: messages[2] (tool) has no tool_call_id" in text
    assert "c.jsonl:5: messages[1] tool_calls[0] (get_weather): arguments are malformed JSON" in text
    assert "c.jsonl:6: the last turn is 'assistant'" in text


def test_a_missing_messages_field_names_the_setting(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"question": "hi"}])
    with pytest.raises(RecipeError, match=r"c.jsonl:1: no field 'conv' \(messages_field\)"):
        recipe_with(tmp_path, SOURCE.format(fmt="jsonl", path="c.jsonl"))


def test_a_tool_result_for_a_call_never_made_is_a_problem():
    turns = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "zz", "content": "{}"}]
    assert conversation.problems(turns, [WEATHER]) == [
        "messages[1] (tool) answers call 'zz', which no earlier assistant turn made"]


def test_a_generator_row_with_a_broken_conversation_fails_with_its_source(tmp_path):
    from distill.prompts import prompt_row

    with pytest.raises(ValueError, match=r"tool-tasks: row 3: messages is not a non-empty list"):
        prompt_row({"question": "x", "reference": None, "messages": []}, "tool-tasks: row 3")
