"""A fake teacher backend and a small recipe for stage tests (no engine, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

QUESTIONS = [
    {"q": "What is 1 + 2?", "a": "3"},
    {"q": "What is 2 + 2?", "a": "4"},
    {"q": "Name a colour.", "a": None},
    {"q": "boom", "a": "1"},
]


class FakeBackend:
    """Answers 'The answer is 3.' to everything, fails the prompt 'boom', and can crash."""

    name = "fake"

    def __init__(self, batch_size=2, crash_after=None):
        self.batch_size, self.crash_after, self.seen = batch_size, crash_after, []

    def describe(self):
        return {"backend": "fake", "version": "1", "engine_args": {"x": 1}}

    def generate(self, requests):
        self.seen.extend(requests)
        for start in range(0, len(requests), self.batch_size):
            if self.crash_after is not None and start // self.batch_size == self.crash_after:
                raise RuntimeError("engine died")
            out = []
            for r in requests[start:start + self.batch_size]:
                if r["messages"][-1]["content"] == "boom":
                    out.append({"work_id": r["work_id"], "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                                "finish_reason": "error", "error": "prompt too long"})
                else:
                    out.append({"work_id": r["work_id"], "text": "The answer is 3.", "prompt_tokens": 7,
                                "completion_tokens": 5, "finish_reason": "stop", "error": ""})
            yield out


def write_recipe(tmp_path: Path) -> Path:
    """Four JSONL prompts (one unverifiable, one that fails), n=3, two verifiers."""
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": x["q"], "answer": x["a"]}) + "\n" for x in QUESTIONS))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "unit",
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "jsonl", "path": "q.jsonl", "answer_field": "answer", "licence": "cc-by-4.0"}],
                    "system_prompt": "Be brief."},
        "sampling": {"n": 3, "seed": 7, "max_tokens": 16, "extra": {}},
        "verifiers": [{"name": "final-number"}, {"name": "math", "required": False}],
        "tracking": {"wandb": "disabled"},
    }))
    return tmp_path / "r.yaml"
