"""Pass-through keys (train.trl_args, sampling.extra, teacher.engine_args) go to TRL and vLLM
unchanged, so they are checked against those libraries' own fields, with did-you-mean hints."""

from __future__ import annotations

from distill.problems import Problem, show
from distill.registry import closest


# SFTConfig arguments the `train:` section already sets under its own names.
TRAIN_OWNS = {
    "num_train_epochs": "epochs", "learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length",
    "packing": "packing", "seed": "seed", "save_steps": "save_steps", "deepspeed": "deepspeed_stage",
    "gradient_checkpointing": "gradient_checkpointing",
    "output_dir": None, "report_to": None,
}


def _check_trl_args(recipe) -> list[Problem]:
    import dataclasses

    from trl import SFTConfig

    problems = []
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for key, value in recipe.train.trl_args.items():
        where = f"train.trl_args.{key}"
        if key in TRAIN_OWNS:
            own = TRAIN_OWNS[key]
            problems.append(Problem(where, f"set it as train.{own}, not in trl_args" if own
                                    else "distill sets this one itself (the run directory and tracking decide it)"))
        elif key not in fields:
            hint = closest(key, sorted(fields))
            problems.append(Problem(where, f"{show(value)}: not a trl.SFTConfig field" + (f" (did you mean {hint!r}?)" if hint else "")))
    return problems


def check_passthrough(recipe) -> list[Problem]:
    """Pass-through keys go to vLLM and TRL unchanged, so check them against their own fields."""
    problems = _check_trl_args(recipe) if recipe.train.trl_args else []
    if not (recipe.sampling.extra or recipe.teacher.engine_args):
        return problems
    import dataclasses
    import inspect

    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    sampling_fields = set(inspect.signature(SamplingParams).parameters) - {"n", "seed"}
    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    for key, value in recipe.sampling.extra.items():
        if key in type(recipe.sampling).model_fields:
            problems.append(Problem(f"sampling.extra.{key}", f"set it as sampling.{key}, not in extra"))
        elif key not in sampling_fields:
            hint = closest(key, sorted(sampling_fields))
            problems.append(Problem(f"sampling.extra.{key}", f"{show(value)}: not a vLLM SamplingParams field" + (f" (did you mean {hint!r}?)" if hint else "")))
    for key, value in recipe.teacher.engine_args.items():
        if key not in engine_fields:
            hint = closest(key, sorted(engine_fields))
            problems.append(Problem(f"teacher.engine_args.{key}", f"{show(value)}: not a vLLM engine argument" + (f" (did you mean {hint!r}?)" if hint else "")))
    return problems
