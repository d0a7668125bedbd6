"""distill serve-replay over a hand-made conversion (two clusters' held-out calls, their recipes,
a serving config and a classifier that knows the agents by their prompts): who answers each call,
its score against the logged answer, the students' share, the cost arithmetic, the latencies;
the calibration measures (APGR, CPT) on hand-computed curves and the threshold picker; the
command's errors. One slow test replays through a real vLLM student."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import SUPPORT_SYSTEM, TOOLS, WEATHER_SYSTEM
from distill.cli import app
from distill.serve.config import load_config
from distill.serve.replay import (CalibrationCall, ReplayError, Settings, apgr, cpt, curve, pick_threshold,
                                  replay_conversion)
from distill.serve.router import Answer
from distill.serve.student import assistant_message
from distill.usage.classifier import RequestClassifier, Vectorizer, signature

# A later revision of the weather agent's prompt: the classifier places it with confidence 0.96,
# below the weather student's min_confidence 0.98.
WEATHER_V2 = "You are the weather agent, version 2. Call a tool to answer."
LICENCE = "openai-api-terms"
SLEEP = 0.05  # the fake student's seconds per answer


def call(city: str) -> str:
    return f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call>'


def weather_row(user: str, city: str, system: str = WEATHER_SYSTEM) -> dict:
    logged = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], "tools": TOOLS,
            "reference": {"expected": [{"name": "get_weather", "arguments": {"city": city}}]}, "category": "get_weather",
            "logged": logged, "usage": {"prompt_tokens": 1000, "completion_tokens": 500}, "call_id": user}


def support_row(user: str, label: str, system: str = SUPPORT_SYSTEM) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], "tools": None,
            "reference": label, "category": label, "logged": {"role": "assistant", "content": label},
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500}, "call_id": user}


# The held-out calls, and what the fake students answer to each (by the user's turn).
WEATHER = [(weather_row("Weather in Paris?", "Paris"), call("Paris")),  # right: the student's answer is served
           (weather_row("Weather in Rome?", "Rome"), call("Paris")),  # a valid call, the wrong city: served, wrong
           (weather_row("Weather in Oslo?", "Oslo"), '<tool_call>{"name": "get_weather", "arg'),  # broken: the LLM
           (weather_row("Weather in Lima?", "Lima", WEATHER_V2), call("Lima"))]  # low confidence: the LLM
SUPPORT = [(support_row("I was charged twice", "billing"), "billing"),
           (support_row("Where is my money back?", "refund"), "billing"),
           (support_row("Ahoy, where be the treasure?", "other", "You are a pirate."), "billing")]  # unrouted
ANSWERS = {row["messages"][-1]["content"]: text for row, text in WEATHER + SUPPORT}


class FakeStudent:
    """Answers each held-out call with its line of ANSWERS after SLEEP seconds; anything else with 'ok'."""

    def __init__(self):
        self.asked = []

    async def answer(self, request):
        self.asked.append(request["messages"][-1]["content"])
        await asyncio.sleep(SLEEP)
        text = ANSWERS.get(request["messages"][-1]["content"], "ok")
        return Answer(text, assistant_message(text, bool(request.get("tools"))), "stop", 10, 5)


def recipe(cluster: str, task: str, verifier: dict, with_tools: bool) -> dict:
    source = {"source": "jsonl", "messages_field": "messages", "answer_field": "reference", "licence": LICENCE,
              **({"tools_field": "tools"} if with_tools else {})}
    return {"name": f"usage-{cluster}", "teacher": {"id": "logged.yaml"},
            "prompts": {"train": [{**source, "path": "train.jsonl"}], "eval": [{**source, "path": "heldout.jsonl"}]},
            "sampling": {"n": 1, "max_tokens": 64}, "verifiers": [verifier],
            "student": {"name": f"student-{cluster}", "base": "smollm2-135m-instruct"}}


def write_cluster(folder, cluster: str, task: str, verifier: dict, rows: list[dict]) -> None:
    d = folder / cluster
    d.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "heldout.jsonl").write_text(text)
    (d / "train.jsonl").write_text(text)
    (d / "logged.yaml").write_text(yaml.safe_dump({
        "id": f"logged-{cluster}", "model": "gpt-4o", "revision": "logged", "licence": LICENCE,
        "replay": {"files": ["heldout.jsonl", "train.jsonl"], "messages_field": "messages", "tools_field": "tools",
                   "answer_field": "logged"}}))
    (d / "r.yaml").write_text(yaml.safe_dump(recipe(cluster, task, verifier, any(r["tools"] for r in rows))))


@pytest.fixture
def conversion(tmp_path):
    """A conversion folder, its serving config (a cascade weather student, a support student with
    policy student) and a price table of 0.002 USD per logged call."""
    folder = tmp_path / "conversion"
    write_cluster(folder, "c0", "tool call", {"name": "tool-call"}, [r for r, _ in WEATHER])
    write_cluster(folder, "c1", "classification", {"name": "match"}, [r for r, _ in SUPPORT])
    logged = [{"model": "gpt-4o", "calls": 10, "licence": LICENCE}]
    (folder / "plan.json").write_text(json.dumps({"kind": "distill usage plan", "clusters": [
        {"id": "c0", "task_type": "tool call", "chosen": True, "recipe": "c0/r.yaml", "logged_models": logged},
        {"id": "c1", "task_type": "classification", "chosen": True, "recipe": "c1/r.yaml", "logged_models": logged},
        {"id": "c2", "task_type": "free text", "chosen": False, "logged_models": logged}]}))
    sigs = {signature(WEATHER_SYSTEM, ("get_weather",)): {"cluster": "c0", "share": 1.0, "calls": 20},
            signature(WEATHER_V2, ("get_weather",)): {"cluster": "c0", "share": 0.96, "calls": 25},
            signature(SUPPORT_SYSTEM, ()): {"cluster": "c1", "share": 1.0, "calls": 20}}
    RequestClassifier([], ["c0", "c1"], np.zeros((0, 0)), Vectorizer([], [], {"system": 1.0, "tools": 1.0, "user": 1.0}),
                      sigs, 0.95, 0.1, 0.05, {"store": "s", "store_calls": 65, "clustering": "t", "learnt_from": 65}
                      ).save(tmp_path / "classifier.json")
    config = {"classifier": "classifier.json", "fallback": {"base_url": "http://127.0.0.1:9/v1", "model": "gpt-4o"},
              "students": [{"cluster": "c0", "name": "weather", "model": "smollm2-135m-instruct", "template": "hermes",
                            "policy": "cascade", "verifier": "tool-call", "min_confidence": 0.98, "max_tokens": 64},
                           {"cluster": "c1", "name": "support", "model": "smollm2-135m-instruct", "policy": "student",
                            "verifier": "none"}],
              "log_dir": None}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump({"models": {"gpt-4o": {"input": 1.0, "output": 2.0}}}))
    return folder


def replay(folder, **kw):
    students = {"weather": FakeStudent(), "support": FakeStudent()}
    settings = Settings(prices=str(folder.parent / "prices.yaml"), hardware_usd_per_hour=3600.0, **kw)  # $1 a second
    result = replay_conversion(folder, load_config(folder.parent / "serve.yaml"), settings, students, say=lambda _: None)
    return result, students


def test_each_held_out_call_is_routed_and_scored_against_the_logged_answer(conversion):
    result, students = replay(conversion)
    calls = {c["call_id"]: c for c in result["calls"]}
    who = {k: (c["answered_by"], c["reason"], c["score"]) for k, c in calls.items()}
    assert who == {"Weather in Paris?": ("weather", None, 1.0),
                   "Weather in Rome?": ("weather", None, 0.0),  # a call that fits the schema, the wrong city
                   "Weather in Oslo?": ("llm", "verifier-failed", 1.0),
                   "Weather in Lima?": ("llm", "low-confidence", 1.0),
                   "I was charged twice": ("support", None, 1.0),
                   "Where is my money back?": ("support", None, 0.0),
                   "Ahoy, where be the treasure?": ("llm", "unrouted", 1.0)}
    assert calls["Weather in Lima?"]["confidence"] == 0.96 and calls["Weather in Paris?"]["how"] == "signature"
    assert calls["Weather in Oslo?"]["check"]["score"] == 0.0 and calls["Weather in Oslo?"]["student_score"] == 0.0
    # The low-confidence call was asked of the student for the calibration only, and scored.
    assert students["weather"].asked.count("Weather in Lima?") == 1 and result["calibration_asks"] == {"weather": 1}
    assert calls["Weather in Lima?"]["student_score"] == 1.0 and not calls["Weather in Lima?"]["student_paid"]
    assert "Ahoy, where be the treasure?" not in students["support"].asked

    c0, c1, overall = result["clusters"]["c0"], result["clusters"]["c1"], result["overall"]
    assert (c0["calls"], c0["relative"], c0["student_share"]) == (4, 0.75, 0.5)
    assert (c1["calls"], c1["relative"], c1["student_share"]) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert overall["relative"] == pytest.approx(5 / 7) and overall["student_share"] == pytest.approx(4 / 7)
    assert c0["routes"] == {"weather": 2, "llm; verifier-failed": 1, "llm; low-confidence": 1}
    assert "c2" not in result["clusters"], "a cluster the plan did not choose has no held-out calls"
    saved = json.loads((conversion / "replay.json").read_text())
    assert saved["overall"]["relative"] == pytest.approx(5 / 7) and len(saved["calls"]) == 7
    assert "<svg" in (conversion / "replay.html").read_text()


def test_cost_per_1000_calls_prices_the_llm_calls_and_times_the_students(conversion):
    result, _ = replay(conversion)
    spa = result["seconds_per_answer"]
    assert spa["weather"] >= SLEEP and spa["support"] >= SLEEP
    llm_call = (1000 * 1.0 + 500 * 2.0) / 1e6  # 0.002 USD at 1 and 2 USD per million tokens
    # c0: the LLM answers Oslo and Lima; the student is paid for Paris, Rome and Oslo (its failed
    # answer cost its time too), not for Lima (asked only for the calibration). At $1 a second.
    c0 = (2 * llm_call + 3 * spa["weather"]) / 4 * 1000
    c1 = (1 * llm_call + 2 * spa["support"]) / 3 * 1000
    assert result["clusters"]["c0"]["cost_per_1000"] == pytest.approx(c0)
    assert result["clusters"]["c1"]["cost_per_1000"] == pytest.approx(c1)
    assert result["overall"]["cost_per_1000"] == pytest.approx((c0 * 4 + c1 * 3) / 7)
    assert result["overall"]["llm_only_cost_per_1000"] == pytest.approx(llm_call * 1000)


def test_router_latency_leaves_out_the_models_time(conversion):
    result, _ = replay(conversion)
    o = result["overall"]
    assert 0 < o["router_ms"]["p50"] <= o["router_ms"]["p99"] < SLEEP * 1000 / 2
    assert o["call_ms"]["p99"] >= SLEEP * 1000, "a call the student answered waits for it"
    for c in result["calls"]:
        assert c["router_ms"] < c["call_ms"]
    assert result["llm_latency"].startswith("not included")  # no convert.json with logged latencies


def test_a_price_missing_makes_the_cost_unknown_not_zero(conversion, tmp_path):
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump({"models": {"claude-x": {"input": 1.0, "output": 1.0}}}))
    result, _ = replay(conversion)
    assert result["overall"]["cost_per_1000"] is None and result["overall"]["llm_only_cost_per_1000"] is None


def test_the_replay_calibrates_the_cascade_threshold(conversion):
    result, _ = replay(conversion, keep=0.75, max_llm_share=0.3)
    cal = result["calibration"]["weather"]
    # Paris (1.0, right), Rome (1.0, wrong), Oslo (1.0, broken: the cascade sends it on), Lima (0.96, right).
    assert cal["calls"] == 4 and cal["student_only"] == 0.5
    assert [(p["threshold"], p["llm_share"], p["quality"]) for p in cal["points"]] == [(0.0, 0.25, 0.75),
                                                                                       (1.0, 0.5, 0.75)]
    assert cal["apgr"] == pytest.approx(0.25 * 0.25 + 0.25 * 0.5 + 0.5 * 0.75)
    assert cal["cpt"] == {"50%": 0.25, "80%": pytest.approx(0.8)}
    assert cal["targets"]["keep 0.75"]["threshold"] == 0.0
    assert cal["targets"]["max_llm_share 0.3"] == {"threshold": 0.0, "llm_share": 0.25, "quality": 0.75,
                                                   "relative": 0.75}
    support = result["calibration"]["support"]  # policy student: every answer kept
    assert support["student_only"] == 0.5 and support["points"][0]["llm_share"] == 0.0


def test_limit_caps_the_calls_of_each_cluster(conversion):
    result, _ = replay(conversion, limit=2)
    assert result["clusters"]["c0"]["calls"] == 2 and result["clusters"]["c1"]["calls"] == 2
    assert result["limit"] == 2


# ---- the calibration measures on hand-computed curves ---------------------------------------

RAMP = [CalibrationCall(0.2, 0.0, True), CalibrationCall(0.4, 0.0, True), CalibrationCall(0.6, 1.0, True),
        CalibrationCall(0.8, 1.0, True)]


def test_the_curve_has_a_point_per_threshold_that_changes_the_routing():
    cal = curve(RAMP)
    assert cal["student_only"] == 0.5
    # min_confidence 0.2 sends nothing more than 0 does (0.2 is not below 0.2): one point for both.
    assert [(p["threshold"], p["llm_share"], p["quality"], p["recovered"]) for p in cal["points"]] == [
        (0.0, 0.0, 0.5, 0.0), (0.4, 0.25, 0.75, 0.5), (0.6, 0.5, 1.0, 1.0), (0.8, 0.75, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)]
    assert cal["apgr"] == pytest.approx(0.25 * 0.25 + 0.25 * 0.75 + 0.25 + 0.25)
    assert cal["cpt"] == {"50%": 0.25, "80%": pytest.approx(0.4)}


@pytest.mark.parametrize("points, expected_apgr, expected_cpt", [
    ([], 0.5, {0.5: 0.5, 0.8: 0.8}),  # random routing: the diagonal
    ([(0.2, 0.5), (0.5, 0.8)], 0.2 * 0.25 + 0.3 * 0.65 + 0.5 * 0.9, {0.4: 0.16, 0.5: 0.2, 0.8: 0.5, 0.9: 0.75}),
    ([(0.0, 0.6), (0.1, 1.0)], 0.1 * 0.8 + 0.9, {0.5: 0.0, 0.8: 0.05, 1.0: 0.1}),  # the cascade alone recovers 60%
    ([(0.3, 0.4), (0.3, 0.7)], 0.3 * 0.35 + 0.7 * 0.85, {0.7: 0.3}),  # one share twice: the better counts
])
def test_apgr_and_cpt_on_hand_computed_curves(points, expected_apgr, expected_cpt):
    assert apgr(points) == pytest.approx(expected_apgr)
    for level, share in expected_cpt.items():
        assert cpt(points, level) == pytest.approx(share)


def test_no_gap_to_recover_gives_no_apgr():
    cal = curve([CalibrationCall(0.5, 1.0, True), CalibrationCall(0.9, 1.0, True)])
    assert cal["student_only"] == 1.0 and cal["apgr"] is None and cal["cpt"] == {}
    assert all(p["recovered"] is None for p in cal["points"])
    assert curve([])["points"] == [] and pick_threshold(curve([]), keep=0.9)["threshold"] is None


@pytest.mark.parametrize("target, threshold, share", [
    ({"keep": 0.9}, 0.6, 0.5), ({"keep": 0.75}, 0.4, 0.25), ({"keep": 0.5}, 0.0, 0.0),
    ({"max_llm_share": 0.3}, 0.4, 0.25), ({"max_llm_share": 0.6}, 0.6, 0.5), ({"max_llm_share": 0.0}, 0.0, 0.0),
])
def test_the_threshold_picker_meets_either_target(target, threshold, share):
    pick = pick_threshold(curve(RAMP), **target)
    assert (pick["threshold"], pick["llm_share"]) == (threshold, share)


def test_the_threshold_picker_says_when_no_threshold_meets_the_target():
    weak = curve([CalibrationCall(1.0, 0.0, True), CalibrationCall(1.0, 0.0, False), CalibrationCall(0.5, 0.0, True)])
    assert "no threshold keeps 90%" in pick_threshold(weak, keep=0.9)["why"]
    assert "even min_confidence 0 sends 33% of the calls" in pick_threshold(weak, max_llm_share=0.1)["why"]
    with pytest.raises(ValueError, match="give one target"):
        pick_threshold(weak, keep=0.9, max_llm_share=0.1)
    with pytest.raises(ValueError, match="give one target"):
        pick_threshold(weak)


# ---- the command ----------------------------------------------------------------------------

def test_the_command_prints_the_replay_and_the_chosen_threshold(conversion, monkeypatch):
    import distill.serve.replay as replay_module

    monkeypatch.setattr(replay_module, "engines_for", lambda config, clusters, say: {
        "weather": FakeStudent(), "support": FakeStudent()})
    serve_yaml = str(conversion.parent / "serve.yaml")
    result = CliRunner().invoke(app, ["serve-replay", str(conversion), "--config", serve_yaml, "--prices",
                                      str(conversion.parent / "prices.yaml"), "--keep", "0.75"])
    assert result.exit_code == 0, result.output
    assert "overall: 7 calls, accuracy vs LLM 71%, students answered 57%" in result.output
    assert "calibration of weather (4 calls): student alone 50%, APGR 0.562, CPT(50%) 25%, CPT(80%) 80%" in result.output
    assert "keep 0.75: min_confidence 0 (LLM share 25%, accuracy vs LLM 75%; configured 0.98)" in result.output
    as_json = CliRunner().invoke(app, ["serve-replay", str(conversion), "--config", serve_yaml, "--json", "--limit", "1"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["overall"]["calls"] == 2


def test_the_command_refuses_a_missing_folder_or_a_config_that_does_not_load(conversion, tmp_path):
    serve_yaml = str(tmp_path / "serve.yaml")
    missing = CliRunner().invoke(app, ["serve-replay", str(tmp_path / "nowhere"), "--config", serve_yaml])
    assert missing.exit_code == 2 and "no such folder" in missing.output and "Traceback" not in missing.output
    (tmp_path / "bad.yaml").write_text("fallback: {base_url: http://x/v1, model: m}\nstudents: [{cluster: c0}]\n")
    bad = CliRunner().invoke(app, ["serve-replay", str(conversion), "--config", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "students[0].name" in bad.output and "Traceback" not in bad.output
    no_plan = tmp_path / "empty"
    no_plan.mkdir()
    empty = CliRunner().invoke(app, ["serve-replay", str(no_plan), "--config", serve_yaml])
    assert empty.exit_code == 2 and "no plan.json" in empty.output
    with pytest.raises(ReplayError, match="--limit 0"):
        replay(conversion, limit=0)


@pytest.mark.slow
def test_a_replay_through_a_real_vllm_student(conversion, tmp_path):
    """The weather student on vLLM (SmolLM2-135M, hermes): every call answered by someone, scored,
    and timed; the support cluster left to the fallback (policy llm)."""
    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    config["students"][1]["policy"] = "llm"
    config["students"][0]["engine_args"] = {"max_model_len": 2048}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    result = replay_conversion(conversion, load_config(tmp_path / "serve.yaml"),
                               Settings(prices=str(tmp_path / "prices.yaml")), say=lambda _: None)
    calls = result["calls"]
    assert len(calls) == 7 and all(c["answered_by"] in ("weather", "llm") for c in calls)
    weather = [c for c in calls if c["cluster"] == "c0" and c["reason"] != "low-confidence"]
    assert all(c["student_answered"] and c["student_score"] in (0.0, 1.0) for c in weather)
    assert result["seconds_per_answer"]["weather"] > 0 and result["overall"]["cost_per_1000"] > 0
    assert result["overall"]["router_ms"]["p99"] < result["overall"]["call_ms"]["p99"]
