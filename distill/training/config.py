"""TRL and DeepSpeed configuration from the recipe's `train:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill import storage
from distill.hardware import cpu_has_bf16


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


def trainer_kwargs(run, checkpoints: Path, report_to: list[str]) -> dict[str, Any]:
    """The arguments every method's TRL config shares, from the recipe's `train:` section: the
    schedule, batch, length, seed, checkpoints, precision and tracking. Each method adds its own."""
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
        # Mixed precision where the hardware has bf16 arithmetic (AVX512-BF16, AMX on a CPU);
        # weights stay fp32. Passed always: TRL's configs turn bf16 on when it is not given.
        "bf16": torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16(),
        "disable_tqdm": True,  # distill draws its own bar
        "dataloader_num_workers": 0,
    }
    if t.deepspeed_stage:
        ds_path = run.files.deepspeed_config
        storage.write_json(ds_path, deepspeed_config(t))
        kwargs["deepspeed"] = str(ds_path)
    return kwargs


def sft_config_kwargs(run, checkpoints: Path, report_to: list[str], trl_args: dict | None = None) -> dict[str, Any]:
    """SFTConfig arguments from the recipe's `train:` section; `trl_args` (the recipe's, unless
    given) pass through last."""
    kwargs = trainer_kwargs(run, checkpoints, report_to)
    kwargs.update({"packing": run.recipe.train.packing, "completion_only_loss": True})
    kwargs.update(run.recipe.train.trl_args if trl_args is None else trl_args)
    return kwargs


def dpo_config_kwargs(run, checkpoints: Path, report_to: list[str]) -> dict[str, Any]:
    """DPOConfig arguments: the shared ones (no packing: a row is one prompt with its two
    answers), beta, the loss and any learning rate of its own from `train.preference`;
    `trl_args` pass through last."""
    t = run.recipe.train
    kwargs = trainer_kwargs(run, checkpoints, report_to)
    kwargs.update({"beta": t.preference.beta, "loss_type": t.preference.loss_type})
    if t.preference.learning_rate:
        kwargs["learning_rate"] = t.preference.learning_rate
    kwargs.update(t.trl_args)
    return kwargs


def kto_config_kwargs(run, checkpoints: Path, report_to: list[str]) -> dict[str, Any]:
    """KTOConfig arguments: the shared ones, beta and any learning rate of its own from
    `train.preference` (KTO has its own loss); `trl_args` pass through last."""
    t = run.recipe.train
    kwargs = trainer_kwargs(run, checkpoints, report_to)
    kwargs["beta"] = t.preference.beta
    if t.preference.learning_rate:
        kwargs["learning_rate"] = t.preference.learning_rate
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
