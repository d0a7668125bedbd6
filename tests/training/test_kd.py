"""train.method: kd on the tiny model: the loss on hand-made tensors, a training run from a fake
teacher's stored top-k log-probabilities (loss, student, resume), and the recipe checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from distill.recipe import RecipeError, load_recipe
from distill.training.kd import divergence, kd_loss, student_buckets, teacher_buckets
from support.student import ArithmeticBackend, CrashAt, student_recipe

K = 4


# -- the loss on hand-made tensors --------------------------------------------------------------

def _teacher_from(logits, top_ids):
    """The teacher's stored top-k log-probabilities when its full distribution is softmax(logits)."""
    return torch.log_softmax(logits, -1).gather(-1, top_ids)


def _case(seed=0, n=6, vocab=50, k=K):
    g = torch.Generator().manual_seed(seed)
    teacher_logits = torch.randn(n, vocab, generator=g) * 3
    top_ids = teacher_logits.topk(k, dim=-1).indices
    targets = top_ids[:, 0]
    return teacher_logits, top_ids, _teacher_from(teacher_logits, top_ids), targets


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_the_divergence_is_zero_when_the_student_is_the_teacher_over_topk_and_tail(kind):
    teacher_logits, top_ids, top_lp, targets = _case()
    # a student with the teacher's top-k probabilities and tail mass, however the tail is spread
    student = teacher_logits.clone()
    others = torch.ones_like(student, dtype=torch.bool).scatter(-1, top_ids, False)
    tail_mass = torch.logsumexp(student.masked_fill(~others, float("-inf")), -1, keepdim=True)
    reshuffled = torch.where(others, torch.zeros_like(student), student)  # a flat tail ...
    flat_mass = torch.logsumexp(reshuffled.masked_fill(~others, float("-inf")), -1, keepdim=True)
    student = torch.where(others, reshuffled + tail_mass - flat_mass, student)  # ... of the same mass
    _, _, d = kd_loss(student, targets, top_ids, top_lp, kind, ce_weight=0.0)
    assert d.abs() < 1e-5
    _, _, d_other = kd_loss(torch.randn(student.shape, generator=torch.Generator().manual_seed(5)), targets, top_ids,
                            top_lp, kind, ce_weight=0.0)
    assert d_other > 1e-2


def test_forward_and_reverse_kl_swap_the_distributions_and_jsd_is_symmetric_at_one_half():
    teacher_logits, top_ids, top_lp, _ = _case()
    student = student_buckets(torch.randn(teacher_logits.shape, generator=torch.Generator().manual_seed(1)), top_ids)
    teacher = teacher_buckets(top_lp)
    torch.testing.assert_close(divergence(teacher, student, "reverse_kl"), divergence(student, teacher, "forward_kl"))
    assert not torch.allclose(divergence(teacher, student, "forward_kl"), divergence(teacher, student, "reverse_kl"))
    torch.testing.assert_close(divergence(teacher, student, "jsd", 0.5), divergence(student, teacher, "jsd", 0.5))
    # the generalised JSD mirrors with its weight: JSD_b(P, Q) = JSD_(1-b)(Q, P)
    torch.testing.assert_close(divergence(teacher, student, "jsd", 0.2), divergence(student, teacher, "jsd", 0.8))
    jsd = divergence(teacher, student, "jsd", 0.5)
    assert (jsd > 0).all() and (jsd <= math.log(2) + 1e-6).all()


def test_buckets_are_distributions_and_the_tail_is_exact():
    teacher_logits, top_ids, top_lp, _ = _case()
    s = student_buckets(teacher_logits, top_ids)
    torch.testing.assert_close(s.exp().sum(-1), torch.ones(s.shape[0]))
    torch.testing.assert_close(s, teacher_buckets(top_lp))  # the student is the teacher: the same buckets
    softened = teacher_buckets(top_lp, temperature=2.0)
    torch.testing.assert_close(softened.exp().sum(-1), torch.ones(s.shape[0]))
    assert (softened.exp().max(-1).values < teacher_buckets(top_lp).exp().max(-1).values).all()
    # a top-k holding all the mass (rounded above 1): the tail is the floor, not negative
    full = teacher_buckets(torch.log(torch.tensor([[0.7, 0.3005]])))
    assert torch.isfinite(full).all() and full.exp()[0, -1] < 1e-5


def test_ce_weight_one_is_the_cross_entropy_of_the_sampled_tokens():
    teacher_logits, top_ids, top_lp, targets = _case()
    student = torch.randn(teacher_logits.shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss, ce, _ = kd_loss(student, targets, top_ids, top_lp, "forward_kl", ce_weight=1.0, temperature=3.0)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(student, targets))
    torch.testing.assert_close(ce, loss.detach())
    loss.backward()
    assert student.grad.abs().sum() > 0


# -- a training run from a fake teacher's log-probabilities -----------------------------------

class LogprobBackend(ArithmeticBackend):
    """The arithmetic backend whose answers come with token ids and a top-k per token: the
    sampled token first, then K - 1 other ids drawn from a fixed distribution."""

    name = "fake-logprobs"

    def __init__(self, model_dir, refuse=False):
        from transformers import AutoTokenizer

        super().__init__()
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.refuse = refuse  # a run that must not sample
        self.rng = np.random.default_rng(0)
        self.common = self.rng.choice(2000, size=64, replace=False) + 100  # the teacher's favourite alternatives

    def generate(self, requests):
        assert not self.refuse, "this run was to reuse its sibling's samples"
        for batch in super().generate(requests):
            for row in batch:
                k = next(r for r in requests if r["work_id"] == row["work_id"])["sampling_params"]["logprobs"]
                ids = self.tok(row["text"], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
                top_ids, top_lp = [], []
                for token in ids:
                    others = [int(t) for t in self.rng.choice(self.common, size=k, replace=False) if t != token][:k - 1]
                    top_ids.append([token] + others)
                    top_lp.append(np.log([0.6] + [0.3 / (k - 1)] * (k - 1)).tolist())
                row["logprobs"] = {"token_ids": ids, "token_logprobs": [top[0] for top in top_lp],
                                   "top_ids": top_ids, "top_logprobs": top_lp}
                row["completion_tokens"] = len(ids)
            yield batch


def kd_recipe(tmp_path, tiny_model, sampling=None, **train):
    path = student_recipe(tmp_path, tiny_model, method="kd", **train)
    data = yaml.safe_load(path.read_text())
    data["sampling"].update({"logprobs": K, **(sampling or {})})
    path.write_text(yaml.safe_dump(data))
    return path


def kd_run(tmp_path, tiny_model, monkeypatch, **train):
    from distill.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(kd_recipe(tmp_path, tiny_model, **train))
    run, _ = run_pipeline(recipe, until="dataset", backend=LogprobBackend(tiny_model))
    return run


@pytest.fixture
def facts_of_kd(monkeypatch):
    """The facts each kd fit returns (the train stage calls it through the method dispatcher)."""
    from distill.training import kd

    seen = []
    fit = kd.fit

    def recording(*args, **kwargs):
        seen.append(fit(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(kd, "fit", recording)
    return seen


def test_the_sample_stage_keeps_the_teachers_logprobs_beside_the_samples(tmp_path, tiny_model, monkeypatch):
    from distill.training.logits import decode

    run = kd_run(tmp_path, tiny_model, monkeypatch)
    files = run.files
    parts = files.sample_parts()
    assert parts and [p.name for p in files.logprob_parts()] == [p.name for p in parts]
    samples = files.read_samples(["sample_id", "sampling_params", "completion_tokens"]).to_pylist()
    assert all(json.loads(s["sampling_params"])["logprobs"] == K for s in samples)
    stored, read = files.read_logprobs()
    assert set(stored) == {s["sample_id"] for s in samples} and read == files.logprob_parts()
    for s in samples:
        t = decode(stored[s["sample_id"]])
        assert t.k == K and t.n == s["completion_tokens"] and (t.top_ids[:, 0] == t.token_ids).all()
        np.testing.assert_allclose(t.top_logprobs[:, 0], math.log(0.6), atol=1e-3)


def test_a_sibling_run_reuses_the_samples_with_their_logprobs(tmp_path, tiny_model, monkeypatch):
    from distill.pipeline import run_pipeline

    first = kd_run(tmp_path, tiny_model, monkeypatch)
    path = kd_recipe(tmp_path, tiny_model, learning_rate=5e-4)  # training differs: the same samples key
    second, _ = run_pipeline(load_recipe(path), until="dataset", backend=LogprobBackend(tiny_model, refuse=True))
    assert second.dir != first.dir
    assert [p.name for p in second.files.logprob_parts()] == [p.name for p in first.files.logprob_parts()]
    assert second.files.read_logprobs()[0].keys() == first.files.read_logprobs()[0].keys()


def test_kd_trains_the_student_and_resumes_after_a_kill(tmp_path, tiny_model, monkeypatch, facts_of_kd):
    from distill.stages.train import train_student

    run = kd_run(tmp_path, tiny_model, monkeypatch, save_steps=2, batch_size=4, epochs=3, learning_rate=2e-3,
                 gradient_checkpointing=False)
    with pytest.raises(KeyboardInterrupt):
        train_student(run, CrashAt(5))
    assert not (run.dir / "student").exists()
    checkpoints = sorted(p.name for p in (run.dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]

    bar = CrashAt(-1)
    summary = train_student(run, bar)
    rows = run.files.read_dataset().num_rows
    steps = 3 * math.ceil(rows / 4)
    assert summary["method"] == "kd" and summary["resumed"] is True and summary["steps"] == steps
    assert bar.seen == steps  # from the checkpoint's step 4 on
    assert (run.dir / "student" / "model.safetensors").is_file()
    log = summary["log"]
    assert [e["step"] for e in log] == list(range(1, steps + 1))
    assert all("kd_ce" in e and "kd_divergence" in e for e in log[4:])  # the resumed part logs both terms
    first, last = np.mean([e["loss"] for e in log[:3]]), np.mean([e["loss"] for e in log[-3:]])
    assert last < first - 0.5, (first, last)

    kd = facts_of_kd[-1]["kd"]
    assert (kd["k"], kd["divergence"], kd["ce_weight"], kd["temperature"]) == (K, "forward_kl", 0.5, 1.0)
    assert kd["rows"] == rows and kd["skipped"] == {} and kd["positions"] > rows
    assert kd["logprobs"]["files"] == run.files.relative(*run.files.logprob_parts())
    assert len(kd["logprobs"]["sha256"]) == 64
    if "kd" in summary:  # the train stage records the method's own facts
        assert summary["kd"] == kd


@pytest.mark.slow
def test_kd_on_two_ray_train_workers(tmp_path, tiny_model, monkeypatch, local_ray):
    from distill.stages.train import train_student

    run = kd_run(tmp_path, tiny_model, monkeypatch, workers=2, batch_size=2, gradient_checkpointing=False)
    summary = train_student(run)
    rows = run.files.read_dataset().num_rows
    assert (summary["workers"], summary["method"]) == (2, "kd")
    shards = summary["data_shards"]
    assert [s["rank"] for s in shards] == [0, 1] and sum(s["rows"] for s in shards) == rows
    assert summary["steps"] == math.ceil(rows / 4)  # 2 rows per worker per step
    assert all("kd_ce" in e and "kd_divergence" in e for e in summary["log"])
    assert all(math.isfinite(e["loss"]) for e in summary["log"])
    assert (run.dir / "student" / "model.safetensors").is_file()


def test_a_training_row_is_the_prompt_then_the_teachers_own_token_ids(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from distill.training.kd import KDCollator, kd_rows
    from distill.training.logits import decode

    run = kd_run(tmp_path, tiny_model, monkeypatch)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    whole, _ = kd_rows(run, tok, len(tok), max_length=512)
    cut = whole[0]["prompt_length"] + 5
    rows, record = kd_rows(run, tok, len(tok), max_length=cut)
    stored, _ = run.files.read_logprobs()
    first = run.files.read_dataset().to_pylist()[0]
    teacher = decode(stored[first["sample_id"]])
    assert whole[0]["input_ids"][whole[0]["prompt_length"]:] == teacher.token_ids.tolist()
    row = rows[0]
    start = row["prompt_length"]
    assert row["input_ids"][start:] == teacher.token_ids[:5].tolist()  # cut at max_length
    assert tok.decode(row["input_ids"][:start]).endswith("<|im_start|>assistant\n")
    batch = KDCollator(tok.pad_token_id)(rows[:2])
    n = [len(r["input_ids"]) - r["prompt_length"] for r in rows[:2]]
    assert batch["kd_top_ids"].shape == (sum(n), K) and int((batch["kd_targets"] != -100).sum()) == sum(n)
    # the position before the first completion token predicts it, with the teacher's first distribution
    assert int(batch["kd_targets"][0, start - 1]) == int(teacher.token_ids[0])
    assert batch["kd_top_ids"][0].tolist() == teacher.top_ids[0].tolist()
    assert record["rows"] == len(rows)


def test_kd_refuses_ids_beyond_the_students_vocabulary(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from distill.training.kd import kd_rows

    run = kd_run(tmp_path, tiny_model, monkeypatch)
    with pytest.raises(RuntimeError, match="beyond the student's vocabulary"):
        kd_rows(run, AutoTokenizer.from_pretrained(tiny_model), 1000, max_length=128)


# -- recipe checks ------------------------------------------------------------------------------

def test_kd_without_logprobs_is_a_recipe_problem(tmp_path, tiny_model):
    path = kd_recipe(tmp_path, tiny_model, sampling={"logprobs": None})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "sampling.logprobs: train.method kd learns from the teacher's top-k" in str(e.value)


def test_kd_with_a_student_of_another_vocabulary_is_a_recipe_problem(tmp_path, tiny_model):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    other = tmp_path / "other-base"
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(200)]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(other)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    path = kd_recipe(tmp_path, tiny_model)
    data = yaml.safe_load(path.read_text())
    data["student"].update(base=str(other), base_licence="apache-2.0")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    text = str(e.value)
    assert "student.base: the teacher's and the student's vocabularies differ" in text
    assert "kd needs the same tokenizer" in text and "203 tokens" in text

    data["student"]["base"] = str(tiny_model)  # the teacher's own weights as a directory: the same vocabulary
    path.write_text(yaml.safe_dump(data))
    assert load_recipe(path).train.method == "kd"
