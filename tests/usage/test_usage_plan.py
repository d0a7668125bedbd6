"""distill usage plan: which clusters of the demo agent's logs become recipes and why, the recipes
and prompt files written, the split, the references, and the licence of the logged model."""

import json
import shutil
from pathlib import Path

import pytest

from distill.recipe import load_recipe
from distill.usage import UsageStore
from distill.usage.catalogues import Base, candidates, load_bases, logged_licence
from distill.usage.plan import Settings, _too_varied, assess, plan_store
from support.usage_logs import claude_store

CHOSEN = {"travel-desk", "office-assistant", "ticket-fields", "ticket-intent"}


@pytest.fixture(scope="module")
def planned(demo, tmp_path_factory):
    """The plan of a copy of the demo store (1200 calls, 30% untagged), with its folder."""
    root = tmp_path_factory.mktemp("plan")
    shutil.copytree(demo.store, root / "store")
    plan = plan_store(str(root / "store"), root / "out")
    return plan, root / "out", str(root / "store")


def by_id(plan):
    return {c["id"]: c for c in plan["clusters"]}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_plan_chooses_tool_routing_extraction_and_classification_and_says_why_not_the_rest(planned):
    plan, out, _ = planned
    clusters = by_id(plan)
    assert {c for c, e in clusters.items() if e["chosen"]} == CHOSEN
    assert json.loads((out / "plan.json").read_text()) == json.loads(json.dumps(plan))
    summary = clusters["ticket-summary"]
    assert summary["reasons"] == ["acme-llm-70b (142 calls): licence unknown: add it to "
                                  "distill/usage/logged_models.yaml or pass --logged-licence"]
    mail = clusters["mail-priority"]
    assert len(mail["reasons"]) == 1 and mail["reasons"][0].startswith("too few calls: 47 usable"), mail["reasons"]
    assert mail["notes"] and "acme-llm-70b" in mail["notes"][0]
    for cid in CHOSEN:
        c = clusters[cid]
        assert c["reasons"] == [] and c["licence"]["verdict"] == "allowed-with-obligations"
        assert c["verifier"] == ("tool-call" if c["task_type"] == "tool call" else "match")
        assert c["student"] == "smollm2-135m-instruct" and "logged answers" in c["targets"]
        assert c["teacher"] == "logged.yaml" and c["recipe"].endswith("-from-logged.yaml")
        assert any("compete with OpenAI" in o for o in c["licence"]["obligations"])
    assert sorted(p.name for p in out.iterdir()) == sorted(CHOSEN | {"plan.json"})  # nothing for skipped ones


def test_every_written_recipe_validates(planned):
    _, out, _ = planned
    recipes = sorted(out.rglob("*-from-*.yaml"))
    assert len(recipes) == len(CHOSEN)
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.prompts.train[0].params.licence == "openai-api-terms"
        assert recipe.prompts.eval, path
        # The teacher replays the logged answers: one answer per call, served by the replay backend.
        teacher = recipe.teacher_entry
        assert teacher.backend is None and teacher.replay is not None and teacher.licence == "openai-api-terms"
        assert sorted(Path(f).name for f in teacher.replay.files) == ["heldout.jsonl", "train.jsonl"]
        assert recipe.sampling.n == 1 and recipe.sampling.constrained_calls is None
        # Enough passes for a small base to see about 32 updates of 4 calls, at most 8; unpacked.
        calls = len(rows(path.parent / "train.jsonl"))
        train = recipe.train
        assert train.epochs == min(8, max(1, -(-32 // -(-calls // 4)))) and not train.packing, (path, calls)
        assert train.batch_size * train.gradient_accumulation_steps == 4
        if path.parent.name in ("travel-desk", "office-assistant"):
            assert recipe.student.template == "hermes" and recipe.verifiers[0].name == "tool-call"
            assert train.batch_size == 1 and train.max_length == 4096  # one long row's logits at a time
        else:
            mode = "json" if path.parent.name == "ticket-fields" else "text"
            assert recipe.verifiers[0].name == "match" and recipe.verifiers[0].params.mode == mode
            assert recipe.student.template is None


def test_the_time_split_holds_out_the_latest_calls(planned):
    _, out, _ = planned
    train, held = rows(out / "ticket-fields" / "train.jsonl"), rows(out / "ticket-fields" / "heldout.jsonl")
    assert len(held) == round(0.1 * (len(train) + len(held)))
    assert max(r["timestamp"] for r in train) <= min(r["timestamp"] for r in held)
    train, held = rows(out / "travel-desk" / "train.jsonl"), rows(out / "travel-desk" / "heldout.jsonl")
    tools = {r["category"] for r in held}
    assert tools == {r["category"] for r in train}, "every tool on both sides (stratified)"
    for tool in tools:  # within each tool's calls, the latest are held out
        assert max(r["timestamp"] for r in train if r["category"] == tool) <= \
            min(r["timestamp"] for r in held if r["category"] == tool)
    assert not {r["call_id"] for r in train} & {r["call_id"] for r in held}


def test_tool_call_references_are_the_logged_calls(planned):
    _, out, store = planned
    logged = {r["call_id"]: r for r in UsageStore.open(store).read_calls(["call_id", "completion", "status"]).to_pylist()}
    exported = rows(out / "travel-desk" / "train.jsonl") + rows(out / "travel-desk" / "heldout.jsonl")
    assert exported
    for row in exported:
        call = logged[row["call_id"]]
        assert call["status"] == "ok"
        turn = call["completion"][-1]
        calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                 for c in turn["tool_calls"] or []]
        assert row["reference"] == {"expected": calls}
        assert row["category"] == (calls[0]["name"] if calls else "(no call)")
    answer = rows(out / "ticket-intent" / "train.jsonl")[0]
    assert answer["reference"] == logged[answer["call_id"]]["completion"][-1]["content"].strip()


def test_a_random_split_and_a_licence_given_for_an_unknown_model(planned, tmp_path):
    _, _, store = planned
    settings = Settings(split="random", seed=3, logged_licence=["acme-llm-*=apache-2.0"], min_calls=40)
    plan = by_id(plan_store(store, tmp_path / "out", settings))
    summary = plan["ticket-summary"]
    assert summary["chosen"] and summary["verifier"] == "judge", summary["reasons"]
    assert summary["logged_models"][0]["licence_from"] == "--logged-licence acme-llm-*=apache-2.0"
    assert load_recipe(tmp_path / "out" / summary["recipe"]).prompts.train[0].params.licence == "apache-2.0"
    assert plan["mail-priority"]["chosen"] and "random (seed 3)" in plan["mail-priority"]["split"]
    held = rows(tmp_path / "out" / "ticket-fields" / "heldout.jsonl")
    again = by_id(plan_store(store, tmp_path / "again", settings))
    assert again["ticket-fields"]["heldout"] == len(held)
    assert rows(tmp_path / "again" / "ticket-fields" / "heldout.jsonl") == held  # seeded


def test_a_model_whose_terms_refuse_distillation_is_refused_with_its_clause(tmp_path):
    plan = plan_store(claude_store(tmp_path, "claude-3-5-sonnet-20241022"), tmp_path / "out", Settings(min_calls=10))
    (cluster,) = plan["clusters"]
    assert not cluster["chosen"] and cluster["logged_models"][0]["licence"] == "anthropic-terms"
    (reason,) = cluster["reasons"]
    assert reason.startswith("licence refused (anthropic-terms:training)")
    assert "Commercial Terms D.4 (use restrictions); Usage Policy (model distillation)" in reason
    assert not (tmp_path / "out" / cluster["id"]).exists()


def test_failed_calls_dominating_and_too_varied_free_text():
    def call(i, status="ok", answer="The customer wants a refund."):
        return {"call_id": f"c{i}", "model": "gpt-4o", "response_model": None, "status": status, "duplicate": None,
                "timestamp": None, "tools": None, "prompt": [{"role": "user", "content": f"ticket {i}"}],
                "completion": [{"role": "assistant", "content": answer}] if status == "ok" else []}

    calls = [call(i) for i in range(4)] + [call(i, "error") for i in range(4, 10)]
    entry = assess({"id": "x", "label": "x", "task_type": "free text"}, calls, Settings(min_calls=2))
    assert entry["reasons"] == ["failed calls dominate: 6 of 10 (60%) failed, above 50%"]
    long = [{"reference": " ".join(f"word{i}-{j}" for j in range(60))} for i in range(10)]
    assert _too_varied(long, Settings()).startswith("too varied: free-text answers of 60 words (median), 100%")
    assert _too_varied([{"reference": "Short and the same."}] * 10, Settings()) is None


@pytest.mark.parametrize("model, licence", [
    ("gpt-4o-2024-08-06", "openai-api-terms"), ("claude-3-5-sonnet", "anthropic-terms"),
    ("meta-llama/Llama-3.1-70B-Instruct", "llama3.1"), ("qwen2.5-72b-instruct", "qwen"),
    ("Qwen/Qwen2.5-7B-Instruct", "apache-2.0"), ("gpt-oss-120b", "apache-2.0"), ("acme-llm-70b", None),
])
def test_logged_model_names_map_to_licences(model, licence):
    assert logged_licence(model)[0] == licence


def test_the_data_files_agree_with_the_catalogues():
    import yaml

    from distill.licensing import shipped
    from distill.teachers import load_teacher
    from distill.usage.catalogues import LOGGED_MODELS_FILE

    for entry in yaml.safe_load(LOGGED_MODELS_FILE.read_text())["models"]:
        shipped().get(entry["licence"])  # raises for an id the licence engine does not know
    for base in load_bases():
        teacher = load_teacher(base.id)
        assert (base.licence, base.params_b) == (teacher.licence, teacher.params_b), base.id
    assert not Base("x", 1, "mit", "none", "cpu").fits("tool call") and Base("x", 1, "mit", "none", "cpu").fits("extraction")
    assert [b.id for b in candidates("tool call")][0] == "smollm2-135m-instruct"


def test_relabelling_with_a_teacher_and_capped_samples(planned, tmp_path):
    _, _, store = planned
    plan = by_id(plan_store(store, tmp_path / "out", Settings(targets="teacher", max_train=20, max_heldout=5)))
    travel = plan["travel-desk"]
    assert travel["chosen"] and travel["teacher"] == "smollm2-135m-instruct" and "relabelled" in travel["targets"]
    recipe = load_recipe(tmp_path / "out" / travel["recipe"])
    assert recipe.teacher.template == "hermes" and recipe.sampling.n == 4 and recipe.sampling.constrained_calls == 0.5
    assert not (tmp_path / "out" / "travel-desk" / "logged.yaml").exists()
    train = rows(tmp_path / "out" / "travel-desk" / "train.jsonl")
    held = rows(tmp_path / "out" / "travel-desk" / "heldout.jsonl")
    assert len(train) == 20 and len(held) == 5 and travel["train"] == 20
    full = rows(Path(planned[1]) / "travel-desk" / "train.jsonl")
    assert {r["category"] for r in train} == {r["category"] for r in full}, "the cap keeps every tool"
    assert "capped at 20" in (tmp_path / "out" / travel["recipe"]).read_text()


def test_bad_targets_and_caps_are_refused_before_anything_is_written(planned, tmp_path):
    from distill.usage.plan import PlanError

    _, _, store = planned
    for settings, words in ((Settings(targets="logs"), "--targets 'logs'"), (Settings(max_train=0), "--max-train 0")):
        with pytest.raises(PlanError, match=words):
            plan_store(store, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_a_token_budget_gives_long_tool_prompts_fewer_training_calls(planned, tmp_path):
    from distill.usage.export import estimated_tokens

    _, _, store = planned
    plan = by_id(plan_store(store, tmp_path / "out", Settings(max_train_tokens=6000)))
    sizes = {}
    for cid in ("travel-desk", "ticket-intent"):
        train = rows(tmp_path / "out" / cid / "train.jsonl")
        tokens = sum(map(estimated_tokens, train))
        assert tokens <= 6000 * 1.2, (cid, tokens)  # the budget, at the mean row length
        sizes[cid] = len(train)
    assert sizes["travel-desk"] < sizes["ticket-intent"] / 4, sizes
    assert plan["travel-desk"]["train"] == sizes["travel-desk"]


@pytest.mark.parametrize("calls, epochs", [(1, 8), (8, 8), (20, 7), (40, 4), (128, 1), (4000, 1)])
def test_a_small_base_gets_more_passes_over_fewer_calls(calls, epochs):
    from distill.usage.recipe_writer import epochs_for

    assert epochs_for(calls) == epochs
