"""Train: supervised fine-tuning of the student on the kept samples, with TRL's SFTTrainer.

The dataset is in TRL's prompt-completion chat format, so the loss covers the completion
only and the student's own chat template renders the turns. Checkpoints go to
`train/checkpoints/`; a rerun of a killed training resumes from the last complete one. The
finished weights are written to `student/` in one rename, so a `student/` that exists is complete.

`train.workers: 1` (the default) trains in this process. With more, the stage runs under Ray
Train (distill/train_ray.py): a TorchTrainer starts that many workers (one GPU each, NCCL; or
CPU slots, gloo) and every worker runs the same `fit` below. HF's Trainer finds the process
group Ray Train set up, so it wraps the model in DDP (or DeepSpeed ZeRO-2/3 from
`train.deepspeed_stage`) and its sampler deals each rank its own share of the rows; every rank
reads the dataset from the run directory, and checkpoints go to the same `train/checkpoints/`,
which must be storage every worker sees (NFS, or one machine), or a bucket output_dir, whose
files each node copies in and out (distill/train_ray.py). Rank 0 writes `student/`; the
driver writes `train/summary.json`, with the world size, the backend and what each rank trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill import storage
from distill.hardware import cpu_has_bf16



@dataclass(frozen=True)
class BaseModel:
    """The student's starting weights and what the lineage needs to know of them."""

    id: str
    model: str  # hub id or local directory
    revision: str
    licence: str
    params_b: float | None
    path: str  # what from_pretrained loads


def resolve_base(recipe) -> BaseModel:
    """`student.base`: a shipped teacher id, a teacher YAML, or a local model directory."""
    from distill.teachers import load_teacher, model_path

    ref = recipe.student.base
    local = Path(ref) if Path(ref).is_absolute() else recipe.base_dir / ref
    if (local / "config.json").is_file():
        meta = _local_meta(local)
        return BaseModel(id=local.name, model=str(local), revision=meta.get("revision", "local"),
                         licence=meta.get("licence", "unknown"), params_b=meta.get("params_b"), path=str(local))
    t = load_teacher(ref, recipe.base_dir)
    return BaseModel(id=t.id, model=t.model, revision=t.revision, licence=t.licence, params_b=t.params_b,
                     path=model_path(t))


def check_base(recipe) -> str | None:
    """Why `student.base` cannot be resolved, or None (no weights are loaded)."""
    from distill.teachers import load_teacher

    ref = recipe.student.base
    local = Path(ref) if Path(ref).is_absolute() else recipe.base_dir / ref
    if (local / "config.json").is_file():
        return None
    try:
        load_teacher(ref, recipe.base_dir)
    except ValueError as e:
        return f"{ref!r} is neither a model directory (no config.json there) nor a teacher: {e}"
    return None


def _local_meta(path: Path) -> dict:
    """A local base may say what it is in distill.json (licence, revision); else it is unknown."""
    f = path / "distill.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def deepspeed_config(train) -> dict[str, Any]:
    """A ZeRO-2/3 config from the recipe; "auto" lets the HF integration fill sizes from SFTConfig."""
    stage = train.deepspeed_stage
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # Full weights gathered on save, so student/ holds a normal checkpoint.
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    else:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 2e8, "reduce_scatter": True})
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,  # the trainer logs; DeepSpeed's own prints would duplicate it
        "wall_clock_breakdown": False,
    }


def sft_config_kwargs(run, checkpoints: Path, report_to: list[str]) -> dict[str, Any]:
    """SFTConfig arguments from the recipe's `train:` section; `trl_args` pass through last."""
    import torch

    t = run.recipe.train
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "num_train_epochs": t.epochs,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": t.max_length,
        "packing": t.packing,
        "gradient_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "data_seed": t.seed,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,  # a fraction: 3% of the steps
        "logging_steps": 1,  # the loss curve is part of the report
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": 2,  # enough to resume; older checkpoints only fill the disk
        "report_to": report_to,
        "use_cpu": not cuda,
        # Mixed precision where the hardware has bf16 arithmetic: on a CPU with AVX512-BF16
        # the demo trains 1.33x faster (76 -> 101 tokens/s measured); weights stay fp32.
        "bf16": torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16(),
        "disable_tqdm": True,  # distill draws its own bar
        "dataloader_num_workers": 0,
        "completion_only_loss": True,
    }
    if t.deepspeed_stage:
        ds_path = run.dir / "train" / "deepspeed.json"
        storage.write_json(ds_path, deepspeed_config(t))
        kwargs["deepspeed"] = str(ds_path)
    kwargs.update(t.trl_args)
    return kwargs


def _has_cuda() -> bool:
    from distill.hardware import has_cuda

    return has_cuda()


def lora_config(train):
    from peft import LoraConfig

    lo = train.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
                      task_type="CAUSAL_LM")


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
    own when they split it without overlap: the record that every worker trained on its share."""

    def __init__(self):
        self.rows = self.tokens = self.digest = 0

    def wrap(self, collate):
        def counted(examples):
            for e in examples:
                self.rows += 1
                self.tokens += len(e["input_ids"])
                self.digest = (self.digest + row_hash(e["input_ids"])) % 2**64
            return collate(examples)

        return counted


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


def train_student(run, progress=None, report_to: list[str] | None = None) -> dict:
    """Trains (or resumes) the student; returns the training summary (also in train/summary.json)."""
    summary_path = run.dir / "train" / "summary.json"
    student_dir = run.dir / "student"
    if summary_path.is_file() and (student_dir / "config.json").is_file():
        return json.loads(summary_path.read_text())

    from distill.stages.dataset import read_dataset

    recipe = run.recipe
    rows = read_dataset(run.dir).num_rows
    if rows == 0:
        raise RuntimeError(
            f"{run.dir / 'dataset'}: no kept samples to train on; manifest.json says what was dropped and why. "
            "Sample more prompts, raise sampling.n, or relax a verifier's threshold."
        )
    base = resolve_base(recipe)
    resume_from = last_checkpoint(run.dir / "train" / "checkpoints")
    if recipe.train.workers > 1:
        from distill.train_ray import fit_on_ray

        facts = fit_on_ray(run, base, resume_from, progress, report_to or [])
    else:
        facts = fit(run, base, resume_from, progress, report_to or [])

    tokens = facts["tokens_per_epoch"] * recipe.train.epochs
    summary = {
        "method": recipe.train.method,
        "base": base.__dict__,
        "rows": rows,
        "epochs": recipe.train.epochs,
        "steps": facts["steps"],
        "resumed": resume_from is not None,
        "resumed_from": resume_from.name if resume_from else None,
        "workers": facts["world_size"],
        "backend": facts["backend"],  # torch.distributed's; None when one process trained alone
        "train_loss": facts["train_loss"],
        "trained_tokens": tokens,
        "seconds": facts["seconds"],
        "tokens_per_second": tokens / facts["seconds"] if facts["seconds"] else 0.0,
        "weights_sha256": _weights_digest(student_dir),
        # Per rank, what this run (after any resume) fed it; see _ShardTally.
        "data_shards": facts["shards"],
        "dataset_digest": facts["dataset_digest"],
        "log": facts["log"],
    }
    storage.write_json(summary_path, summary)
    return summary


@contextmanager
def completion_rows_only_head():
    """While training: TRL's fused LM head projects only the positions that have a label, on a CPU too.

    SFTTrainer's loss goes through TRL's fused head (no `[tokens, vocab]` logits), which on
    CUDA/XPU projects only the positions whose label is not -100, and elsewhere every position,
    so that a compiling backend (Neuron) sees one tile shape. In eager PyTorch on a CPU the
    prompt's positions are pure waste: with completion-only loss, about half of a distillation
    row's tokens. The head and its softmax statistics over SmolLM2's 49k-token vocabulary were
    29% of a demo training step here; projecting the completion rows only takes that to about
    half. The loss, the gradients and the logged metrics are the same (tested).

    TRL decides by `trl.trainer.utils._use_triton(device)`, which that module calls for this
    choice only; the wrapper answers yes for CPU devices and leaves the rest to TRL. A TRL
    without the name is left alone.
    """
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):
        yield
        return

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextmanager
def packed_sequences_attend_alone():
    """While training: on a CPU, a padding-free batch's attention runs sequence by sequence.

    With packing (TRL's default "bfd" strategy) the collator flattens the batch into one row
    of every sample end to end, with the sequences' boundaries (`cu_seq_lens_q`) beside it.
    Flash attention takes those boundaries directly; SDPA, the CPU's attention, gets a
    block-diagonal mask over the whole row instead, and computes and masks every pair of
    positions in it: for a demo step, a 937 x 937 mask over eight samples of about 117
    tokens, some 16 times the pairs that count. Attention forward and backward were 27% of
    a demo training step here. Each sequence on its own, through SDPA's causal kernel,
    computes the same (tested) from its own pairs only: 1.21x the demo's training tokens/s
    (bench/cpu_packed_attention.py).

    The wrapper stands in for transformers' "sdpa" attention function and hands any other
    call to it unchanged: no boundaries (a padded batch), a KV cache, a GPU, or attention that
    is more than causal (a sliding window, soft-capping, attention sinks).
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as functions

    sdpa = functions["sdpa"]

    def plain_causal(module, query, key, bounds, kwargs) -> bool:
        """A padding-free row on a CPU, for attention that is causal and nothing more."""
        if bounds is None or query.device.type != "cpu" or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
            return False
        if int(bounds[-1]) != query.shape[2] or not getattr(module, "is_causal", True):
            return False
        keys = kwargs.get("cu_seq_lens_k")
        if keys is not None and not torch.equal(keys, bounds):
            return False
        # A sliding window, soft-capping, sinks or a bias change what a position sees or weighs:
        # those stay with transformers' mask.
        if any(kwargs.get(name) is not None for name in ("sliding_window", "softcap", "s_aux", "position_bias")):
            return False
        return not kwargs.get("output_attentions") and getattr(module, "sliding_window", None) is None

    def per_sequence(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        bounds = kwargs.get("cu_seq_lens_q")
        if not plain_causal(module, query, key, bounds, kwargs):
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        groups = query.shape[1] // key.shape[1]  # grouped-query attention: each KV head serves `groups` heads
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        edges = bounds.tolist()
        parts = [torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
            for a, b in zip(edges, edges[1:]) if b > a]
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None

    functions["sdpa"] = per_sequence
    try:
        yield
    finally:
        del functions["sdpa"]  # the local override; the library's own entry shows through again
        if functions["sdpa"] is not sdpa:
            functions["sdpa"] = sdpa


def fit(run, base: BaseModel, resume_from: Path | None, progress=None, report_to: list[str] = (),
        on_log=None, callbacks: list = ()) -> dict:
    """Builds the SFTTrainer and trains: the whole stage in this process, or one rank of a Ray
    Train worker group (the Trainer joins the process group it finds). Every rank calls this;
    rank 0 writes student/. `callbacks` are more TrainerCallbacks (a Ray worker's copy of a
    remote run pushes each checkpoint with one). Returns what the summary needs (meaningful on rank 0)."""
    if "DS_ACCELERATOR" not in os.environ and not _has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed, imported by transformers, warns that it guessed
    import gc

    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    # distill draws one bar for the stage; the libraries' own bars and log prints would interleave with it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    from distill.stages.dataset import read_dataset

    recipe = run.recipe
    data = datasets.Dataset(read_dataset(run.dir).select(["prompt", "completion"]))
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16 if cuda else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**sft_config_kwargs(run, run.dir / "train" / "checkpoints", list(report_to))),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.train) if recipe.train.method == "lora" else None,
        callbacks=[_Progress(progress, on_log), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # prints every log dict to stdout when tqdm is off
    tally = _ShardTally()
    counted = not trainer.args.dataloader_num_workers  # loader processes (trl_args) would keep the counts
    if counted:
        trainer.data_collator = tally.wrap(trainer.data_collator)
    started = time.time()
    with completion_rows_only_head(), packed_sequences_attend_alone():
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.time() - started

    shard = {"rank": trainer.args.process_index, **_ray_node()}
    if counted:
        shard.update(rows=tally.rows, tokens=tally.tokens, digest=f"{tally.digest:016x}")
    shards, backend = [shard], None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend()
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, shard)
    _save_student(trainer, tokenizer, run, base)
    facts = {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "world_size": trainer.args.world_size,
        "backend": backend,
        "shards": shards,
        "tokens_per_epoch": _trained_tokens(trainer.train_dataset),
        "dataset_digest": f"{sum(map(row_hash, trainer.train_dataset['input_ids'])) % 2**64:016x}",
        "log": [e for e in trainer.state.log_history if "loss" in e],
    }
    del trainer, model  # the evaluate stage's engines want this memory back
    gc.collect()
    return facts


def _ray_node() -> dict:
    """{"node": the Ray node this rank ran on} inside a Ray Train worker, else {}."""
    import sys

    ray = sys.modules.get("ray")  # loaded by Ray's workers; a plain in-process run never imports it
    if ray is None or not ray.is_initialized():
        return {}
    return {"node": ray.get_runtime_context().get_node_id()[:8]}


def _save_student(trainer, tokenizer, run, base: BaseModel) -> None:
    """Every rank takes part (ZeRO-3 gathers the weight shards here); rank 0 writes student/ in one rename.
    Elsewhere each rank holds the whole model, and rank 0 saves its own copy."""
    if run.recipe.train.method == "lora":  # a student is one model directory: fold the adapter in
        trainer.model = trainer.model.merge_and_unload()
    zero3 = trainer.is_deepspeed_enabled and run.recipe.train.deepspeed_stage == 3
    state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed) if zero3 else None
    if trainer.is_world_process_zero():
        student_dir = run.dir / "student"
        tmp = run.dir / f".student-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        storage.write_json(tmp / "distill.json", {"revision": f"distill-run-{run.id}", "licence": base.licence,
                                                  "params_b": _params_b(trainer.model)})
        if student_dir.exists():  # a stale partial from an older code version; never a finished one
            shutil.rmtree(student_dir)
        os.replace(tmp, student_dir)
    trainer.accelerator.wait_for_everyone()  # student/ exists for every rank once this returns


def _trained_tokens(dataset) -> int:
    """Real (non-padding) tokens per epoch: what the throughput benchmark compares."""
    if "seq_lengths" in dataset.column_names:  # packed rows list the lengths of what they hold
        return sum(sum(x) for x in dataset["seq_lengths"])
    return sum(len(x) for x in dataset["input_ids"])


def _params_b(model) -> float:
    # Under ZeRO-3 a rank holds empty placeholders; DeepSpeed keeps the full size in ds_numel.
    return round(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) / 1e9, 4)


def _weights_digest(path: Path) -> str:
    """Content hash of the weight files: the student's revision in the lineage."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()



