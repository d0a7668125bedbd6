"""The replay backend serves a usage log's recorded answers as the model's answers: the same result
rows an HTTP backend makes of those messages, an error row for a conversation never recorded, and
one error naming every bad line of a bad file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

import distill
from distill.backends import BACKENDS, BackendOptions, backend_name
from distill.backends.replay import ReplayBackend
from distill.schema import EVAL_SCHEMA
from distill.stages.card import cost_text
from distill.stages.evaluate import metrics
from distill.teachers import Teacher, load_teacher

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
ASKED = [{"role": "system", "content": "You are a helpful agent."},
         {"role": "user", "content": "Weather in Paris for 3 days?"}]
GREETING = [{"role": "user", "content": "Say hello."}]
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]}
HELLO = {"role": "assistant", "content": "Hello!"}
PARAMS = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 64, "seed": 1}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def entry(tmp_path: Path, files: list[str], **extra) -> Path:
    """A teacher entry in tmp_path/teachers/ whose replay files are `files`."""
    path = tmp_path / "teachers" / "logged.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["id: logged", "model: gpt-4o-2024-08-06", "revision: '2024-08-06'", "licence: other", "replay:",
             f"  files: {json.dumps(files)}", *[f"  {k}: {v}" for k, v in extra.items()]]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def recorded(tmp_path) -> Teacher:
    """The logged model of a usage export: a tool call (with token counts) and a text answer."""
    write_jsonl(tmp_path / "usage" / "train.jsonl", [
        {"messages": ASKED, "tools": TOOLS, "logged": CALL, "usage": {"prompt_tokens": 31, "completion_tokens": 12},
         "reference": {"expected": []}, "call_id": "c1"},
        {"messages": GREETING, "tools": None, "logged": HELLO},
    ])
    entry(tmp_path, ["../usage/train.jsonl"])
    return load_teacher("teachers/logged.yaml", tmp_path)


def request(work_id: str, messages: list[dict], tools: list | None = None, **params) -> dict:
    row = {"work_id": work_id, "messages": messages, "sampling_params": {**PARAMS, **params}}
    if tools is not None:
        row["tools"] = tools
    return row


def answers(backend: ReplayBackend, requests: list[dict]) -> dict[str, dict]:
    """Every result by work id; asserts each request got exactly one."""
    rows = [r for batch in backend.generate(requests) for r in batch]
    assert sorted(r["work_id"] for r in rows) == sorted(q["work_id"] for q in requests)
    return {r["work_id"]: r for r in rows}


def test_relative_files_resolve_against_the_entry_and_the_entry_is_served_by_replay(tmp_path, recorded):
    assert recorded.replay.files == [str((tmp_path / "usage" / "train.jsonl").resolve())]
    assert (recorded.replay.messages_field, recorded.replay.tools_field, recorded.replay.answer_field) == (
        "messages", "tools", "logged")
    assert recorded.params_b is None
    assert backend_name(recorded) == "replay"
    assert backend_name(recorded.model_copy(update={"backend": "echo"})) == "echo"  # an explicit backend wins
    # An absolute path stays as written; the entry's folder is used, not the working directory.
    elsewhere = write_jsonl(tmp_path / "abs" / "rows.jsonl", [{"messages": GREETING, "logged": HELLO}])
    entry(tmp_path, [str(elsewhere), "../usage/train.jsonl"])
    teacher = load_teacher(str(tmp_path / "teachers" / "logged.yaml"))
    assert teacher.replay.files == [str(elsewhere), str((tmp_path / "usage" / "train.jsonl").resolve())]


def test_recorded_answers_become_the_rows_an_http_backend_makes(recorded):
    backend = BACKENDS.get("replay").fn(recorded, BackendOptions(batch_size=2))
    assert backend.name == "replay"
    rows = answers(backend, [request("call:0", ASKED, TOOLS), request("hello:0", GREETING),
                             request("hello:greedy", GREETING, temperature=0.0, seed=7)])
    call = rows["call:0"]
    assert call["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]
    assert call["text"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
    assert (call["prompt_tokens"], call["completion_tokens"], call["finish_reason"], call["error"]) == (31, 12, "stop", "")
    hello = rows["hello:0"]
    assert (hello["text"], hello["prompt_tokens"], hello["completion_tokens"], hello["finish_reason"], hello["error"]) == (
        "Hello!", 0, 0, "stop", "")
    assert "tool_calls" not in hello
    assert rows["hello:greedy"] == {**hello, "work_id": "hello:greedy"}  # sampling params change nothing
    described = backend.describe()
    data = Path(recorded.replay.files[0]).read_bytes()
    assert described == {"backend": "replay", "version": distill.__version__, "engine_args": {},
                         "files": [{"path": recorded.replay.files[0], "sha256": hashlib.sha256(data).hexdigest(),
                                    "rows": 2}]}


def test_batches_and_a_missing_conversation_is_an_error_row_while_the_rest_are_answered(recorded):
    backend = ReplayBackend(recorded, batch_size=2)
    unknown = [{"role": "user", "content": "Say goodbye."}]
    requests = [request("hello:0", GREETING), request("bye:0", unknown), request("call:0", ASKED, TOOLS)]
    batches = list(backend.generate(requests))
    assert [len(b) for b in batches] == [2, 1]
    rows = answers(backend, requests)
    bye = rows["bye:0"]
    assert (bye["text"], bye["finish_reason"]) == (None, "error")
    assert bye["error"] == ("no recorded answer for this conversation (work_id bye:0); "
                            "the replayed files hold only the logged calls")
    assert rows["hello:0"]["text"] == "Hello!" and rows["call:0"]["error"] == ""
    # The same turns offered other tools (or none) are another conversation.
    assert answers(backend, [request("call:0", ASKED)])["call:0"]["finish_reason"] == "error"


def test_key_order_and_json_spacing_in_the_request_do_not_matter(recorded):
    backend = ReplayBackend(recorded)
    reordered = [{"content": m["content"], "role": m["role"]} for m in ASKED]
    tools = [{"function": {"parameters": TOOLS[0]["function"]["parameters"], "name": "get_weather"}, "type": "function"}]
    rows = answers(backend, [request("a", reordered, tools), request("b", GREETING, [])])
    assert rows["a"]["tool_calls"][0]["name"] == "get_weather"
    assert rows["b"]["text"] == "Hello!"  # no tools and an empty list of tools are alike

    # A conversation that carries an earlier call: its arguments may be spaced and ordered otherwise.
    earlier = [*ASKED, CALL, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    write_jsonl(Path(recorded.replay.files[0]), [{"messages": earlier, "tools": TOOLS, "logged": HELLO}])
    respaced = {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {
        "name": "get_weather", "arguments": '{ "days":3,\n  "city":"Paris" }'}}]}
    as_object = {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {
        "name": "get_weather", "arguments": {"days": 3, "city": "Paris"}}}]}
    backend = ReplayBackend(recorded)
    rows = answers(backend, [request("spaced", [*ASKED, respaced, earlier[-1]], TOOLS),
                             request("object", [*ASKED, as_object, earlier[-1]], TOOLS),
                             request("changed", [*ASKED, CALL, {**earlier[-1], "content": "rain"}], TOOLS)])
    assert rows["spaced"]["text"] == rows["object"]["text"] == "Hello!"
    assert rows["changed"]["finish_reason"] == "error"  # the text of a turn does matter


def test_other_field_names_are_read(tmp_path):
    write_jsonl(tmp_path / "log.jsonl", [{"prompt": GREETING, "offered": None, "answer": HELLO}])
    entry(tmp_path, ["../log.jsonl"], messages_field="prompt", tools_field="offered", answer_field="answer")
    backend = ReplayBackend(load_teacher("teachers/logged.yaml", tmp_path))
    assert answers(backend, [request("x", GREETING)])["x"]["text"] == "Hello!"


def test_bad_files_give_one_error_naming_each_bad_line(tmp_path):
    good = {"messages": GREETING, "logged": HELLO}
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        good,
        "{not json",                                                  # 2
        "",                                                           # a blank line is skipped
        {"messages": GREETING},                                       # 4: no answer
        {"logged": HELLO},                                            # 5: no conversation
        {"messages": GREETING, "logged": "Hello!"},                   # 6: the answer is not a message
        [1, 2],                                                       # 7
        {"messages": [{"content": "no role"}], "logged": HELLO},      # 8
        {"messages": GREETING, "logged": {"role": "assistant", "tool_calls": [{"id": "x"}]}},  # 9
        {"messages": GREETING, "logged": HELLO, "usage": {"prompt_tokens": "many"}},        # 10
    ])
    entry(tmp_path, ["../bad.jsonl", "../missing.jsonl"])
    teacher = load_teacher("teachers/logged.yaml", tmp_path)
    with pytest.raises(ValueError) as info:
        ReplayBackend(teacher)
    message = str(info.value)
    assert message.startswith("the replay backend cannot read its recorded answers:")
    for line in (2, 4, 5, 6, 7, 8, 9, 10):
        assert f"{bad}:{line}: " in message, line
    assert f"{bad}:1:" not in message and f"{bad}:3:" not in message
    assert f"{bad}:2: not JSON" in message
    assert "set replay.answer_field to the field that holds it" in message
    assert "set replay.messages_field to the field that holds it" in message
    assert f"{tmp_path / 'missing.jsonl'}: cannot be read" in message and "fix replay.files" in message
    assert "more" not in message


def test_many_bad_lines_are_counted_not_all_listed(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", ["oops"] * 25)
    entry(tmp_path, ["../bad.jsonl"])
    with pytest.raises(ValueError) as info:
        ReplayBackend(load_teacher("teachers/logged.yaml", tmp_path))
    message = str(info.value)
    assert message.count("not JSON") == 10
    assert message.endswith("and 15 more")


def test_files_without_rows_and_an_entry_without_replay_are_refused(tmp_path):
    write_jsonl(tmp_path / "empty.jsonl", [])
    entry(tmp_path, ["../empty.jsonl"])
    with pytest.raises(ValueError, match="no recorded conversations"):
        ReplayBackend(load_teacher("teachers/logged.yaml", tmp_path))
    plain = Teacher(id="t", model="m", revision="r", licence="mit", params_b=1)
    with pytest.raises(ValueError, match=r"teacher 't' has no replay: section.*remove `backend: replay`"):
        ReplayBackend(plain)


def test_a_teacher_of_unknown_size_has_an_unknown_cost_not_a_crash():
    teacher = Teacher(id="logged", model="gpt-4o", revision="2024-08-06", licence="other")
    assert teacher.params_b is None and backend_name(teacher) == "vllm-ray"
    rows = [{"role": "teacher", "model_id": "logged", "model_revision": "r", "prompt_id": f"p{p}", "kind": kind,
             "sample_index": 0 if kind == "sampled" else -1, "seed": 0, "completion": "x", "finish_reason": "stop",
             "completion_tokens": 5, "error": None, "verdicts": [], "correct": True}
            for p in range(3) for kind in ("sampled", "greedy")]
    table = pa.Table.from_pylist(rows, schema=EVAL_SCHEMA)
    m = metrics(table, teacher, {})
    assert (m["params_b"], m["price_per_mtok"], m["cost_per_correct"]) == (None, None, None)
    assert m["price_unit"].startswith("unknown")
    assert cost_text(m) == "unknown"
    # A price set in the recipe still gives a cost; a known size still stands in for one.
    priced = metrics(table, teacher, {"logged": 2.0})
    assert priced["cost_per_correct"] == pytest.approx(15 * 2.0 / 1e6 / 3)
    assert cost_text(priced) == "1e-05"
    sized = metrics(table, teacher.model_copy(update={"params_b": 7.0}), {})
    assert sized["cost_per_correct"] == pytest.approx(15 * 7.0 / 1e6 / 3)
    assert sized["price_unit"] == "proxy: parameters (B) per 1M output tokens"


def test_distill_ls_shows_an_unknown_size(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distill.cli import app

    entry(tmp_path, ["../usage/train.jsonl"])
    monkeypatch.setenv("DISTILL_TEACHERS", str(tmp_path / "teachers"))
    out = CliRunner().invoke(app, ["ls"], terminal_width=250)
    assert out.exit_code == 0, out.output
    [row] = [line for line in out.stdout.splitlines() if "│ logged" in line]
    assert [c.strip() for c in row.split("│")][3:5] == ["other", "unknown"]  # licence, params (B)
    assert "replay" in out.stdout  # the backends table lists it
