"""A request classifier that knows two agents by their system prompt and tools (its signature
level only), and the requests they send."""

from __future__ import annotations

import numpy as np
import pytest

from distill.usage.classifier import RequestClassifier, Vectorizer, signature

WEATHER_SYSTEM = "You are the weather agent. Call a tool to answer."
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]
SUPPORT_SYSTEM = "You are the support desk. Answer the customer briefly."


def weather_request(user: str = "What is the weather in Paris?") -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "system", "content": WEATHER_SYSTEM},
                                            {"role": "user", "content": user}], "tools": TOOLS}


def support_request(user: str = "How do I reset my password?") -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "system", "content": SUPPORT_SYSTEM},
                                            {"role": "user", "content": user}]}


def make_classifier(path) -> str:
    """Saved to `path`: weather requests -> cluster c0, support requests -> cluster c1."""
    sigs = {signature(WEATHER_SYSTEM, ("get_weather",)): {"cluster": "c0", "share": 1.0, "calls": 20},
            signature(SUPPORT_SYSTEM, ()): {"cluster": "c1", "share": 1.0, "calls": 20}}
    meta = {"store": "none", "store_calls": 40, "clustering": "test", "learnt_from": 40}
    clf = RequestClassifier([], ["c0", "c1"], np.zeros((0, 0)), Vectorizer([], [], {"system": 1.0, "tools": 1.0,
                                                                                     "user": 1.0}),
                            sigs, 0.95, 0.1, 0.05, meta)
    clf.save(path)
    return str(path)


@pytest.fixture
def classifier_file(tmp_path) -> str:
    return make_classifier(tmp_path / "classifier.json")


class FakeStudent:
    """A student that answers `text` (or raises it, an exception)."""

    def __init__(self, text):
        self.text = text

    async def answer(self, request):
        from distill.serve.router import Answer
        from distill.serve.student import assistant_message

        if isinstance(self.text, Exception):
            raise self.text
        return Answer(self.text, assistant_message(self.text, bool(request.get("tools"))), "stop", 10, 5)
