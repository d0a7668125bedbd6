"""On-policy distillation (train.method: on-policy) on tiny models: the student generates and the
teacher scores its tokens, the off-policy path, resume after a kill, and the recipe checks."""

from __future__ import annotations

import math

import pytest
import yaml

from distill.recipe import RecipeError, load_recipe
from distill.training import on_policy
from distill.training.sft import last_checkpoint
from support.models import build_tiny_model
from support.student import ArithmeticBackend, CrashAt, student_recipe

ON_POLICY = {"method": "on-policy", "gradient_checkpointing": False, "save_steps": 100}


@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    """A base with the teacher's tokenizer and other weights: a student that starts equal to its
    teacher has nothing to learn (the divergence and its gradient are zero)."""
    return build_tiny_model(tmp_path_factory.mktemp("other-student"), seed=1)


def on_policy_recipe(tmp_path, tiny_model, student, prompts: int = 8, **train):
    path = student_recipe(tmp_path, tiny_model, **{**ON_POLICY, **train})
    data = yaml.safe_load(path.read_text())
    data["prompts"]["train"][0]["count"] = prompts
    data["student"].update(base=str(student), base_licence="apache-2.0")
    path.write_text(yaml.safe_dump(data))
    return path


def sampled(tmp_path, tiny_model, student, monkeypatch, **train):
    """The recipe's run up to its dataset (the fake teacher's answers), ready to train."""
    from distill.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    run, _ = run_pipeline(load_recipe(on_policy_recipe(tmp_path, tiny_model, student, **train)), until="dataset",
                          backend=ArithmeticBackend())
    return run


def train(run, progress=None) -> dict:
    """As the train stage does it: resume from the last complete checkpoint, if any."""
    return on_policy.fit(run, run.recipe.student_base, last_checkpoint(run.files.checkpoints), progress)


def losses(facts) -> list[float]:
    return [e["loss"] for e in facts["log"]]


def test_the_student_generates_and_learns_from_the_teachers_scores(tmp_path, tiny_model, other_student, monkeypatch):
    run = sampled(tmp_path, tiny_model, other_student, monkeypatch, batch_size=4,
                  on_policy={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8, "temperature": 1.0})
    rows = run.files.read_dataset().num_rows
    facts = train(run)
    assert facts["steps"] == math.ceil(rows / 4) >= 2
    assert len(losses(facts)) == facts["steps"] and len(set(losses(facts))) > 1
    assert all(math.isfinite(x) and x > 0 for x in losses(facts))
    assert (run.dir / "student" / "config.json").is_file() and (run.dir / "student" / "tokenizer.json").is_file()
    record = facts["on_policy"]
    assert {k: record[k] for k in ("lmbda", "beta", "max_new_tokens", "temperature")} == \
        {"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8, "temperature": 1.0}
    assert record["teacher"] == {"id": "tiny-random", "model": str(tiny_model), "revision": "random-init-seed0"}
    assert record["generated_batches"] == facts["steps"]  # lmbda 1: every batch is the student's own
    assert 0 < record["generated_tokens"] <= rows * 8


@pytest.mark.slow
def test_on_policy_on_two_ray_train_workers(tmp_path, tiny_model, other_student, monkeypatch, local_ray):
    """Each worker generates from its own half of the prompts and scores them with its own copy of
    the teacher; rank 0 writes the student."""
    from distill.stages.train import train_student

    run = sampled(tmp_path, tiny_model, other_student, monkeypatch, batch_size=2, workers=2,
                  on_policy={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8, "temperature": 1.0})
    rows = run.files.read_dataset().num_rows
    summary = train_student(run)
    assert (summary["workers"], summary["method"]) == (2, "on-policy")
    shards = summary["data_shards"]
    assert [s["rank"] for s in shards] == [0, 1] and sum(s["rows"] for s in shards) == rows
    assert summary["steps"] == math.ceil(rows / 4)  # 2 rows per worker per step
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in summary["log"])
    assert summary["on_policy"]["generated_batches"] >= summary["steps"]
    assert (run.dir / "student" / "model.safetensors").is_file()


def test_lmbda_0_learns_from_the_accepted_completions_only(tmp_path, tiny_model, other_student, monkeypatch):
    # With a LoRA adapter, merged into the student as for SFT.
    run = sampled(tmp_path, tiny_model, other_student, monkeypatch, batch_size=4, weights="lora",
                  lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                  on_policy={"lmbda": 0.0, "max_new_tokens": 8})
    facts = train(run)
    assert facts["on_policy"]["generated_batches"] == facts["on_policy"]["generated_tokens"] == 0
    assert len(losses(facts)) >= 2 and len(set(losses(facts))) > 1
    files = {p.name for p in (run.dir / "student").iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files


def test_a_killed_on_policy_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model, other_student, monkeypatch):
    run = sampled(tmp_path, tiny_model, other_student, monkeypatch, batch_size=2, save_steps=2,
                  on_policy={"lmbda": 1.0, "max_new_tokens": 8})
    steps = math.ceil(run.files.read_dataset().num_rows / 2)
    with pytest.raises(KeyboardInterrupt):
        train(run, CrashAt(3))
    assert not (run.dir / "student").exists()
    assert last_checkpoint(run.files.checkpoints).name == "checkpoint-2"
    bar = CrashAt(-1)
    facts = train(run, bar)
    assert facts["steps"] == bar.seen == steps  # counted from the start; the bar resumed at step 2
    assert [e["step"] for e in facts["log"]] == list(range(1, steps + 1))  # the curve is whole
    assert facts["on_policy"]["generated_batches"] == steps - 2  # this process's batches, after the resume
    assert (run.dir / "student" / "config.json").is_file()


def test_a_teacher_served_over_http_is_refused(tmp_path, tiny_model):
    (tmp_path / "served.yaml").write_text(yaml.safe_dump({
        "id": "served", "model": "org/model", "revision": "main", "licence": "apache-2.0",
        "endpoint": {"base_url": "http://localhost:8000/v1"}}))
    path = student_recipe(tmp_path, tiny_model, method="on-policy")
    data = yaml.safe_load(path.read_text())
    data["teacher"] = "served.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "train.method: on-policy: teacher 'served' is served over HTTP (its entry has an endpoint)" in str(e.value)

    data["train"]["method"] = "sft"  # the same teacher is fine for learning from its samples
    path.write_text(yaml.safe_dump(data))
    load_recipe(path)


def test_a_student_with_another_vocabulary_is_refused(tmp_path, tiny_model):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens(["<extra-a>", "<extra-b>"])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)
    other = tmp_path / "other-vocabulary"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(other)
    tok.save_pretrained(other)

    with pytest.raises(RecipeError) as e:
        load_recipe(on_policy_recipe(tmp_path, tiny_model, other))
    text = str(e.value)
    assert ("train.method: on-policy: student base 'other-vocabulary' and teacher 'tiny-random' do not share "
            "a vocabulary") in text
    assert f"the student's output layer has {len(tok)} token ids and the teacher's {len(tok) - 2}" in text


def test_train_settings_map_to_gkdconfig_and_trl_args_are_checked_against_it(tmp_path, tiny_model, monkeypatch):
    from distill.pipeline import open_run

    monkeypatch.chdir(tmp_path)
    path = student_recipe(tmp_path, tiny_model, method="on-policy", on_policy={"lmbda": 0.25, "beta": 0.1},
                          trl_args={"seq_kd": True, "weight_decay": 0.1})
    run = open_run(load_recipe(path))
    from trl.experimental.gkd import GKDConfig  # loaded (and its notice silenced) by the recipe check
    kwargs = on_policy.gkd_config_kwargs(run, tmp_path / "checkpoints", [])
    assert {k: kwargs[k] for k in ("lmbda", "beta", "max_new_tokens", "temperature", "packing", "seq_kd",
                                   "weight_decay", "max_length")} == \
        {"lmbda": 0.25, "beta": 0.1, "max_new_tokens": 128, "temperature": 0.9, "packing": False, "seq_kd": True,
         "weight_decay": 0.1, "max_length": 128}
    config = GKDConfig(**kwargs)
    assert (config.lmbda, config.beta, config.seq_kd) == (0.25, 0.1, True)

    data = yaml.safe_load(path.read_text())
    data["train"]["trl_args"] = {"lmbda": 0.3, "seq_kdd": True}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    text = str(e.value)
    assert "train.trl_args.lmbda: set it as train.on_policy.lmbda, not in trl_args" in text
    assert "train.trl_args.seq_kdd: True: not a trl.GKDConfig field (did you mean 'seq_kd'?)" in text
