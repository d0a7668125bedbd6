"""The replay backend: a model's answers recorded in files (a usage log's calls), served as its answers.

For training a student on what a logged model answered, and for scoring that model on held-out
calls, through the normal pipeline, with no model to run. A teacher entry with a `replay:`
section is served by it:

    id: support-agent-logged
    model: gpt-4o-2024-08-06            # what was logged; nothing is loaded
    revision: "2024-08-06"              # quoted: YAML reads a bare date as a date
    licence: other                      # no params_b: a hosted model's size is unknown
    replay:
      files: [usage/train.jsonl, usage/eval.jsonl]   # relative to this YAML file
      messages_field: messages          # the conversation sent
      tools_field: tools                # the tools offered (absent or null: none)
      answer_field: logged              # the recorded assistant message

Each file is JSON lines, as `distill usage plan` exports them: a row holds the conversation,
the tools and the recorded answer, an OpenAI assistant message {"role": "assistant",
"content": ..., "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}]},
and optionally `usage` ({"prompt_tokens", "completion_tokens"}). The files are read once, when
the backend is made; a missing file, a line that is not JSON, or a row without the conversation
or the answer stops it there, with every bad line named.

A request finds its answer by its conversation and tools, both made canonical
(distill.prompts.conversation): key order and the spacing of JSON call arguments do not matter,
the text of the turns does. A recipe's `prompts.system_prompt` added in front of a logged
conversation makes it another conversation, not found. A conversation recorded twice is answered
with its first recording. The answer becomes the result row an HTTP backend makes of that message
(content, then one `<tool_call>` block per call; `tool_calls` parsed); token counts come from the
row's `usage`, else 0. A request whose conversation was not recorded becomes an error row, and the
others are still answered.

Sampling parameters are ignored: a recording holds one answer, so every sample of a prompt (each
seed, and the greedy one) is that same answer, and pass@k equals pass@1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import distill
from distill.backends import BACKENDS, BackendOptions
from distill.backends.http_wire import parse_completion
from distill.prompts import conversation
from distill.teachers import Replay, Teacher

NAME = "replay"
SHOWN_PROBLEMS = 10  # enough to see the pattern of a bad file; the rest are counted


class ReplayBackend:
    """Answers each request row with the recorded answer to its conversation; yields batches of
    result rows."""

    name = NAME

    def __init__(self, teacher: Teacher, batch_size: int = 16):
        if teacher.replay is None:
            raise ValueError(f"teacher {teacher.id!r} has no replay: section, so there are no recorded answers "
                             "to serve; add `replay: {files: [...]}` to its entry, or remove `backend: replay`")
        self.teacher = teacher
        self.batch_size = batch_size
        self.answers, self.files = read_recordings(teacher.replay)

    def describe(self) -> dict[str, Any]:
        return {"backend": NAME, "version": distill.__version__, "engine_args": {}, "files": self.files}

    def generate(self, requests: list[dict]) -> Iterator[list[dict]]:
        """requests: rows with work_id, messages, sampling_params (ignored) and optionally tools.
        Yields result rows in batches of batch_size, in request order."""
        for start in range(0, len(requests), self.batch_size):
            yield [self.answer(r) for r in requests[start:start + self.batch_size]]

    def answer(self, request: dict) -> dict:
        """The result row of one request: its recorded answer, or an error row."""
        try:
            row = self.answers.get(conversation_key(request["messages"], request.get("tools")))
        except (KeyError, TypeError, AttributeError) as e:  # turns the canonical form cannot read
            return _error(request, f"the request's conversation cannot be read ({type(e).__name__}: {e})")
        if row is None:
            return _error(request, f"no recorded answer for this conversation (work_id {request['work_id']}); "
                                   "the replayed files hold only the logged calls")
        message, usage = row
        completion = {"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
        return {"work_id": request["work_id"], **parse_completion(completion)}


def _error(request: dict, why: str) -> dict:
    return {"work_id": request["work_id"], "text": None, "prompt_tokens": 0, "completion_tokens": 0,
            "finish_reason": "error", "error": why}


def conversation_key(messages: list[dict], tools: list | None) -> str:
    """The conversation's id with its tools, call arguments re-encoded so their spacing and key
    order do not matter (a log and a prompt file may write the same JSON differently)."""
    turns = conversation.canonical(messages)
    for turn in turns:
        for call in turn.get("tool_calls") or []:
            call["function"]["arguments"] = _normal_json(call["function"]["arguments"])
    return conversation.conversation_id(turns, conversation.canonical_tools(tools))


def _normal_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except json.JSONDecodeError:
        return text  # not JSON: compared as written


def read_recordings(replay: Replay) -> tuple[dict[str, tuple[dict, dict]], list[dict]]:
    """{conversation key: (recorded assistant message, usage)} over every file, and each file's
    path, sha256 and rows. Raises ValueError listing every bad file and line."""
    answers: dict[str, tuple[dict, dict]] = {}
    files, problems = [], []
    for name in replay.files:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror or e}); fix replay.files in the teacher entry "
                            "(a relative path is relative to the entry's YAML file)")
            continue
        rows = 0
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                found = _recording(json.loads(line), replay)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{number}: not JSON ({e.msg} at column {e.colno}); "
                                "each line must be one JSON object")
                continue
            if isinstance(found, str):
                problems.append(f"{path}:{number}: {found}")
                continue
            answers.setdefault(found[0], found[1:])
            rows += 1
        files.append({"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows})
    if not problems and not answers:
        problems.append(f"{', '.join(replay.files)}: no recorded conversations; "
                        "give the JSONL files `distill usage plan` exported")
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        lines = problems[:SHOWN_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
        raise ValueError("the replay backend cannot read its recorded answers:\n  " + "\n  ".join(lines))
    return answers, files


def _recording(row: Any, replay: Replay) -> tuple[str, dict, dict] | str:
    """(conversation key, assistant message, usage) of a row, or what is wrong with it."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object with {replay.messages_field} and {replay.answer_field}"
    messages, tools, answer = row.get(replay.messages_field), row.get(replay.tools_field), row.get(replay.answer_field)
    if not isinstance(messages, list) or not messages:
        return (f"no {replay.messages_field!r} field holding the conversation (a list of turns); "
                f"set replay.messages_field to the field that holds it (fields: {', '.join(row) or 'none'})")
    if not isinstance(answer, dict):
        what = "no" if answer is None else f"a {type(answer).__name__} in the"
        return (f"{what} {replay.answer_field!r} field, where the recorded assistant message belongs "
                f"({{\"role\": \"assistant\", \"content\": ..., \"tool_calls\": [...]}}); "
                f"set replay.answer_field to the field that holds it (fields: {', '.join(row) or 'none'})")
    if tools is not None and not isinstance(tools, list):
        return f"{replay.tools_field!r} is a {type(tools).__name__}, not a list of tool definitions"
    calls = answer.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and c["function"].get("name") for c in calls)):
        return (f"{replay.answer_field}.tool_calls must be a list of "
                "{\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
    usage = row.get("usage") or {}
    if not isinstance(usage, dict) or not all(isinstance(usage.get(k) or 0, int)
                                              for k in ("prompt_tokens", "completion_tokens")):
        return "usage must be {\"prompt_tokens\": int, \"completion_tokens\": int}"
    try:
        found = conversation_key(messages, tools)
    except (KeyError, TypeError, AttributeError) as e:
        return f"{replay.messages_field!r} are not OpenAI chat turns ({type(e).__name__}: {e})"
    return found, answer, usage


@BACKENDS.register(NAME)
def make_replay_backend(teacher: Teacher, options: BackendOptions) -> ReplayBackend:
    """A model's answers recorded in files (a usage log's calls), served as its answers; no model runs."""
    return ReplayBackend(teacher, options.batch_size)
