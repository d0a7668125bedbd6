"""distill usage convert without engines: the gate, format errors, few-shot examples, and the
whole conversion over the demo store with a stand-in base (the replay backend answering some
clusters' calls as the logged model did) and a stand-in fine-tune; then a second conversion after
new logs were imported, which redoes only the clusters that changed."""

import json
from pathlib import Path
import shutil

import pytest

from distill.backends.replay import make_replay_backend
from distill.backends import BackendOptions
from distill.teachers import Replay, Teacher
from distill.usage import import_logs
from distill.usage.convert import (ConvertError, Gate, convert_store, decide, examples, format_error, passes,
                                   with_examples)
from distill.usage.plan import Settings
from distill.usage.synthetic import write_demo_logs

GATE = Gate(min_relative=0.9, max_format_errors=0.05, hardware_usd_per_hour=0.36)  # 0.0001 USD a second


def cluster(**kw):
    base = {"id": "c", "task_type": "classification", "calls": 70, "calls_per_day": 10.0, "logged_models": ["gpt-4o"],
            "llm_cost_per_call": 0.001, "llm_cost_per_day": 0.01, "llm_accuracy": 1.0, "baselines": [],
            "student": None}
    return base | kw


def test_the_gate_asks_for_relative_accuracy_and_few_format_errors():
    assert passes({"relative": 0.95, "format_errors": 0.0}, GATE) == []
    why = passes({"relative": 0.5, "format_errors": 0.2}, GATE)
    assert why == ["accuracy 50% of the logged model's, below the 90% the gate asks",
                   "format errors 20% of answers, above the 5% allowed"]
    assert passes({"relative": None, "format_errors": 0.0}, GATE)[0].startswith("accuracy unknown")


def test_a_base_that_passes_as_it_is_takes_the_cluster_zero_shot_first():
    c = cluster(baselines=[{"model": "b", "shots": 3, "relative": 1.0, "format_errors": 0.0, "seconds_per_call": 0.5},
                           {"model": "b", "shots": 0, "relative": 0.92, "format_errors": 0.0, "seconds_per_call": 0.2}])
    decide(c, GATE)
    assert c["decision"] == "promote-base" and c["model"] == "b"
    assert c["cost_per_call_after"] == pytest.approx(0.2 * 0.0001)
    assert c["saving_per_day"] == pytest.approx(0.01 - 10 * 0.2 * 0.0001)


def test_a_student_is_promoted_or_the_llm_kept_with_the_reasons():
    good = {"name": "s", "relative": 0.97, "accuracy": 0.97, "format_errors": 0.01, "seconds_per_call": 1.0}
    c = cluster(student=good, baselines=[{"model": "b", "shots": 0, "relative": 0.1, "format_errors": 0.5}])
    decide(c, GATE)
    assert c["decision"] == "promote-student" and c["model"] == "s" and "97%" in c["reasons"][0]
    assert c["reasons"][-1] == "1.00 s of its engine per answer on a 2-core CPU, in batch"
    timed = cluster(student=good, llm_latency_ms=850.0)
    decide(timed, GATE)
    assert timed["reasons"][-1].endswith("; the logged model took 0.85 s per call (median)")
    bad = cluster(student=good | {"relative": 0.6, "accuracy": 0.6})
    decide(bad, GATE)
    assert bad["decision"] == "keep-llm" and bad["model"] == "gpt-4o"
    assert bad["reasons"] == ["the student's accuracy 60% of the logged model's, below the 90% the gate asks"]
    assert bad["cost_per_day_after"] == bad["llm_cost_per_day"] and bad["saving_per_day"] == 0
    dear = cluster(student=good | {"seconds_per_call": 20.0})  # 0.002 USD a call, the LLM's is 0.001
    decide(dear, GATE)
    assert dear["decision"] == "keep-llm" and "costs no less than the logged model" in dear["reasons"][-1]
    unknown = cluster(student=good | {"seconds_per_call": None})
    decide(unknown, GATE)
    assert unknown["decision"] == "promote-student" and unknown["cost_per_day_after"] is None
    assert unknown["saving_per_day"] is None and "cost is unknown" in unknown["reasons"][-1]


def test_format_errors_are_answers_that_do_not_parse_as_the_task_answers():
    assert format_error("tool call", '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', set())
    assert not format_error("tool call", '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', set())
    assert not format_error("tool call", "Sorry, no tool fits.", set())  # wrong perhaps, but well formed
    assert format_error("extraction", "The name is Ann.", set())
    assert not format_error("extraction", 'Here: {"name": "Ann"}', set())
    assert format_error("classification", "maybe billing?", {"billing", "refund"})
    assert not format_error("classification", '"Billing".', {"billing", "refund"})
    assert format_error("classification", None, {"billing"})


def test_few_shot_examples_come_one_per_label_first_after_the_system_turn(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": f"q{i}"}],
             "category": label, "reference": label, "logged": {"role": "assistant", "content": label}}
            for i, label in enumerate(["a", "a", "a", "b", "c"])]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    turns = examples(tmp_path, 3, seed=0)
    assert len(turns) == 6 and {t["content"] for t in turns[1::2]} == {"a", "b", "c"}
    assert all(t["role"] != "system" for t in turns)
    call = [{"role": "system", "content": "S"}, {"role": "user", "content": "new"}]
    assert with_examples(call, turns) == [call[0], *turns, call[1]]
    assert with_examples(call[1:], turns) == [*turns, call[1]]


def test_bad_gate_settings_are_refused(demo, tmp_path):
    for gate, words in ((Gate(min_relative=0), "--min-relative"), (Gate(max_format_errors=2), "--max-format-errors"),
                        (Gate(shots=-1), "--shots")):
        with pytest.raises(ConvertError, match=words):
            convert_store(demo.store, tmp_path / "out", gate=gate, say=lambda _: None)
    assert not (tmp_path / "out").exists()


class Stand:
    """A stand-in base: answers the ticket-intent cluster's calls as the logged model did (the
    replay backend over its files) and every other call with a word that is no answer."""

    def __init__(self, plan_dir):
        self.plan_dir, self.served = plan_dir, []

    def __call__(self, model):
        self.served.append(model.id)
        return self

    def generate(self, work):
        files = [str(p) for p in sorted((self.plan_dir / "ticket-intent").glob("*.jsonl"))]
        replay = make_replay_backend(Teacher(id="r", model="m", revision="r", licence="mit", replay=Replay(files=files)),
                                     BackendOptions(batch_size=8))
        mine = [w for w in work if w["work_id"].startswith("ticket-intent|0|")]
        rest = [w for w in work if not w["work_id"].startswith("ticket-intent|0|")]
        for batch in replay.generate(mine):
            yield batch
        yield [{"work_id": w["work_id"], "text": "unsure", "prompt_tokens": 10, "completion_tokens": 2,
                "finish_reason": "stop", "error": ""} for w in rest]


def fake_fine_tune(trained):
    def fine_tune(c, plan_dir, progress_factory=None):
        trained.append(c["id"])
        relative = {"travel-desk": 0.95, "office-assistant": 0.7}.get(c["id"], 0.93)
        return {"name": f"student-{c['id']}", "base": "smollm2-135m-instruct", "run_dir": "r", "card": str(plan_dir / "no-card"),
                "accuracy": relative, "pass@1": relative, "format_errors": 0.0, "answers": 10, "llm_accuracy": 1.0,
                "seconds_per_call": 0.5, "train_rows": 40}
    return fine_tune


def test_a_whole_conversion_then_an_incremental_one(demo, tmp_path, monkeypatch):
    import distill.usage.convert as convert

    shutil.copytree(demo.store, tmp_path / "store")
    store, out = str(tmp_path / "store"), tmp_path / "out"
    trained: list[str] = []
    monkeypatch.setattr(convert, "fine_tune", fake_fine_tune(trained))
    stand = Stand(out)
    settings = Settings(max_train=30, max_heldout=12)
    lines: list[str] = []
    result = convert_store(store, out, settings, Gate(), say=lines.append, serve=stand)
    c = {x["id"]: x for x in result["clusters"]}
    assert stand.served == ["smollm2-135m-instruct"], "one engine for every cluster's baselines"
    intent = c["ticket-intent"]
    zero = [b for b in intent["baselines"] if b["shots"] == 0][0]
    assert zero["accuracy"] == 1.0 and zero["format_errors"] == 0.0 and zero["answers"] == 12
    few = [b for b in intent["baselines"] if b["shots"] == 3][0]  # its examples kept, for serving it few-shot
    shown = json.loads(Path(few["examples"]).read_text())
    assert "examples" not in zero and [t["role"] for t in shown] == ["user", "assistant"] * 3
    assert intent["decision"] == "promote-base" and intent["model"] == "smollm2-135m-instruct"
    assert "ticket-intent" not in trained and sorted(trained) == ["office-assistant", "ticket-fields", "travel-desk"]
    assert c["travel-desk"]["decision"] == "promote-student" and c["travel-desk"]["model"] == "student-travel-desk"
    assert c["office-assistant"]["decision"] == "keep-llm" and "70%" in c["office-assistant"]["reasons"][0]
    fields = [b for b in c["ticket-fields"]["baselines"] if b["shots"] == 0][0]
    assert fields["accuracy"] == 0.0 and fields["format_errors"] == 1.0  # "unsure" is no JSON object
    assert c["ticket-summary"]["decision"] == "not-converted" and c["ticket-summary"]["plan_reasons"]
    moved = sum(x["calls"] for x in result["clusters"] if x["decision"].startswith("promote"))
    assert result["overall"]["calls_moved"] == moved and result["overall"]["share_moved"] == pytest.approx(
        moved / sum(x["calls"] for x in result["clusters"]))
    assert c["travel-desk"]["llm_cost_per_call"] > 0 and c["travel-desk"]["calls_per_day"] > 0
    assert all(x["change"]["status"] == "new" for x in result["clusters"])
    saved = json.loads((out / "convert.json").read_text())
    assert saved["overall"] == json.loads(json.dumps(result["overall"]))
    assert "travel-desk" in (out / "report.html").read_text() and (out / "report.json").exists()

    # Nothing new: every cluster keeps its results, nothing is served or trained again.
    again = convert_store(store, out, settings, Gate(), say=lines.append, serve=stand)
    assert stand.served == ["smollm2-135m-instruct"] and len(trained) == 3
    assert {x["change"]["status"] for x in again["clusters"]} == {"unchanged"}
    assert [x["decision"] for x in again["clusters"]] == [x["decision"] for x in result["clusters"]]
    assert again["previous"]["share_moved"] == result["overall"]["share_moved"]

    # New logs: clusters keep their ids; the ones whose calls changed are done again.
    more = tmp_path / "more.jsonl"
    write_demo_logs(more, 300, seed=11, untagged=0.3)
    import_logs([str(more)], store)
    third = convert_store(store, out, settings, Gate(), say=lines.append, serve=stand)
    status = {x["id"]: x["change"] for x in third["clusters"]}
    assert set(status) == set(c), "the clusters keep their ids"
    assert any(s["status"] == "retrained" for s in status.values())
    assert all(s["new_calls"] > 0 for s in status.values())
    assert len(trained) > 3 and len(stand.served) == 2


def test_a_cluster_with_too_few_training_calls_under_the_caps_is_not_fine_tuned(demo, tmp_path, monkeypatch):
    import distill.usage.convert as convert

    shutil.copytree(demo.store, tmp_path / "store")
    trained: list[str] = []
    monkeypatch.setattr(convert, "fine_tune", fake_fine_tune(trained))
    out = tmp_path / "out"
    # A token budget that leaves the tool clusters (long prompts: the tools' schemas) a few calls.
    result = convert_store(str(tmp_path / "store"), out, Settings(max_train=30, max_heldout=12, max_train_tokens=3000),
                           Gate(min_train=8), say=lambda _: None, serve=Stand(out))
    c = {x["id"]: x for x in result["clusters"]}
    for cid in ("travel-desk", "office-assistant"):
        calls = len((out / cid / "train.jsonl").read_text().splitlines())
        assert calls < 8 and cid not in trained and c[cid]["decision"] == "keep-llm", (cid, calls)
        assert c[cid]["reasons"][-1] == (f"no fine-tune: {calls} training call(s) under the plan's caps, fewer than the "
                                         "8 one needs (--min-train); raise --max-train or --max-train-tokens")
    assert "ticket-fields" in trained  # short prompts: enough calls under the same budget
    with pytest.raises(ConvertError, match="--min-train 0"):
        convert_store(str(tmp_path / "store"), out, gate=Gate(min_train=0), say=lambda _: None)


def test_one_engine_per_base_is_fair_to_clusters_without_tools():
    """The baselines serve a base with its tool clusters' template (hermes for SmolLM2) for every
    cluster; for a conversation without tools it writes exactly what the model's own template does."""
    from transformers import AutoTokenizer

    from distill.chat_templates import resolve
    from distill.teachers import load_teacher, model_path

    tok = AutoTokenizer.from_pretrained(model_path(load_teacher("smollm2-135m-instruct")))
    turns = [{"role": "system", "content": "Label the ticket."}, {"role": "user", "content": "My card was charged twice"},
             {"role": "assistant", "content": "billing"}, {"role": "user", "content": "Where is my parcel?"}]
    own = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert own == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True,
                                          chat_template=resolve("hermes").text)


def test_the_saving_adds_up_the_clusters_whose_costs_are_known_and_names_the_rest():
    from distill.usage.convert import overall

    clusters = [cluster(id="a", decision="promote-student", calls=60, llm_cost_per_day=0.5, cost_per_day_after=0.1),
                cluster(id="b", decision="keep-llm", calls=30, llm_cost_per_day=0.2, cost_per_day_after=0.2),
                cluster(id="c", decision="promote-student", calls=9, llm_cost_per_day=0.3, cost_per_day_after=None),
                cluster(id="d", decision="not-converted", calls=1, llm_cost_per_day=None, cost_per_day_after=None)]
    o = overall(clusters, 100, 7.0)
    assert o["calls_moved"] == 69 and o["share_moved"] == pytest.approx(0.69)
    assert o["llm_cost_per_day"] == pytest.approx(0.7) and o["cost_per_day_after"] == pytest.approx(0.3)
    assert o["saving_per_day"] == pytest.approx(0.4) and o["projected_saving_per_month"] == pytest.approx(12.0)
    assert o["cost_unknown_for"] == ["c", "d"]
    assert overall([clusters[3]], 1, 7.0)["saving_per_day"] is None


def test_the_flywheel_a_served_log_comes_back_as_new_calls_and_the_students_own_answers_are_no_targets(
        demo, tmp_path, monkeypatch):
    """distill serve's log (the openai format plus `route`) imported into the same store: the calls
    the large model answered become the next round's data, and convert redoes their clusters; the
    calls a student answered are kept apart (`by-student`) and are in no prompt file."""
    import distill.usage.convert as convert
    from distill.usage.store import UsageStore
    from distill.usage.synthetic import generate_logs

    shutil.copytree(demo.store, tmp_path / "store")
    store, out = str(tmp_path / "store"), tmp_path / "out"
    trained: list[str] = []
    monkeypatch.setattr(convert, "fine_tune", fake_fine_tune(trained))
    settings = Settings(max_train=None, max_heldout=12)
    convert_store(store, out, settings, Gate(), say=lambda _: None, serve=Stand(out))
    served = generate_logs(200, seed=23, untagged=0.3)
    by_student = 0
    for i, (record, workload) in enumerate(zip(served.records, served.workloads)):
        if workload == "ticket-fields" and i % 2 == 0 and record.get("response"):
            record["route"] = {"answered_by": "student-ticket-fields", "model": "student-ticket-fields"}
            record["response"]["model"] = "student-ticket-fields"
            by_student += 1
        else:
            record["route"] = {"answered_by": "llm", "model": record["request"]["model"]}
    (tmp_path / "served.jsonl").write_text("".join(json.dumps(r) + "\n" for r in served.records))
    import_logs([str(tmp_path / "served.jsonl")], store)
    rows = UsageStore.open(store, existing=True).read_calls(["call_id", "status", "response_model"]).to_pylist()
    students = {r["call_id"] for r in rows if r["response_model"] == "student-ticket-fields"}
    assert by_student > 5 and len(students) == by_student
    assert all(r["status"] == "by-student" for r in rows if r["call_id"] in students)

    again = convert_store(store, out, settings, Gate(), say=lambda _: None, serve=Stand(out))
    status = {c["id"]: c["change"] for c in again["clusters"]}
    assert status["ticket-fields"]["status"] == "retrained" and status["ticket-fields"]["new_calls"] > 0
    assert trained.count("ticket-fields") == 2
    prompt_ids = {json.loads(line)["call_id"] for p in (out / "ticket-fields").glob("*.jsonl")
                  for line in p.read_text().splitlines()}
    assert prompt_ids and not prompt_ids & students
