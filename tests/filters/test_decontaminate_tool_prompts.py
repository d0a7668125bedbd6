"""decontaminate on tool-use prompts: BFCL's requests are found in a conversation's user turn,
while generated tool tasks, which share only everyday words and stock phrases with BFCL, are not
flagged."""

import copy
from pathlib import Path

import pytest
import yaml

from distill.filters import FilterContext
from distill.filters.decontaminate import DecontaminateParams, decontaminate
from distill.filters.ngrams import text_words
from distill.prompts import PROMPT_SOURCES, load_prompts, prompt_row
from distill.prompts.tool_tasks import ToolTasksParams, generate_tool_tasks
from distill.recipe import RecipeLoader
from distill.recipe.schema import PromptSource

AGENT_DEMO = Path(__file__).resolve().parents[2] / "recipes" / "agent" / "smollm2-135m-from-smollm2-135m.yaml"


def rows_of(prompts: list[str]) -> list[dict]:
    return [{"sample_id": f"s{i}", "prompt_id": f"p{i}", "prompt_text": p, "completion": "", "finish_reason": "stop",
             "completion_tokens": 1, "prompt_source": "test"} for i, p in enumerate(prompts)]


def flags(prompts: list[str], questions: list[str]) -> list[bool]:
    """Which prompts are flagged, with `questions` as the only benchmark (the eval one)."""
    ctx = FilterContext(eval_prompts=[{"question": q} for q in questions])
    return [v.flagged for v in decontaminate(rows_of(prompts), DecontaminateParams(), ctx)]


# A benchmark of requests in the style of BFCL's live sets: some are a word or two of everyday
# language, some share a stock phrase. Written for these tests.
REQUESTS = [
    "on",
    "help",
    "Turn the lights on in the kitchen and set them to half brightness.",
    "Can you help me turn on the fan in the bedroom at ten tonight?",
    "Please help me book a meeting room on Friday for the design review.",
    "Define entropy.",
    "what's the weather in london",
    "What's the weather like in Boston?",
    "What's the weather like in Denver and Austin this weekend?",
    "What's the weather like in the two cities of Oslo and Bergen?",
]


@pytest.mark.parametrize(
    "prompt, flagged",
    [
        ("on", True),  # a short request of everyday words, as the whole text
        ("Help!", True),
        ("Find flights from Oslo to Miami on 2026-01-16.", False),  # ... inside a longer text: ordinary language
        ("I need help with my calendar for next week.", False),
        ("Please define entropy, in one sentence.", True),  # a short request with a rare word, inside a longer text
        ("what's the weather in London today?", True),  # a six-word request whole: both its n-grams
        ("What's the weather in Santiago right now?", False),  # only its stock phrase: one n-gram of two
        ("What's the weather like in Boston right now?", True),  # a seven-word request whole
        # Two of its three n-grams, but both in three of the requests: a request of the same kind.
        ("What's the weather like in Lisbon right now?", False),
        ("What's the weather like in Bostn?", False),
    ],
)
def test_short_requests_and_stock_phrases_are_found_only_whole(prompt, flagged):
    assert flags([prompt], REQUESTS) == [flagged]


@pytest.fixture(scope="module")
def bfcl_params():
    from distill.prompts import bfcl

    try:
        bfcl.data_dir()
    except ValueError:
        pytest.skip("needs the bfcl-eval package (scripts/install.sh installs it)")
    return DecontaminateParams.model_validate({"benchmarks": [{"name": "bfcl", "shipped": "bfcl"}],
                                              "include_eval": False})


def conversation_prompt(request: str, **changes) -> str:
    """A generated multi-turn tool-use conversation (system turn, a finished exchange, tools) whose
    last user turn is `request`, stored as the prompts stage stores it; returns the text the filter
    stage hands filters as prompt_text. `changes` replace the system turn or the first tool's
    description."""
    row = next(generate_tool_tasks(ToolTasksParams(count=4, seed=0, multi_turn=1.0, tools_offered=[2, 2])))
    row = copy.deepcopy({k: v for k, v in row.items() if k != "question"})  # the turns decide it
    assert [m["role"] for m in row["messages"]][0] == "system" and len(row["messages"]) > 2
    row["messages"][-1]["content"] = request
    if "system" in changes:
        row["messages"][0]["content"] = changes["system"]
    if "tool_description" in changes:
        row["tools"][0]["function"]["description"] = changes["tool_description"]
    return prompt_row(row, "test")["question"]


def test_bfcl_request_in_a_tool_use_conversation_is_found(bfcl_params):
    from distill.prompts import bfcl

    simple = bfcl.tests("simple_python")[0]["question"][0][-1]["content"]
    live = bfcl.tests("live_simple")[2]["question"][0][-1]["content"]
    assert simple.startswith("Find the area of a triangle with a base of 10 units")
    assert live.startswith("I need a Comfort Uber ride from 2020 Addison Street")
    prompts = [
        conversation_prompt(simple),  # verbatim
        conversation_prompt(f"One more thing. {simple.replace('10 units', '12 units')} Thanks!"),  # a changed number
        conversation_prompt(live.replace("Comfort", "Black").replace("600 seconds", "5 minutes")),  # two changes
        conversation_prompt("Thanks, that's all I needed."),
        # Only the user's turn is compared: BFCL's text in the system turn or a tool's description is not.
        conversation_prompt("What's the weather like in Lisbon right now?", system=simple),
        conversation_prompt("What's the weather like in Lisbon right now?", tool_description=live),
    ]
    got = decontaminate(rows_of(prompts), bfcl_params, FilterContext())
    assert [v.flagged for v in got] == [True, True, True, False, False, False], [v.reason for v in got]
    assert {v.category for v in got if v.flagged} == {"bfcl"}


def prompt_sources(specs: list[dict]) -> list[PromptSource]:
    """A recipe's prompt sources with their parameters resolved, as the recipe loader does (the
    whole loader also checks the teacher's engine arguments, which needs vLLM)."""
    out = []
    for spec in specs:
        source = PromptSource.model_validate(spec)
        own = {k: v for k, v in spec.items() if k not in PromptSource.model_fields}
        source._params = PROMPT_SOURCES.get(spec["source"]).params.model_validate(own)
        out.append(source)
    return out


@pytest.fixture(scope="module")
def demo_prompts():
    """The agent demo's train prompts as the prompts stage makes them, its eval prompts, and its
    decontaminate filter's parameters."""
    recipe = yaml.load(AGENT_DEMO.read_text(), Loader=RecipeLoader)
    eval_rows = load_prompts(prompt_sources(recipe["prompts"]["eval"]), "eval")
    held = {r["prompt_id"] for r in eval_rows}
    train = [r for r in load_prompts(prompt_sources(recipe["prompts"]["train"]), "train") if r["prompt_id"] not in held]
    [spec] = [f for f in recipe["filters"] if f["name"] == "decontaminate"]
    own = {k: v for k, v in spec.items() if k not in ("name", "mode")}
    return train, eval_rows, DecontaminateParams.model_validate(own, context={"base_dir": AGENT_DEMO.parent})


def test_agent_demo_tool_tasks_do_not_overlap_bfcl(bfcl_params, demo_prompts):
    train, eval_rows, recipe_params = demo_prompts
    assert len(train) == 150
    texts = [r["question"] for r in train]
    # BFCL's live_irrelevance set holds one-word requests ("on", "help", "time", "thanks", "/"),
    # which ordinary requests contain: they must not make these tasks copies of BFCL.
    assert sum("on" in text_words(t) for t in texts) > 20
    got = decontaminate(rows_of(texts), bfcl_params, FilterContext())
    assert [v.reason for v in got if v.flagged] == []
    # With the recipe's own filter: what is left is the recipe's eval split, generated from the
    # same templates (seed 1), where a train task with another city or ticker is a reworded copy.
    ctx = FilterContext(base_dir=AGENT_DEMO.parent, eval_prompts=eval_rows)
    got = decontaminate(rows_of(texts), recipe_params, ctx)
    assert {v.category for v in got if v.flagged} <= {"eval"}
    assert sum(v.flagged for v in got) < len(texts) // 10
