"""The train stage on a tiny model: LoRA, resume after a crash, DeepSpeed configs, recipe checks."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.pipeline import open_run, run_pipeline
from distill.recipe import RecipeError, Train, load_recipe
from distill.stages.train import train_student
from distill.training.config import deepspeed_config
from support.student import ArithmeticBackend, CrashAt, sampled_run, student_recipe


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model, monkeypatch):
    run = sampled_run(tmp_path, tiny_model, monkeypatch, save_steps=2, batch_size=2, packing=False)
    with pytest.raises(KeyboardInterrupt):
        train_student(run, CrashAt(5))
    assert not (run.dir / "student").exists()  # nothing half-written that a rerun would trust
    checkpoints = sorted(p.name for p in (run.dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    bar = CrashAt(-1)
    summary = train_student(run, bar)
    assert summary["resumed"] is True
    assert summary["steps"] == 12  # 24 rows / 2 per step, counted from the start
    assert bar.seen == 12  # the bar starts at the checkpoint's step 4, then 8 more
    assert [e["step"] for e in summary["log"]] == list(range(1, 13))  # the curve is whole


def test_lora_trains_an_adapter_and_writes_a_merged_student(tmp_path, tiny_model, monkeypatch):
    run = sampled_run(tmp_path, tiny_model, monkeypatch, method="lora", lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    summary = train_student(run)
    assert summary["method"] == "sft" and summary["weights"] == "lora" and summary["steps"] > 0
    files = {p.name for p in (run.dir / "student").iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files  # one plain model directory
    from safetensors import safe_open

    with safe_open(run.dir / "student" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run.dir / "student")  # loads as a plain model


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_are_accepted_by_deepspeed(stage, tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = deepspeed_config(Train(deepspeed_stage=stage, batch_size=4, gradient_accumulation_steps=2))
    hf = HfTrainerDeepSpeedConfig(json.loads(json.dumps(config)))
    hf.trainer_config_process(TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                                gradient_accumulation_steps=2, use_cpu=True))
    ds = DeepSpeedConfig(hf.config)  # DeepSpeed's own validation, as a GPU run would do it
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (4, 2, 8)
    if stage == 3:
        assert ds.zero_config.gather_16bit_weights_on_model_save


def test_deepspeed_stage_writes_its_config_into_the_run(tmp_path, tiny_model, monkeypatch):
    from distill.training.config import sft_config_kwargs

    monkeypatch.chdir(tmp_path)
    run = open_run(load_recipe(student_recipe(tmp_path, tiny_model, deepspeed_stage=3)))
    kwargs = sft_config_kwargs(run, run.dir / "train" / "checkpoints", [])
    written = json.loads((run.dir / "train" / "deepspeed.json").read_text())
    assert kwargs["deepspeed"] == str(run.dir / "train" / "deepspeed.json")
    assert written["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_is_set_explicitly_from_what_the_cpu_can_do(tmp_path, tiny_model, monkeypatch, native_bf16):
    # TRL's SFTConfig turns bf16 on when it is not passed: on a CPU without bf16 arithmetic,
    # autocast then emulates it (seen: 150 s a demo step instead of 11).
    import distill.training.config as train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: native_bf16)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    run = open_run(load_recipe(student_recipe(tmp_path, tiny_model)))
    assert train.sft_config_kwargs(run, tmp_path, [])["bf16"] is native_bf16


def test_trl_args_pass_through_and_are_checked(tmp_path, tiny_model, monkeypatch):
    from distill.training.config import sft_config_kwargs

    monkeypatch.chdir(tmp_path)
    path = student_recipe(tmp_path, tiny_model, trl_args={"weight_decay": 0.1, "max_grad_norm": 0.5})
    run = open_run(load_recipe(path))
    kwargs = sft_config_kwargs(run, tmp_path, [])
    assert (kwargs["weight_decay"], kwargs["max_grad_norm"]) == (0.1, 0.5)
    assert kwargs["gradient_checkpointing"] is True  # TRL's default, unless the recipe says otherwise

    data = yaml.safe_load(path.read_text())
    data["train"]["trl_args"] = {"weight_decy": 0.1, "num_train_epochs": 3, "output_dir": "/tmp/x",
                                 "gradient_checkpointing": False}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    text = str(e.value)
    assert "train.trl_args.weight_decy: 0.1: not a trl.SFTConfig field (did you mean 'weight_decay'?)" in text
    assert "train.trl_args.num_train_epochs: set it as train.epochs, not in trl_args" in text
    assert "train.trl_args.output_dir: distill sets this one itself" in text
    assert "train.trl_args.gradient_checkpointing: set it as train.gradient_checkpointing" in text


def test_a_step_budget_counts_the_tokens_its_steps_fed(tmp_path, tiny_model, monkeypatch):
    run = sampled_run(tmp_path, tiny_model, monkeypatch, batch_size=2, packing=False, trl_args={"max_steps": 3})
    summary = train_student(run)
    assert summary["steps"] == 3  # of the 12 an epoch of 24 rows has
    fed = summary["data_shards"][0]
    assert fed["rows"] == 6 and summary["trained_tokens"] == fed["tokens"]
    # Six rows' tokens, not the epoch's 24 rows' (what the summary said before it counted).
    assert summary["tokens_per_second"] == pytest.approx(fed["tokens"] / summary["seconds"])


def test_a_student_base_that_does_not_exist_is_a_recipe_error(tmp_path, tiny_model):
    path = student_recipe(tmp_path, tiny_model)
    data = yaml.safe_load(path.read_text())
    data["student"]["base"] = "smollm2-135m-instrct"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "student.base: 'smollm2-135m-instrct' is neither a model directory" in str(e.value)
    assert "did you mean 'smollm2-135m-instruct'?" in str(e.value)


def test_an_empty_dataset_says_what_to_do(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(student_recipe(tmp_path, tiny_model))
    run, _ = run_pipeline(recipe, until="dataset", backend=ArithmeticBackend(wrong=True))
    with pytest.raises(RuntimeError, match="no kept samples to train on; manifest.json says what was dropped"):
        train_student(run)


def _fused_loss_and_grads(model, batch):
    out = model(**batch, fused_lm_head=True)
    loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.detach(), out.entropy.detach(), out.is_top1, grads


def head_rows(monkeypatch) -> list[int]:
    """How many positions each call of TRL's fused LM head projects (skips without that head)."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(trl_utils, "add_fused_lm_head"):
        pytest.skip("this TRL has no fused LM head")
    projected = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        projected.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    return projected


def test_the_fused_head_projects_only_labelled_positions_on_a_cpu_and_computes_the_same(tiny_model, monkeypatch):
    projected = head_rows(monkeypatch)
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from distill.training.cpu import completion_rows_only_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 40))
    labels = input_ids.clone()
    labels[0, :25] = -100  # a prompt of 25 tokens, then the completion
    labels[1, :31] = -100
    batch = {"input_ids": input_ids, "labels": labels}

    every = _fused_loss_and_grads(model, batch)
    with completion_rows_only_head():
        compact = _fused_loss_and_grads(model, batch)
    after = _fused_loss_and_grads(model, batch)

    # 2 rows x 39 next-token positions; 15 + 9 of them have a label
    assert projected == [78, 24, 78]
    torch.testing.assert_close(compact[0], every[0])
    torch.testing.assert_close(compact[1], every[1])
    assert torch.equal(compact[2], every[2])
    for name, grad in every[3].items():
        torch.testing.assert_close(compact[3][name], grad, msg=name)
    torch.testing.assert_close(after[0], every[0])  # TRL's own choice is back outside the block

    # A row whose labels are all cut away (a prompt longer than max_length) still trains: zero loss, zero grads.
    with completion_rows_only_head():
        loss, _, _, grads = _fused_loss_and_grads(model, {"input_ids": input_ids, "labels": torch.full_like(labels, -100)})
    assert projected[-1] == 0 and loss.item() == 0.0
    assert all(not g.any() for g in grads.values())


def test_the_train_stage_projects_only_the_completion_tokens(tmp_path, tiny_model, monkeypatch):
    projected = head_rows(monkeypatch)
    run = sampled_run(tmp_path, tiny_model, monkeypatch, packing=False, batch_size=2)
    summary = train_student(run)
    assert len(projected) == summary["steps"] > 0
    # TRL alone projects every position but each row's last on a CPU: at least the tokens fed
    # minus one per row. The prompts' positions are more than half of these rows.
    every_position = summary["trained_tokens"] - summary["rows"]
    assert 0 < sum(projected) < every_position / 2


def sdpa_lengths(monkeypatch) -> list[int]:
    """The query length of each call of PyTorch's SDPA."""
    import torch

    lengths = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        lengths.append(query.shape[-2])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return lengths


def _loss_and_grads(model, batch):
    out = model(**batch, use_cache=False)  # as TRL calls it: with a cache, transformers would not see the packing
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return out.loss.detach(), out.logits.detach(), grads


def test_a_padding_free_batch_attends_sequence_by_sequence_and_computes_the_same(tiny_model, monkeypatch):
    lengths = sdpa_lengths(monkeypatch)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from distill.training.cpu import packed_sequences_attend_alone

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    sizes = (23, 40, 9)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collate([{"input_ids": torch.randint(1, model.config.vocab_size, (n,)).tolist()} for n in sizes])
    assert batch["input_ids"].shape == (1, sum(sizes)) and batch["cu_seq_lens_q"].tolist() == [0, 23, 63, 72]

    masked = _loss_and_grads(model, batch)  # transformers' SDPA: one call per layer over the whole row, masked
    assert set(lengths) == {sum(sizes)}
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    lengths.clear()
    with packed_sequences_attend_alone():
        alone = _loss_and_grads(model, batch)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa  # the library's function is back outside the block
    # 2 layers, one causal call per sequence each (the backward reuses the forward's saved tensors)
    assert lengths == [*sizes, *sizes]
    torch.testing.assert_close(alone[0], masked[0])
    torch.testing.assert_close(alone[1], masked[1])
    for name, grad in masked[2].items():
        torch.testing.assert_close(alone[2][name], grad, msg=name)

    # Anything else (here: a padded batch of two rows with its mask) goes to transformers' SDPA as it was.
    padded = {"input_ids": torch.randint(1, model.config.vocab_size, (2, 12)),
              "attention_mask": torch.tensor([[1] * 12, [1] * 7 + [0] * 5])}
    padded["labels"] = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
    before = _loss_and_grads(model, padded)
    lengths.clear()
    with packed_sequences_attend_alone():
        inside = _loss_and_grads(model, padded)
    assert lengths == [12, 12]
    assert torch.equal(inside[1], before[1])

    # And so does a packed row whose attention is more than causal: a sliding window, sinks.
    q = k = v = torch.randn(1, 2, sum(sizes), 32)
    windowed = torch.nn.Module()
    windowed.sliding_window = 16
    with packed_sequences_attend_alone():
        for module, extra in ((windowed, {}), (torch.nn.Module(), {"sliding_window": 16}),
                              (torch.nn.Module(), {"s_aux": torch.zeros(2)})):
            lengths.clear()
            ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, None, cu_seq_lens_q=batch["cu_seq_lens_q"], **extra)
            assert lengths == [sum(sizes)], extra


def test_the_train_stage_packs_rows_and_attends_per_sample(tmp_path, tiny_model, monkeypatch):
    lengths = sdpa_lengths(monkeypatch)
    run = sampled_run(tmp_path, tiny_model, monkeypatch, packing=True, batch_size=4, max_length=256)
    summary = train_student(run)
    assert summary["steps"] > 0 and lengths
    # Packed, a step's row holds several samples end to end (more tokens than any one sample);
    # attention saw one sample at a time: no call was as long as two samples of average length.
    rows = summary["trained_tokens"] / summary["rows"]
    assert summary["trained_tokens"] / summary["steps"] > 2 * rows
    assert max(lengths) < 2 * rows
