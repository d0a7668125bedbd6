"""Conversation prompts with tools through every stage: prompts, samples with their parsed calls,
tool-call verdicts, a conversational dataset with structured calls, a real TRL training step with
the hermes template, and the evaluation per held-out set. Sampling is faked; training is real."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
import yaml

from distill import chat_templates
from support.models import write_tiny_teacher

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _row(city: str, category: str = "single", history: bool = False) -> dict:
    turns = [{"role": "user", "content": f"Weather in {city}?"}]
    if history:
        turns = [{"role": "user", "content": "Weather in Oslo?"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 3}'},
                 {"role": "assistant", "content": "3 degrees."}] + turns
    expected = [{"name": "get_weather", "arguments": {"city": city}}] if category != "no_call" else []
    if category == "no_call":
        turns = [{"role": "user", "content": f"Tell me a joke about {city}"}]
    return {"messages": turns, "tools": [WEATHER, TIME], "reference": {"expected": expected}, "category": category}


class ToolBackend:
    """Calls get_weather for "Weather in X?", answers in words otherwise; wrong (the other
    tool) for the cities in `wrong_for`."""

    name = "fake-tools"

    def __init__(self, wrong_for=frozenset()):
        self.wrong_for, self.requests = wrong_for, []

    def describe(self):
        return {"backend": self.name, "version": "1", "engine_args": {}, "chat_template": "hermes@test"}

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            assert r["tools"] == [WEATHER, TIME]
            m = re.fullmatch(r"Weather in (\w+)\?", r["messages"][-1]["content"])
            if m:
                fn = "get_time" if m.group(1) in self.wrong_for else "get_weather"
                text = f'<tool_call>\n{{"name": "{fn}", "arguments": {{"city": "{m.group(1)}"}}}}\n</tool_call>'
            else:
                text = "Why did the cloud stay home? It was feeling under the weather."
            out.append({"work_id": r["work_id"], "text": text, "prompt_tokens": 30, "completion_tokens": 20,
                        "finish_reason": "stop", "error": ""})
        yield out


@pytest.fixture(scope="module")
def agent_run(tiny_model, tmp_path_factory):
    import os

    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("agent")
    write_tiny_teacher(tmp / "tiny.yaml", tiny_model)
    train = [_row(c) for c in ("Rome", "Paris", "Lima", "Kyiv")] + [_row("Cairo", history=True), _row("Oslo", "no_call")]
    held_out = [_row("Quito"), _row("Dakar"), _row("Hanoi", "no_call")]
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"source": "jsonl", "messages_field": "messages", "tools_field": "tools", "answer_field": "reference",
              "category_field": "category", "licence": "apache-2.0"}
    (tmp / "r.yaml").write_text(yaml.safe_dump({
        "name": "agent-unit",
        "teacher": {"id": "tiny.yaml", "template": "hermes"},
        "prompts": {"train": [{**source, "path": "train.jsonl"}], "eval": [{**source, "path": "eval.jsonl"}]},
        "sampling": {"n": 2, "max_tokens": 64, "seed": 3},
        "verifiers": [{"name": "tool-call"}],
        "student": {"name": "tiny-agent", "base": "tiny.yaml", "template": "hermes"},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 256, "learning_rate": 1e-4, "save_steps": 5,
                  "packing": False},
        "eval": {"k": 2},
        "tracking": {"wandb": "disabled"},
    }))
    old = os.getcwd()
    os.chdir(tmp)
    try:
        run, summaries = run_pipeline(load_recipe(tmp / "r.yaml"), backend=ToolBackend(wrong_for={"Quito"}),
                                      backend_for=lambda model: ToolBackend())
    finally:
        os.chdir(old)
    return run, summaries


def test_samples_keep_the_tools_the_template_and_the_parsed_calls(agent_run):
    run, _ = agent_run
    samples = run.files.read_samples().to_pylist()
    assert len(samples) == 6 * 2
    assert all(json.loads(s["tools"]) == [WEATHER, TIME] for s in samples)
    assert {s["chat_template"] for s in samples} == {"hermes@test"}
    rome = next(s for s in samples if s["prompt_text"] == "Weather in Rome?")
    assert json.loads(rome["tool_calls"]) == [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    joke = next(s for s in samples if s["prompt_text"].startswith("Tell me a joke"))
    assert joke["tool_calls"] is None
    # Every answer is right: the calls match and the joke makes no call.
    assert all(s["accepted"] for s in samples), [s["verdicts"] for s in samples if not s["accepted"]]


def test_the_dataset_is_conversational_with_structured_calls(agent_run):
    run, _ = agent_run
    rows = pq.read_table(run.files.dataset).to_pylist()
    assert len(rows) == 6  # the two samples of a prompt are the same text: one row each
    assert all(json.loads(r["tools"]) == [WEATHER, TIME] for r in rows)
    cairo = next(r for r in rows if r["prompt"][-1]["content"] == "Weather in Cairo?")
    assert [m["role"] for m in cairo["prompt"]] == ["user", "assistant", "tool", "assistant", "user"]
    assert cairo["prompt"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    [turn] = cairo["completion"]
    assert turn["content"] is None
    assert turn["tool_calls"] == [{"id": "call_0", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "Cairo"}'}}]
    joke = next(r for r in rows if r["prompt"][-1]["content"].startswith("Tell me a joke"))
    assert joke["completion"][0]["tool_calls"] is None and "cloud" in joke["completion"][0]["content"]


def test_the_student_trained_and_is_saved_with_the_template_it_learned(agent_run):
    run, summaries = agent_run
    assert summaries["train"]["steps"] >= 1
    saved = (run.files.student_dir / "chat_template.jinja").read_text()
    assert saved == chat_templates.resolve("hermes").text


def test_the_student_learns_the_call_tokens_in_hermes_form(agent_run, tiny_model):
    """What TRL trains on: the tokens of the completion (the call in <tool_call> tags), not the prompt."""
    from transformers import AutoTokenizer

    run, _ = agent_run
    tok = AutoTokenizer.from_pretrained(run.files.student_dir)
    row = next(r for r in pq.read_table(run.files.dataset).to_pylist() if r["prompt"][-1]["content"] == "Weather in Rome?")
    tools = json.loads(row["tools"])
    prompt = tok.apply_chat_template(row["prompt"], tools=tools, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(row["prompt"] + row["completion"], tools=tools, tokenize=False)
    assert whole.startswith(prompt)
    assert whole[len(prompt):] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
                                   '</tool_call><|im_end|>\n')


def test_evaluation_scores_each_held_out_category(agent_run):
    run, summaries = agent_run
    ev = json.loads(run.files.metrics.read_text())
    groups = ev["groups"]
    assert set(groups) == {"jsonl:eval.jsonl/single", "jsonl:eval.jsonl/no_call"}
    single = groups["jsonl:eval.jsonl/single"]
    assert single["prompts"] == 2
    # The teacher calls the wrong tool for Quito, the student's fake server never does.
    assert single["teacher"]["pass@1"] == pytest.approx(0.5)
    assert single["student"]["pass@1"] == pytest.approx(1.0)
    assert groups["jsonl:eval.jsonl/no_call"]["teacher"]["pass@1"] == pytest.approx(1.0)
    card = (run.files.student_dir / "README.md").read_text()
    assert "| jsonl:eval.jsonl/single | 2 | 50.0%" in card
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    per_set = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in index if r["dataset"]["name"].startswith("jsonl:")}
    assert per_set == {"jsonl:eval.jsonl/single": 1.0, "jsonl:eval.jsonl/no_call": 1.0}


def test_the_manifest_and_both_cards_say_which_tools_and_formats_were_trained(agent_run):
    run, _ = agent_run
    tool_use = json.loads(run.files.manifest.read_text())["tool_use"]
    assert tool_use["rows_with_tools"] == 6
    assert (tool_use["rows_with_calls"], tool_use["rows_without_a_call"]) == (5, 1)  # the joke calls nothing
    assert tool_use["tools"] == {"get_time": {"offered": 6, "called": 0}, "get_weather": {"offered": 6, "called": 5}}
    assert tool_use["teacher_templates"] == ["hermes@test"] and tool_use["student_template"] == "hermes"
    for card in (run.files.dataset_card.read_text(), (run.files.student_dir / "README.md").read_text()):
        assert "Tools and formats" in card
        assert "| `get_weather` | 6 | 5 |" in card and "| `get_time` | 6 | 0 |" in card
        assert "Teacher's chat template: hermes@test; student's: hermes." in card
    model_card = (run.files.student_dir / "README.md").read_text()
    assert "tool-calling" in yaml.safe_load(model_card.split("---")[1])["tags"]


def test_the_lineage_store_lists_the_held_out_sets_the_student_was_evaluated_on(agent_run, tmp_path):
    from distill.lineage_store import ancestry, descendants, open_store, register_run

    run, _ = agent_run
    store = open_store(f"sqlite:///{tmp_path / 'lineage.sqlite'}")
    register_run(store, run.dir)
    rows = {(r["kind"], r["name"], r["relation"]) for r in ancestry(store, "tiny-agent")}
    assert ("prompt_source", "jsonl:eval.jsonl", "evaluated-on") in rows
    assert ("prompt_source", "jsonl:train.jsonl", "prompts-from") in rows
    # and from the held-out set down: the model scored on it
    assert {r["name"] for r in descendants(store, "prompt_source", "jsonl:eval.jsonl") if r["kind"] == "model"} == {"tiny-agent"}


def test_constrained_calls_put_a_share_of_each_tool_prompts_samples_under_its_call_grammar(tmp_path, tiny_model):
    import jsonschema

    from distill.recipe import load_recipe
    from distill.stages.sample import plan_work

    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    (tmp_path / "p.jsonl").write_text(json.dumps(_row("Rome")) + "\n")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "constrained", "teacher": {"id": "tiny.yaml", "template": "hermes"},
        "prompts": {"train": [{"source": "jsonl", "path": "p.jsonl", "messages_field": "messages", "tools_field": "tools",
                               "answer_field": "reference", "licence": "apache-2.0"}]},
        "sampling": {"n": 4, "constrained_calls": 0.5, "accepted_per_prompt": 1, "max_rounds": 2},
        "verifiers": [{"name": "tool-call"}]}))
    recipe = load_recipe(tmp_path / "r.yaml")
    tools_prompt = {"prompt_id": "t", "question": "Weather in Rome?", "tools": json.dumps([WEATHER, TIME]),
                    "messages": json.dumps([{"role": "user", "content": "Weather in Rome?"}])}
    plain_prompt = {"prompt_id": "q", "question": "What is 2 + 2?", "tools": None, "messages": None}
    for round_ in (0, 1):
        work = {w["work_id"]: w for w in plan_work(recipe, [tools_prompt, plain_prompt], set(), round_)}
        graded = sorted(k for k, w in work.items() if "structured_outputs" in w["sampling_params"])
        first = 4 * round_
        assert graded == [f"t:{first}", f"t:{first + 1}"]  # half of each round of n, only where there are tools
    schema = json.loads(work["t:4"]["sampling_params"]["structured_outputs"]["json"])
    good = [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    jsonschema.validate(good, schema)
    jsonschema.validate(good + [{"name": "get_time", "arguments": {"city": "Oslo"}}], schema)  # parallel calls
    for bad in ([], [{"name": "get_news", "arguments": {}}], [{"name": "get_weather", "arguments": {}}],
                [{"name": "get_weather", "arguments": {"city": 3}}], {"name": "get_weather", "arguments": {"city": "Rome"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
