"""Preference training on the run's own samples: DPO (TRL's DPOTrainer) on dataset/pairs.parquet,
KTO (TRL's KTOTrainer) on dataset/unpaired.parquet, and sft+dpo, SFT on the kept samples and
then DPO from that model. distill/training/pairs.py builds the data; the train stage writes it
before any of these run.

Each fit has the signature and the facts of `distill.training.sft.fit`, and shares its parts:
the student with its chat template (tools passed through), the schedule, batch, length, seed and
checkpoint settings (distill/training/config.py), the progress callback, resuming from the last
complete checkpoint, the per-rank tally and saving the student in one rename. The reference
model is the starting point: with `weights: lora`, the same model with its adapter switched
off; with full weights, a frozen copy TRL loads from the same directory.

sft+dpo trains its SFT phase into train/sft/model/ with its own checkpoints (train/sft/checkpoints/),
then DPO from that model, which is also its reference, into student/ with the run's checkpoints.
A rerun after the SFT phase finished starts at the DPO phase, resuming from its checkpoints.
"""

from __future__ import annotations

import gc
from pathlib import Path

from distill.models import StudentBase
from distill.training.config import dpo_config_kwargs, kto_config_kwargs, lora_config
from distill.training.pairs import read_pairs, training_columns
from distill.training.sft import (RowTokens, _Progress, fit_sft, last_checkpoint, load_student, quiet_libraries,
                                  train_and_save)

# DPO feeds each row's prompt twice, once before each answer.
DPO_ROWS = RowTokens(
    ("prompt_ids", "chosen_ids", "rejected_ids"),
    lambda e: [*e["prompt_ids"], *e["chosen_ids"], *e["prompt_ids"], *e["rejected_ids"]],
    lambda d: sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"])),
)
KTO_ROWS = RowTokens(
    ("prompt_ids", "completion_ids"),
    lambda e: [*e["prompt_ids"], *e["completion_ids"]],
    lambda d: sum(len(p) + len(c) for p, c in zip(d["prompt_ids"], d["completion_ids"])),
)


def fit_dpo(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
            on_log=None, callbacks: list = ()) -> dict:
    """DPO on dataset/pairs.parquet from the base model, into student/."""
    return fit_preference(run, base, base.path, "dpo", resume_from, progress, report_to, on_log, callbacks)


def fit_kto(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
            on_log=None, callbacks: list = ()) -> dict:
    """KTO on dataset/unpaired.parquet from the base model, into student/."""
    return fit_preference(run, base, base.path, "kto", resume_from, progress, report_to, on_log, callbacks)


def fit_sft_then_dpo(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
                     on_log=None, callbacks: list = ()) -> dict:
    """SFT into train/sft/model/ (skipped when a rerun finds it there), then DPO from it into
    student/; `resume_from` is the DPO phase's checkpoint. The facts are the DPO phase's, with
    the SFT phase's under "sft_phase"."""
    phase = sft_phase(run, base, progress, report_to, on_log, callbacks)
    facts = fit_preference(run, base, str(run.files.sft_phase_model), "dpo", resume_from, progress, report_to,
                           on_log, callbacks)
    return {**facts, "sft_phase": phase}


def sft_phase(run, base: StudentBase, progress=None, report_to: list[str] = (), on_log=None,
              callbacks: list = ()) -> dict:
    """The SFT phase of sft+dpo: what it did (train/sft/summary.json), trained now or before.
    Of `train.trl_args` (DPOConfig's) it takes those SFTConfig also has; `preference.sft_steps`
    sets its steps."""
    import dataclasses

    from trl import SFTConfig

    files = run.files
    if (files.sft_phase_model / "config.json").is_file():  # written in one rename: complete
        return {**(files.read_json(files.sft_phase_summary) or {}), "skipped": True}
    resume = last_checkpoint(files.sft_phase_checkpoints)
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    trl_args = {k: v for k, v in run.recipe.train.trl_args.items() if k in fields}
    if run.recipe.train.preference.sft_steps:
        trl_args["max_steps"] = run.recipe.train.preference.sft_steps
    facts = fit_sft(run, base, base.path, resume, files.sft_phase_checkpoints, files.sft_phase_model, progress,
                    report_to, (lambda e: on_log({**e, "phase": "sft"})) if on_log else None, callbacks, trl_args)
    gc.collect()
    record = {"steps": facts["steps"], "train_loss": facts["train_loss"], "seconds": facts["seconds"],
              "tokens_per_epoch": facts["tokens_per_epoch"], "dataset_digest": facts["dataset_digest"],
              "resumed_from": resume.name if resume else None, "log": facts["log"]}
    if _rank() == 0:
        files.write_json(files.sft_phase_summary, record)
    return {**record, "skipped": False}


def fit_preference(run, base: StudentBase, start: str, kind: str, resume_from: Path | None, progress=None,
                   report_to: list[str] = (), on_log=None, callbacks: list = ()) -> dict:
    """DPO ("dpo") or KTO ("kto") from the weights at `start` (also the reference), into student/."""
    quiet_libraries()
    import datasets
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    recipe, files = run.recipe, run.files
    unpaired = kind == "kto"
    table = read_pairs(files.unpaired if unpaired else files.pairs)
    columns = training_columns(table, unpaired)
    # TRL passes a row's `tools` (JSON text) to the chat template; rows without tools get none.
    data = datasets.Dataset(table.select(columns))
    model, tokenizer = load_student(start, recipe, "tools" in columns)
    if unpaired:
        trainer_class, args = KTOTrainer, KTOConfig(**kto_config_kwargs(run, files.checkpoints, list(report_to)))
    else:
        trainer_class, args = DPOTrainer, DPOConfig(**dpo_config_kwargs(run, files.checkpoints, list(report_to)))
    trainer = trainer_class(
        model=model,
        ref_model=None,  # LoRA: the adapter switched off; full weights: TRL loads a frozen copy of `start`
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.train) if recipe.train.weights == "lora" else None,
        callbacks=[_Progress(progress, on_log), *callbacks],
    )
    del model
    facts = train_and_save(trainer, tokenizer, run, base, resume_from, files.student_dir,
                           KTO_ROWS if unpaired else DPO_ROWS)
    del trainer  # the evaluate stage's engines want this memory back
    gc.collect()
    return facts


def _rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0
