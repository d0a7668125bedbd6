"""dpo, kto and sft+dpo: pairs from the run's own samples (hand-made rows), and real TRL training
on the tiny model with a fake teacher that answers every prompt once right and once wrong."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from distill.pipeline import run_pipeline
from distill.recipe import RecipeError, load_recipe
from distill.stages.dataset import assistant_turn
from distill.stages.train import train_student
from distill.training.pairs import preference_rows, score, select, unpaired_rows
from support.student import ArithmeticBackend, student_recipe

# -- pairs from hand-made rows ----------------------------------------------------------------


def sample(prompt_id: str, index: int, accepted: bool, scores=(1.0,), error: str | None = None,
           text: str | None = None, tools: str | None = None) -> dict:
    return {"sample_id": f"{prompt_id}-{index}", "prompt_id": prompt_id, "sample_index": index,
            "completion": text if text is not None else f"answer {index} to {prompt_id}", "tools": tools,
            "error": error, "accepted": accepted,
            "verdicts": [{"verifier": f"v{i}", "score": s, "reason": "", "required": True, "passed": accepted}
                         for i, s in enumerate(scores)]}


def kept_row(s: dict) -> dict:
    """A dataset row for a kept sample, as the dataset stage writes it."""
    return {"prompt": [{"role": "user", "content": f"question {s['prompt_id']}"}],
            "completion": [assistant_turn(s["completion"], bool(s["tools"]))], "tools": s["tools"],
            "sample_id": s["sample_id"], "prompt_id": s["prompt_id"]}


def ids(pairs) -> list[tuple[str, str]]:
    return [(c["sample_id"], r["sample_id"]) for _, c, r in pairs]


def test_a_failed_samples_score_is_the_mean_of_its_verdicts_none_counted_as_zero():
    assert score(sample("p", 0, False, scores=(0.5, None, 1.0))) == 0.5
    assert score(sample("p", 0, False, scores=())) == 0.0


def test_hardest_pairs_each_kept_sample_with_the_highest_scored_failure():
    samples = [sample("p", 0, False, scores=(0.2, 0.2)), sample("p", 1, True),
               sample("p", 2, False, scores=(0.9, 0.5)), sample("p", 3, True),
               sample("p", 4, False, scores=(0.7, 0.7)), sample("p", 5, False, scores=(1.0, None))]
    kept = [kept_row(samples[1]), kept_row(samples[3])]
    pairs, counts = select(samples, kept, "hardest", 4, seed=0)
    # 2 and 4 both score 0.7 on average: the lower index wins; 5 scores 0.5 (None counts as 0)
    assert ids(pairs) == [("p-1", "p-2"), ("p-3", "p-2")]
    assert counts == {"prompts_with_pairs": 1, "pairs": 2, "prompts_without_failed": 0, "prompts_without_kept": 0}


def test_random_pairs_are_drawn_from_the_failures_with_a_seed_and_stay_the_same():
    samples, kept = [], []
    for p in range(20):
        group = [sample(f"p{p}", i, accepted=i < 2, scores=(0.0,) if i >= 2 else (1.0,)) for i in range(6)]
        samples += group
        kept += [kept_row(s) for s in group[:2]]
    first, _ = select(samples, kept, "random", 4, seed=1)
    assert ids(first) == ids(select(list(reversed(samples)), kept, "random", 4, seed=1)[0])  # order-free, stable
    assert all(not r["accepted"] for _, _, r in first) and len(first) == 40
    assert ids(first) != ids(select(samples, kept, "random", 4, seed=2)[0])
    # a prompt's draw depends on its own samples only
    alone = [s for s in samples if s["prompt_id"] == "p7"]
    assert ids(select(alone, kept, "random", 4, seed=1)[0]) == [p for p in ids(first) if p[0].startswith("p7-")]


def test_all_pairs_every_kept_sample_with_every_failure_up_to_the_cap():
    samples = [sample("p", i, accepted=i in (0, 1), scores=(1.0,) if i in (0, 1) else (0.0,)) for i in range(5)]
    kept = [kept_row(s) for s in samples[:2]]
    uncapped, counts = select(samples, kept, "all", 10, seed=0)
    assert ids(uncapped) == [(c, r) for c in ("p-0", "p-1") for r in ("p-2", "p-3", "p-4")]
    capped, counts = select(samples, kept, "all", 4, seed=0)
    assert len(capped) == 4 == counts["pairs"] and set(ids(capped)) < set(ids(uncapped))
    assert ids(capped) == ids(select(samples, kept, "all", 4, seed=0)[0])


def test_prompts_without_a_failure_or_without_a_kept_sample_are_skipped_and_counted():
    samples = [
        sample("a", 0, True), sample("a", 1, True),  # no failure
        sample("b", 0, False, scores=(0.0,)), sample("b", 1, False, scores=(0.0,)),  # no success
        sample("c", 0, True), sample("c", 1, False, scores=(0.0,)),  # the filters dropped its success
        sample("d", 0, True), sample("d", 1, False, error="engine died"), sample("d", 2, False, scores=(0.0,)),
        sample("d", 3, False, scores=(0.0,), text="answer 2 to d"),  # the same failed text again: counted once
    ]
    kept = [kept_row(samples[0]), kept_row(samples[1]), kept_row(samples[6])]
    pairs, counts = select(samples, kept, "all", 4, seed=0)
    assert ids(pairs) == [("d-0", "d-2")]  # an error is no rejected answer
    assert counts == {"prompts_with_pairs": 1, "pairs": 1, "prompts_without_failed": 1, "prompts_without_kept": 2}


def test_pairs_are_in_trls_preference_format_and_keep_tools():
    tools = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
    samples = [sample("t", 0, True, tools=tools, text='<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'),
               sample("t", 1, False, scores=(0.0,), tools=tools,
                      text='<tool_call>{"name": "sub", "arguments": {"a": 1}}</tool_call>'),
               sample("u", 0, True), sample("u", 1, False, scores=(0.0,))]
    kept = [kept_row(samples[0]), kept_row(samples[2])]
    rows, counts = preference_rows(samples, kept, "hardest", 4, 0, assistant_turn)
    with_tools, plain = rows
    assert with_tools["tools"] == tools and plain["tools"] is None
    assert with_tools["prompt"] == [{"role": "user", "content": "question t"}]
    assert with_tools["chosen"][0]["tool_calls"][0]["function"]["name"] == "add"
    assert with_tools["rejected"][0]["tool_calls"][0]["function"]["name"] == "sub"
    assert plain["rejected"] == [{"role": "assistant", "content": "answer 1 to u"}]
    assert (with_tools["chosen_sample_id"], with_tools["rejected_sample_id"]) == ("t-0", "t-1")


def test_kto_rows_are_each_sample_of_the_pairs_once_labelled_and_counted():
    samples = [sample("p", i, accepted=i < 3, scores=(1.0,) if i < 3 else (0.0,)) for i in range(5)]
    samples += [sample("q", 0, True), sample("q", 1, False, scores=(0.0,))]
    kept = [kept_row(s) for s in samples if s["accepted"]]
    rows, counts = unpaired_rows(samples, kept, "hardest", 2, 0, assistant_turn)
    # p: 3 kept x the nearest miss (index 3), capped at 2 pairs -> 2 good + 1 bad; q: 1 + 1
    assert counts["pairs"] == 3 and (counts["rows"], counts["desirable"], counts["undesirable"]) == (5, 3, 2)
    assert {r["sample_id"]: r["label"] for r in rows}["p-3"] is False
    assert all(r["label"] == (r["sample_id"] in {"p-0", "p-1", "p-2", "q-0"}) for r in rows)
    assert rows == unpaired_rows(samples, kept, "hardest", 2, 0, assistant_turn)[0]  # the same shuffle


# -- training on the tiny model ---------------------------------------------------------------


class RightAndWrong(ArithmeticBackend):
    """Answers every even sample index wrong (off by one) and every odd one right: each prompt
    has an accepted and a failed sample, so every prompt has a pair."""

    def generate(self, requests):
        for batch in super().generate(requests):
            for r in batch:
                if int(r["work_id"].rsplit(":", 1)[1]) % 2 == 0:
                    total = int(r["text"].rsplit(" ", 1)[1].rstrip(".")) + 1
                    r["text"] = f"Adding the numbers gives {total}. The answer is {total}."
            yield batch


def preference_run(tmp_path, tiny_model, monkeypatch, prompts: int = 8, **train):
    """The student recipe's run up to its dataset, with `prompts` training prompts answered by RightAndWrong."""
    monkeypatch.chdir(tmp_path)
    path = student_recipe(tmp_path, tiny_model, gradient_checkpointing=False, **train)
    data = yaml.safe_load(path.read_text())
    data["prompts"]["train"][0]["count"] = prompts
    path.write_text(yaml.safe_dump(data))
    run, _ = run_pipeline(load_recipe(path), until="dataset", backend=RightAndWrong())
    return run


class Bar:
    """A progress bar that records its starts and raises at a given step of a given start."""

    def __init__(self, crash_start: int = -1, crash_step: int = -1):
        self.starts, self.seen, self.crash = [], 0, (crash_start, crash_step)

    def start(self, total, completed=0):
        self.starts.append((total, completed))
        self.seen = completed

    def advance(self, n):
        self.seen += n
        if (len(self.starts), self.seen) == self.crash:
            raise KeyboardInterrupt("killed")


def learned(summary: dict) -> None:
    """The loss moved (the first step's learning rate is 0: warm-up; DPO starts at log 2)."""
    losses = [e["loss"] for e in summary["log"]]
    assert len(losses) >= 2 and len(set(losses)) > 1


def test_dpo_trains_on_pairs_of_the_runs_samples(tmp_path, tiny_model, monkeypatch):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="dpo", batch_size=2)
    summary = train_student(run)
    assert summary["method"] == "dpo" and summary["weights"] == "full"
    digest = summary["pairs"].pop("samples_sha256")
    assert summary["pairs"] == {"rule": "hardest", "max_per_prompt": 4, "seed": 0, "prompts_with_pairs": 8,
                                "pairs": 8, "prompts_without_failed": 0, "prompts_without_kept": 0}
    assert summary["preference"] == {"beta": 0.1, "loss_type": "sigmoid"}
    assert summary["steps"] == 4 and summary["trained_tokens"] > 0  # 8 pairs / 2
    learned(summary)
    assert "rewards/chosen" in summary["log"][0]
    assert (run.dir / "student" / "config.json").is_file()

    pairs = pq.read_table(run.dir / "dataset" / "pairs.parquet").to_pylist()
    samples = {s["sample_id"]: s for s in run.files.read_samples().to_pylist()}
    kept = set(run.files.read_dataset()["sample_id"].to_pylist())
    for p in pairs:  # lineage: both sides are samples of the same prompt, the chosen one a kept row
        chosen, rejected = samples[p["chosen_sample_id"]], samples[p["rejected_sample_id"]]
        assert p["chosen_sample_id"] in kept and chosen["accepted"] and not rejected["accepted"]
        assert chosen["prompt_id"] == rejected["prompt_id"] == p["prompt_id"]
        assert p["rejected"][0]["content"] == rejected["completion"]
    from distill.training.pairs import samples_digest

    assert digest == samples_digest(list(reversed(pairs)))  # which samples, on which side: the lineage's record


def test_kto_trains_on_the_samples_labelled_good_and_bad(tmp_path, tiny_model, monkeypatch):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="kto", batch_size=4,
                         pairs={"rule": "all", "max_per_prompt": 1})
    summary = train_student(run)
    assert summary["method"] == "kto" and summary["preference"] == {"beta": 0.1}
    u = summary["unpaired"]
    assert (u["rule"], u["pairs"], u["rows"], u["desirable"], u["undesirable"]) == ("all", 8, 16, 8, 8)
    assert summary["steps"] == 4  # 16 rows / 4
    learned(summary)
    labels = pq.read_table(run.dir / "dataset" / "unpaired.parquet", columns=["label"])["label"].to_pylist()
    assert sum(labels) == 8 and 0 < sum(labels[:4]) < 4  # shuffled: a batch mixes good and bad rows
    assert (run.dir / "student" / "config.json").is_file()


def test_a_killed_dpo_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model, monkeypatch):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="dpo", save_steps=2, batch_size=2,
                         weights="lora", lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(KeyboardInterrupt):
        train_student(run, Bar(1, 3))
    assert not (run.dir / "student").exists()
    checkpoints = sorted(p.name for p in (run.dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    bar = Bar()
    summary = train_student(run, bar)
    assert summary["resumed"] is True and summary["resumed_from"] == "checkpoint-2"
    assert summary["steps"] == 4 and bar.starts == [(4, 2)]  # 8 pairs / 2, from step 2
    assert [e["step"] for e in summary["log"]] == [1, 2, 3, 4]  # the curve is whole
    files = {p.name for p in (run.dir / "student").iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files  # the adapter merged


def test_sft_then_dpo_runs_both_phases_and_a_rerun_skips_a_finished_sft_phase(tmp_path, tiny_model, monkeypatch):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="sft+dpo", batch_size=4, save_steps=1,
                         packing=False)
    bar = Bar(2, 2)
    with pytest.raises(KeyboardInterrupt):
        train_student(run, bar)  # killed in the DPO phase, after its first checkpoint
    assert bar.starts == [(2, 0), (2, 0)]  # the SFT phase (8 kept rows / 4), then the DPO phase (8 pairs / 4)
    sft = run.dir / "train" / "sft"
    assert (sft / "model" / "config.json").is_file() and list((sft / "checkpoints").glob("checkpoint-*"))
    first = json.loads((sft / "summary.json").read_text())
    assert first["steps"] == 2 and first["resumed_from"] is None and len(first["log"]) == 2
    assert not (run.dir / "student").exists()

    bar = Bar()
    summary = train_student(run, bar)
    assert bar.starts == [(2, 1)]  # only the DPO phase, from its checkpoint at step 1
    assert summary["method"] == "sft+dpo" and summary["resumed_from"] == "checkpoint-1"
    assert summary["sft_phase"]["skipped"] is True and summary["sft_phase"]["steps"] == 2
    assert summary["pairs"]["pairs"] == 8 and summary["steps"] == 2
    assert "rewards/chosen" in summary["log"][-1]  # the DPO phase's curve
    assert (run.dir / "student" / "config.json").is_file()


def test_sft_then_dpo_splits_a_step_budget_between_its_phases(tmp_path, tiny_model, monkeypatch):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="sft+dpo", batch_size=2, packing=False,
                         preference={"sft_steps": 3, "learning_rate": 1e-7}, trl_args={"max_steps": 1})
    bar = Bar()
    summary = train_student(run, bar)
    assert bar.starts == [(3, 0), (1, 0)]  # 3 SFT steps of the 4 an epoch has, then 1 DPO step of 4
    assert summary["sft_phase"]["steps"] == 3 and summary["steps"] == 1
    # Each phase at its own rate: the SFT phase at train.learning_rate, the DPO phase at the
    # preference one (both under the same cosine schedule, so compare peaks).
    sft_peak = max(e["learning_rate"] for e in summary["sft_phase"]["log"] if "learning_rate" in e)
    dpo_peak = max(e["learning_rate"] for e in summary["log"] if "learning_rate" in e)
    assert dpo_peak <= 1e-7 < sft_peak
    assert summary["preference"]["learning_rate"] == 1e-7


@pytest.mark.slow
def test_dpo_on_two_ray_train_workers_splits_the_pairs_between_them(tmp_path, tiny_model, monkeypatch, local_ray):
    run = preference_run(tmp_path, tiny_model, monkeypatch, method="dpo", batch_size=2, packing=False, workers=2,
                         epochs=3, learning_rate=1e-3)
    summary = train_student(run)
    pairs = summary["pairs"]["pairs"]
    assert (summary["workers"], summary["backend"]) == (2, "gloo") and pairs == 8
    shards = summary["data_shards"]
    assert [s["rank"] for s in shards] == [0, 1] and [s["rows"] for s in shards] == [12, 12]  # 3 epochs of 4
    assert shards[0]["digest"] != shards[1]["digest"]
    assert summary["steps"] == 6  # 8 pairs, 2 per worker per step, 2 workers: 2 steps an epoch
    assert all("rewards/chosen" in e for e in summary["log"])
    learned(summary)
    assert (run.dir / "student" / "model.safetensors").is_file()


# -- recipe checks and the dispatcher ---------------------------------------------------------


def recipe_problems(tmp_path, tiny_model, **train) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(student_recipe(tmp_path, tiny_model, **train))
    return str(e.value)


def test_trl_args_are_checked_against_the_methods_trl_config(tmp_path, tiny_model):
    text = recipe_problems(tmp_path, tiny_model, method="dpo",
                           trl_args={"label_smoothin": 0.1, "beta": 0.2, "packing": False})
    assert "train.trl_args.label_smoothin: 0.1: not a trl.DPOConfig field (did you mean 'label_smoothing'?)" in text
    assert "train.trl_args.beta: set it as train.preference.beta, not in trl_args" in text
    assert "train.trl_args.packing: set it as train.packing" in text
    load_recipe(student_recipe(tmp_path, tiny_model, method="dpo", trl_args={"label_smoothing": 0.1}))
    assert "not a trl.SFTConfig field" in recipe_problems(tmp_path, tiny_model, trl_args={"label_smoothing": 0.1})
    text = recipe_problems(tmp_path, tiny_model, method="kto", trl_args={"desirable_weigt": 2.0})
    assert "not a trl.KTOConfig field (did you mean 'desirable_weight'?)" in text


def test_a_dpo_loss_trl_does_not_know_and_kto_on_single_rows_are_recipe_errors(tmp_path, tiny_model):
    text = recipe_problems(tmp_path, tiny_model, method="dpo", preference={"loss_type": "sigmod"})
    assert "train.preference.loss_type: 'sigmod': not a DPO loss of TRL" in text and "did you mean 'sigmoid'?" in text
    assert "train.batch_size: kto estimates its KL term" in recipe_problems(tmp_path, tiny_model, method="kto",
                                                                             batch_size=1)


def test_each_method_has_its_fit_and_a_missing_one_is_named(monkeypatch):
    from distill.training import methods, preference, sft

    assert methods.fit_for("sft") is sft.fit and methods.fit_for("dpo") is preference.fit_dpo
    assert methods.fit_for("kto") is preference.fit_kto and methods.fit_for("sft+dpo") is preference.fit_sft_then_dpo
    monkeypatch.setitem(methods.FITS, "kd", ("distill.training.not_written_yet", "fit"))
    with pytest.raises(RuntimeError, match="train.method 'kd' is not available"):
        methods.fit_for("kd")


def test_no_pairs_is_an_error_that_says_why(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = student_recipe(tmp_path, tiny_model, method="dpo")
    run, _ = run_pipeline(load_recipe(path), until="dataset", backend=ArithmeticBackend())  # never wrong
    with pytest.raises(RuntimeError, match="no preference pairs .* 0 prompts have no accepted sample that the "
                                           "filters kept and 24 have no failed sample"):
        train_student(run)
