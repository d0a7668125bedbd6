"""Supervised fine-tuning of the student with TRL's SFTTrainer: one process, or one rank of a
Ray Train worker group (distill/training/ray_train.py), the same code either way.

The dataset is in TRL's prompt-completion chat format, so the loss covers the completion only
and the student's own chat template renders the turns. HF's Trainer finds a process group when
Ray Train set one up, wraps the model in DDP (or DeepSpeed ZeRO-2/3) and deals each rank its own
rows. Rank 0 writes `student/` in one rename, so a `student/` that exists is complete.

The other methods' fits (distill/training/preference.py and its neighbours) build their own
TRL trainer and share the rest from here: loading the student with its chat template, training
with resume, the per-rank tally, saving the student, and the facts the summary records.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from distill import storage
from distill.models import StudentBase
from distill.schema import STUDENT_META_FILE
from distill.training.config import _has_cuda, lora_config, sft_config_kwargs
from distill.training.cpu import completion_rows_only_head, packed_sequences_attend_alone


class _Progress:
    """Feeds the trainer's steps to a progress bar and its logs to `on_log`."""

    def __new__(cls, progress, on_log=None):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                if progress:
                    progress.start(total=state.max_steps, completed=state.global_step)

            def on_step_end(self, args, state, control, **kw):
                if progress:
                    progress.advance(1)

            def on_log(self, args, state, control, logs=None, **kw):
                if on_log:
                    on_log({"step": state.global_step, "epoch": state.epoch, **(logs or {})})

        return Callback()


class _ShardTally:
    """What one rank's data loader handed to the model: rows, real tokens, and an order-free
    digest (the sum of the rows' hashes mod 2**64). The ranks' digests add up to the dataset's
    own when they split it without overlap: the record that every worker trained on its share.
    Counted per batch, so that a batch the loader fetched ahead but no step used (training that
    ends before the epoch does, at trl_args.max_steps) can be left out."""

    def __init__(self, ids=lambda e: e["input_ids"]):
        self.ids = ids
        self.batches: list[tuple[int, int, int]] = []  # rows, tokens, digest

    def wrap(self, collate):
        def counted(examples):
            tokens = digest = 0
            for e in examples:
                ids = self.ids(e)
                tokens += len(ids)
                digest = (digest + row_hash(ids)) % 2**64
            self.batches.append((len(examples), tokens, digest))
            return collate(examples)

        return counted

    def totals(self, used: int) -> dict:
        """Rows, tokens and digest of the first `used` batches."""
        kept = self.batches[:used]
        return {"rows": sum(b[0] for b in kept), "tokens": sum(b[1] for b in kept),
                "digest": f"{sum(b[2] for b in kept) % 2**64:016x}"}


def row_hash(input_ids) -> int:
    import array
    import hashlib

    return int.from_bytes(hashlib.sha256(array.array("q", input_ids).tobytes()).digest()[:8], "little")


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint. The trainer writes trainer_state.json last, so a checkpoint
    that a kill cut short is passed over (the trainer's own `resume_from_checkpoint=True` would take it)."""
    steps = {}
    for p in checkpoints.glob("checkpoint-*"):
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file():
            steps[int(p.name.split("-")[-1])] = p
    return steps[max(steps)] if steps else None


def fit(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
        on_log=None, callbacks: list = ()) -> dict:
    """Builds the SFTTrainer and trains: the whole stage in this process, or one rank of a Ray
    Train worker group (the Trainer joins the process group it finds). Every rank calls this;
    rank 0 writes student/. `callbacks` are more TrainerCallbacks (a Ray worker's copy of a
    remote run pushes each checkpoint with one). Returns what the summary needs (meaningful on rank 0)."""
    return fit_sft(run, base, base.path, resume_from, run.files.checkpoints, run.files.student_dir,
                   progress, report_to, on_log, callbacks)


def fit_sft(run, base: StudentBase, start: str, resume_from: Path | None, checkpoints: Path, target: Path,
            progress=None, report_to: list[str] = (), on_log=None, callbacks: list = (),
            trl_args: dict | None = None) -> dict:
    """SFT from the weights at `start`, checkpoints in `checkpoints`, the model written to `target`
    (student/, or a first phase's own directory); `trl_args` over the recipe's when given."""
    quiet_libraries()
    import gc

    import datasets
    from trl import SFTConfig, SFTTrainer

    recipe = run.recipe
    table = run.files.read_dataset()
    with_tools = has_tools(table)
    # TRL passes a row's `tools` (JSON text) to the chat template; rows without tools get none.
    data = datasets.Dataset(table.select(["prompt", "completion"] + (["tools"] if with_tools else [])))
    model, tokenizer = load_student(start, recipe, with_tools)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**sft_config_kwargs(run, checkpoints, list(report_to), trl_args)),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.train) if recipe.train.weights == "lora" else None,
        callbacks=[_Progress(progress, on_log), *callbacks],
    )
    del model
    facts = train_and_save(trainer, tokenizer, run, base, resume_from, target, SFT_ROWS)
    del trainer  # the next phase, or the evaluate stage's engines, want this memory back
    gc.collect()
    return facts


class RowTokens:
    """How a method's tokenised rows are read: `columns` hold a row's tokens, `ids(row)` is its
    token ids in one list (what the shard tally and the dataset digest hash), and
    `per_epoch(dataset)` the real (non-padding) tokens an epoch feeds the model."""

    def __init__(self, columns: tuple[str, ...], ids, per_epoch):
        self.columns, self.ids, self.per_epoch = columns, ids, per_epoch


def quiet_libraries() -> None:
    """distill draws one bar for the stage; the libraries' own bars and log prints would interleave with it."""
    if "DS_ACCELERATOR" not in os.environ and not _has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed, imported by transformers, warns that it guessed
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def has_tools(table) -> bool:
    """Whether any row of a training table offers tools (a `tools` column that is not all null)."""
    return "tools" in table.column_names and table["tools"].null_count < table.num_rows


def load_student(path: str, recipe, with_tools: bool):
    """The model at `path` (bf16 on a GPU, else fp32) and its tokenizer with the student's chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_template(tokenizer, recipe, with_tools)
    return model, tokenizer


def train_and_save(trainer, tokenizer, run, base: StudentBase, resume_from: Path | None, target: Path,
                   rows: RowTokens) -> dict:
    """Trains a built TRL trainer (resuming from `resume_from`), writes the model to `target` on
    rank 0, and returns the facts the train summary needs (meaningful on rank 0)."""
    import torch
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # prints every log dict to stdout when tqdm is off
    tally = _ShardTally(rows.ids)
    counted = not trainer.args.dataloader_num_workers  # loader processes (trl_args) would keep the counts
    if counted:
        trainer.data_collator = tally.wrap(trainer.data_collator)
    started = time.time()
    with completion_rows_only_head(), packed_sequences_attend_alone():
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.time() - started

    shard = {"rank": trainer.args.process_index, **_ray_node()}
    if counted:
        start = int(resume_from.name.split("-")[-1]) if resume_from else 0
        used = (trainer.state.global_step - start) * trainer.args.gradient_accumulation_steps
        shard.update(tally.totals(used))
    shards, backend = [shard], None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend()
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, shard)
    _save_student(trainer, tokenizer, run, base, target)
    dataset = trainer.train_dataset.select_columns(list(rows.columns))
    facts = {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "world_size": trainer.args.world_size,
        "backend": backend,
        "shards": shards,
        "tokens_per_epoch": rows.per_epoch(trainer.train_dataset),
        "dataset_digest": f"{sum(row_hash(rows.ids(r)) for r in dataset) % 2**64:016x}",
        "log": [e for e in trainer.state.log_history if "loss" in e],
    }
    return facts


def use_template(tokenizer, recipe, with_tools: bool) -> None:
    """The student's chat template: the recipe's student.template over the base's own. It is saved
    with the student, so the student is served with the template it learned."""
    from distill import chat_templates

    if recipe.student.template:
        tokenizer.chat_template = chat_templates.resolve(recipe.student.template).text
    if with_tools and not chat_templates.supports_tools(tokenizer.chat_template):
        raise ValueError(f"the dataset has tool definitions but the chat template of {recipe.student.base} does not "
                         "render them: set `student.template` (shipped: "
                         f"{', '.join(chat_templates.NAMES)}) or a Jinja file")


def _ray_node() -> dict:
    """{"node": the Ray node this rank ran on} inside a Ray Train worker, else {}."""
    import sys

    ray = sys.modules.get("ray")  # loaded by Ray's workers; a plain in-process run never imports it
    if ray is None or not ray.is_initialized():
        return {}
    return {"node": ray.get_runtime_context().get_node_id()[:8]}


def _save_student(trainer, tokenizer, run, base: StudentBase, target: Path | None = None) -> None:
    """Every rank takes part (ZeRO-3 gathers the weight shards here); rank 0 writes student/ (or
    `target`) in one rename. Elsewhere each rank holds the whole model, and rank 0 saves its own copy."""
    if run.recipe.train.weights == "lora":  # a student is one model directory: fold the adapter in
        trainer.model = trainer.model.merge_and_unload()
    zero3 = trainer.is_deepspeed_enabled and run.recipe.train.deepspeed_stage == 3
    state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed) if zero3 else None
    if trainer.is_world_process_zero():
        student_dir = target or run.files.student_dir
        tmp = run.files.student_staging()
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        storage.write_json(tmp / STUDENT_META_FILE, {"revision": f"distill-run-{run.id}", "licence": base.licence or "unknown",
                                                  "params_b": _params_b(trainer.model)})
        if student_dir.exists():  # a stale partial from an older code version; never a finished one
            shutil.rmtree(student_dir)
        os.replace(tmp, student_dir)
    trainer.accelerator.wait_for_everyone()  # student/ exists for every rank once this returns


SFT_ROWS = RowTokens(("input_ids",), lambda e: e["input_ids"], lambda d: _trained_tokens(d))


def _trained_tokens(dataset) -> int:
    """Real (non-padding) tokens per epoch: what the throughput benchmark compares."""
    if "seq_lengths" in dataset.column_names:  # packed rows list the lengths of what they hold
        return sum(sum(x) for x in dataset["seq_lengths"])
    return sum(len(x) for x in dataset["input_ids"])


def _params_b(model) -> float:
    # Under ZeRO-3 a rank holds empty placeholders; DeepSpeed keeps the full size in ds_numel.
    return round(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) / 1e9, 4)


def weights_digest(path: Path) -> str:
    """Content hash of the weight files: the student's revision in the lineage."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
