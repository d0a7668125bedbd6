"""What clustering reads of a call: the answer's shape as a table, the view of a stored row, and
vectors in which the same task is near and another task far."""

import json

import numpy as np
import pytest

from distill.usage.features import CallView, answer_kind, featurise, normal, view


def turn(content=None, calls=()):
    return [{"role": "assistant", "content": content,
             "tool_calls": [{"id": "c", "type": "function", "function": {"name": n, "arguments": a}} for n, a in calls] or None}]


@pytest.mark.parametrize("completion, kind, shape, text", [
    (turn(calls=[("get_weather", '{"city": "Oslo", "unit": "celsius"}')]), "tool_call",
     ("get_weather", "get_weather.city", "get_weather.unit"), ""),
    (turn(calls=[("get_weather", '{"city": "Os')]), "tool_call", ("get_weather",), ""),  # cut off: the tool still counts
    (turn('{"name": "Ann", "email": null}'), "json", ("email", "name"), '{"name": "Ann", "email": null}'),
    (turn('[{"sku": 1, "qty": 2}, {"sku": 3}]'), "json", ("qty", "sku"), '[{"sku": 1, "qty": 2}, {"sku": 3}]'),
    (turn("Refund."), "label", (), "refund"),
    (turn("shipping"), "label", (), "shipping"),
    (turn("The customer wants a refund."), "text", (), "The customer wants a refund."),
    (turn("Yes. No."), "text", (), "Yes. No."),  # two sentences are no label
    (turn("{not json"), "label", (), "{not json"),
    ([], "none", (), ""),
    (turn(""), "none", (), ""),
])
def test_answer_kinds(completion, kind, shape, text):
    assert answer_kind(completion) == (kind, shape, text)


def test_a_stored_row_as_clustering_sees_it():
    row = {"prompt": [{"role": "system", "content": "You route tickets."}, {"role": "user", "content": "first"},
                      {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Order 12 from <PERSON_2>"}],
           "completion": turn("billing"),
           "tools": json.dumps([{"type": "function", "function": {"name": "b"}}, {"type": "function", "function": {"name": "a"}}])}
    v = view(row)
    assert (v.system, v.tools, v.user, v.answer_kind, v.answer) == (
        "You route tickets.", ("a", "b"), "Order 12 from <PERSON_2>", "label", "billing")
    assert normal(v.user) == "Order 0 from PERSON"  # numbers and placeholder numbers differ per call


def test_the_same_task_is_near_and_another_far():
    def v(system, user, kind, shape=()):
        return CallView(system, (), user, kind, shape, "")

    views = [v("Classify the ticket: billing or refund.", "I was charged twice for order 1", "label"),
             v("Classify the ticket: billing or refund.", "Please refund my order 2, it broke", "label"),
             v("Extract the order id as JSON.", "I was charged twice for order 1", "json", ("order_id",))]
    X = featurise(views)
    assert np.allclose(np.asarray(X.multiply(X).sum(axis=1)).ravel(), 1)
    sim = (X @ X.T).toarray()
    assert sim[0, 1] > 0.6 > 0.3 > sim[0, 2]  # same prompt and answer kind, another text: near
