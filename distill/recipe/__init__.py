"""The recipe: one YAML file drives every stage. One typed class per section.

Every default lives here, with a one-line why. Unknown keys are errors. `load_recipe`
reports every problem at once (file, dotted key, bad value, what is allowed), so a user
fixes a recipe in one pass instead of one error per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from distill.licensing.types import Acknowledgement
from distill.models import StudentBase, resolve_base
from distill.problems import (Problem, RecipeError, RecipeLoader, dotted, problems_from, show,  # noqa: F401
                              yaml_error)
from distill.registry import Params, Registry, closest
from distill.teachers import Teacher, load_teacher


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(BaseModel):
    """A registered component in a recipe list: its short name plus its own parameters.

    The parameters are checked against the registered Params class in a second pass
    (`_check_components`), which also resolves them into `params`.
    """

    model_config = ConfigDict(extra="allow")
    _params: Params | None = PrivateAttr(default=None)

    @property
    def params(self) -> Params:
        assert self._params is not None, "recipe not loaded through load_recipe"
        return self._params


class PromptSource(Component):
    source: str


class TeacherRef(Section):
    id: str = Field(description="a shipped teacher id (distill ls) or the path of a teacher YAML")
    # Passed to the vLLM engine over the teacher's serving defaults, e.g. {enforce_eager: true}.
    engine_args: dict[str, Any] = {}


class Prompts(Section):
    train: list[PromptSource] = Field(min_length=1)
    # Held out: never sampled for training; the evaluate stage answers these.
    eval: list[PromptSource] = []
    # None keeps the chat template's own default system turn.
    system_prompt: str | None = None


class Sampling(Section):
    n: int = Field(8, ge=1, le=1024)  # several samples per prompt: verifiers keep the good ones
    temperature: float = Field(0.8, ge=0)  # diverse enough for n samples to differ
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0: no top-k cut
    min_p: float = Field(0.0, ge=0, le=1)
    max_tokens: int = Field(512, ge=1)  # long enough for short reasoning, bounded cost
    repetition_penalty: float = Field(1.0, gt=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stop: list[str] = []
    seed: int = Field(0, ge=0)  # each sample's seed derives from this, its prompt and its index
    # Samples per written batch file: bounds what a crash can cost (at most the batches in flight).
    batch_size: int = Field(64, ge=1)
    # Verifier in the loop: a prompt with fewer accepted samples than this after a round is sampled
    # again (n more samples, new seeds), for at most max_rounds rounds in all. None: one round.
    accepted_per_prompt: int | None = Field(None, ge=1)
    max_rounds: int = Field(1, ge=1, le=100)
    # Passes over a round's work: a pass an engine crash or a lost worker node cut short is
    # followed by one for what is missing (written samples are kept, none is written twice).
    attempts: int = Field(3, ge=1, le=20)
    # Further vllm.SamplingParams fields, passed through unchanged (checked against vLLM).
    extra: dict[str, Any] = {}

    @model_validator(mode="after")
    def _rounds_need_a_target(self):
        if self.max_rounds > 1 and self.accepted_per_prompt is None:
            raise ValueError("max_rounds > 1 re-samples prompts with too few accepted samples: "
                             "set accepted_per_prompt too")
        return self


class Verifier(Component):
    name: str
    # A sample is accepted only if every required verifier scores it >= threshold.
    required: bool = True
    threshold: float = Field(1.0, ge=0, le=1)


class Filter(Component):
    name: str
    mode: Literal["drop", "mark"] = "drop"  # mark keeps the row and records the verdict


class Student(Section):
    name: str = Field(min_length=1, description="the published model's name")
    base: str = Field(description="a shipped teacher id, a teacher YAML, or a local model directory")
    commercial_use: bool = True  # what the licence engine checks the teachers' terms against
    # The student competes with an API provider whose outputs it learns from (OpenAI's and
    # Gemini's terms forbid that).
    competing: bool = False
    # Explicit, recorded overrides of licence refusals: each names the rule id it overrides
    # (as `distill licence` prints it) and why; never a silent switch.
    acknowledge: list[Acknowledgement] = []
    # Licence id of a base given as a local directory without a model card; teacher entries carry their own.
    base_licence: str | None = None


class Lora(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class Train(Section):
    method: Literal["full", "lora"] = "full"
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(8, ge=1)  # per device
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    # Several short samples share one row, no padding (padding-free batches): far fewer wasted tokens.
    packing: bool = True
    seed: int = 0
    save_steps: int = Field(50, ge=1)  # a checkpoint every this many steps: what a killed training can lose
    # Recompute activations in the backward pass instead of keeping them (TRL's default): far less
    # memory for long rows and big students, for about a quarter more compute. A small student on
    # short rows fits without it (the demo trains 71 -> 89 tokens/s with it off).
    gradient_checkpointing: bool = True
    lora: Lora = Lora()
    deepspeed_stage: Literal[0, 2, 3] = 0  # 0: no DeepSpeed (CPU and single GPU)
    # 1 trains in-process; more are Ray Train data-parallel workers (global batch: batch_size x workers).
    workers: int = Field(1, ge=1)
    # Further trl.SFTConfig arguments, passed through unchanged.
    trl_args: dict[str, Any] = {}

    @model_validator(mode="after")
    def _lora_not_on_sharded_weights(self):
        if self.method == "lora" and self.deepspeed_stage == 3:
            # Merging an adapter into ZeRO-3 shards would write a broken student.
            raise ValueError("LoRA with deepspeed_stage 3 is not supported: use deepspeed_stage 2, or method: full")
        return self


class Eval(Section):
    k: int = Field(4, ge=1)  # samples per held-out prompt for pass@1
    max_prompts: int | None = Field(None, ge=1)
    # Price per 1M output tokens per model id; unset: parameter count as the proxy.
    price_per_mtok: dict[str, float] = {}


class Tracking(Section):
    # auto: online when the user has logged in to wandb (an API key is set), else offline;
    # offline keeps everything in the run directory and sends nothing.
    wandb: Literal["auto", "offline", "online", "disabled"] = "auto"
    project: str = "distill"
    entity: str | None = None


class Cluster(Section):
    address: str | None = None  # None: a local Ray started for the run
    replicas: int = Field(1, ge=1)  # vLLM engine replicas sharing the prompt stream
    cpus_per_replica: float = Field(1, gt=0)
    # Custom Ray resources each replica needs besides its CPUs/GPUs, to keep engines on the nodes
    # that offer them (e.g. {"teacher_node": 1} where only the big nodes are started with it).
    resources_per_replica: dict[str, float] = {}
    accelerator_type: str | None = None
    # Seconds to wait for every replica to start before the first prompt is sent; the run fails
    # if they do not (the cluster cannot hold them). None: work starts on the first engine up,
    # and the others join as they come (on a busy machine they may come after the work is done).
    wait_for_replicas_s: float | None = Field(None, gt=0)


class Recipe(Section):
    name: str = Field(max_length=100)  # names the run directory
    teacher: TeacherRef
    prompts: Prompts
    sampling: Sampling = Sampling()
    verifiers: list[Verifier] = []
    filters: list[Filter] = []
    student: Student | None = None
    train: Train = Train()
    eval: Eval = Eval()
    tracking: Tracking = Tracking()
    cluster: Cluster = Cluster()
    output_dir: str = "runs"

    _path: Path | None = PrivateAttr(default=None)
    # Resolved once, when first asked for (load_recipe asks): every stage reads these, none re-reads files.
    _teacher: Teacher | None = PrivateAttr(default=None)
    _base: StudentBase | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-', starting with a letter or digit: it names the run directory")
        return v

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shorthand(cls, v):
        return {"id": v} if isinstance(v, str) else v

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    @property
    def teacher_entry(self) -> Teacher:
        """The teacher entry `teacher.id` names (a shipped id or a YAML path)."""
        if self._teacher is None:
            self._teacher = load_teacher(self.teacher.id, self.base_dir)
        return self._teacher

    @property
    def student_base(self) -> StudentBase | None:
        """What `student.base` is: id, weights, revision, licence; None without a student."""
        if self.student is None:
            return None
        if self._base is None:
            self._base = resolve_base(self.student.base, self.base_dir, self.student.base_licence)
        return self._base

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled and every component's parameters resolved."""
        data = self.model_dump(mode="json")
        for section, key in (("prompts", "train"), ("prompts", "eval")):
            data[section][key] = [_resolved(c, "source") for c in getattr(self.prompts, key)]
        data["verifiers"] = [_resolved(v, "name") for v in self.verifiers]
        data["filters"] = [_resolved(f, "name") for f in self.filters]
        return data

    def content_hash(self) -> str:
        """Hash of what decides the outputs; tracking and cluster placement do not."""
        return self._hash(self.resolved())

    def samples_key(self) -> str:
        """Hash of what decides the teacher's samples and their verdicts, and nothing else: two
        recipes with the same key (say, differing in learning rate) can share one set of samples."""
        data = self.resolved()
        for key in ("batch_size", "attempts"):  # how results are grouped and retried, not what they are
            data["sampling"].pop(key)
        return self._hash({k: data[k] for k in ("teacher", "prompts", "sampling", "verifiers")})

    def _hash(self, data: dict) -> str:
        data = dict(data)
        # Where a run is tracked, placed and written does not change what it makes: the same
        # recipe has the same run id on a laptop and as a cluster job.
        for key in ("tracking", "cluster", "output_dir"):
            data.pop(key, None)
        # The teacher entry itself (model, revision, serving), not only its id: re-pinning a
        # revision must not resume a run made with the old weights.
        entry = self.teacher_entry.model_dump(mode="json")
        if entry.get("endpoint"):  # where and what is served decides the samples; rate limits do not
            entry["endpoint"] = {k: entry["endpoint"][k] for k in ("base_url", "model")}
        data["teacher_entry"] = entry
        data["sources_sha256"] = [
            getattr(c.params, "content_sha256", None) for c in self.prompts.train + self.prompts.eval
        ]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def _resolved(component: Component, key: str) -> dict[str, Any]:
    fixed = {k: v for k, v in component.model_dump(mode="json").items() if k in type(component).model_fields}
    return {**fixed, key: getattr(component, key), **component.params.model_dump(mode="json")}


def _check_components(
    recipe_data: dict, registry: Registry, loc: tuple, key: str, base: type[Component], base_dir: Path
) -> tuple[list[Problem], list[Params]]:
    """Second pass: each component's name must be registered and its parameters valid."""
    problems: list[Problem] = []
    resolved: list[Params] = []
    items = recipe_data
    for part in loc:
        items = items.get(part) if isinstance(items, dict) else None
    if not isinstance(items, list):
        return problems, resolved
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue  # the first pass already reported it
        name = item[key]
        if name not in registry:
            problems.append(Problem(dotted(loc + (i, key)), registry.unknown(name)))
            continue
        entry = registry.get(name)
        own = {k: v for k, v in item.items() if k not in base.model_fields}
        try:
            resolved.append(entry.params.model_validate(own, context={"base_dir": base_dir}))
        except ValidationError as e:
            problems.extend(problems_from(e, entry.params, loc + (i,), tuple(base.model_fields)))
    return problems, resolved


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe; raises RecipeError listing every problem found."""
    from distill.prompts import PROMPT_SOURCES
    from distill.filters import FILTERS
    from distill.verifiers import VERIFIERS

    path = Path(path)
    file = str(path)
    try:
        data = yaml.load(path.read_text(), Loader=RecipeLoader)
    except FileNotFoundError:
        raise RecipeError(file, [Problem("(file)", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8 text
        raise RecipeError(file, [Problem("(file)", f"cannot read: {e}")]) from None
    except yaml.YAMLError as e:
        raise RecipeError(file, [Problem("(file)", f"not valid YAML: {yaml_error(e)}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(file, [Problem("(top level)", "a recipe is a mapping of sections (name, teacher, prompts, ...)")])

    problems: list[Problem] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from(e, Recipe))

    base_dir = path.parent
    checks = [
        (PROMPT_SOURCES, ("prompts", "train"), "source", PromptSource),
        (PROMPT_SOURCES, ("prompts", "eval"), "source", PromptSource),
        (VERIFIERS, ("verifiers",), "name", Verifier),
        (FILTERS, ("filters",), "name", Filter),
    ]
    resolved_lists = []
    for registry, loc, key, base in checks:
        found, params = _check_components(data, registry, loc, key, base, base_dir)
        problems.extend(found)
        resolved_lists.append(params)

    teacher_entry = None
    teacher_ref = data.get("teacher")
    teacher_id = teacher_ref.get("id") if isinstance(teacher_ref, dict) else teacher_ref
    if isinstance(teacher_id, str):
        key = "teacher" if isinstance(teacher_ref, str) else "teacher.id"
        try:
            teacher_entry = load_teacher(teacher_id, base_dir)
            served = teacher_entry.endpoint is not None
            if served and isinstance(teacher_ref, dict) and teacher_ref.get("engine_args"):
                problems.append(Problem("teacher.engine_args", "the teacher is served over HTTP (its entry has an "
                                        "endpoint): engine arguments belong to that server, remove them here"))
        except ValidationError as e:  # before ValueError: pydantic's ValidationError is a ValueError
            details = "; ".join(f"{p.key}: {p.message}" for p in problems_from(e, Teacher))
            problems.append(Problem(key, f"teacher file {teacher_id!r} is invalid: {details}"))
        except ValueError as e:
            problems.append(Problem(key, str(e)))

    if recipe is not None:
        problems.extend(_check_passthrough(recipe))
        if recipe.sampling.accepted_per_prompt and not any(v.required for v in recipe.verifiers):
            problems.append(Problem("sampling.accepted_per_prompt", "counts samples the verifiers accepted: "
                                    "add a required verifier, or remove it"))
        if recipe.student is not None:
            recipe._path = path
            try:
                recipe.student_base
            except ValueError as e:
                problems.append(Problem("student.base", str(e)))

    if problems:
        raise RecipeError(file, problems)
    assert recipe is not None
    recipe._path = path
    recipe._teacher = teacher_entry
    lists = [recipe.prompts.train, recipe.prompts.eval, recipe.verifiers, recipe.filters]
    for components, params in zip(lists, resolved_lists):
        for component, p in zip(components, params):
            component._params = p
    return recipe


# SFTConfig arguments the `train:` section already sets under its own names.
TRAIN_OWNS = {
    "num_train_epochs": "epochs", "learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length",
    "packing": "packing", "seed": "seed", "save_steps": "save_steps", "deepspeed": "deepspeed_stage",
    "gradient_checkpointing": "gradient_checkpointing",
    "output_dir": None, "report_to": None,
}


def _check_trl_args(recipe: Recipe) -> list[Problem]:
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


def _check_passthrough(recipe: Recipe) -> list[Problem]:
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
        if key in Sampling.model_fields:
            problems.append(Problem(f"sampling.extra.{key}", f"set it as sampling.{key}, not in extra"))
        elif key not in sampling_fields:
            hint = closest(key, sorted(sampling_fields))
            problems.append(Problem(f"sampling.extra.{key}", f"{show(value)}: not a vLLM SamplingParams field" + (f" (did you mean {hint!r}?)" if hint else "")))
    for key, value in recipe.teacher.engine_args.items():
        if key not in engine_fields:
            hint = closest(key, sorted(engine_fields))
            problems.append(Problem(f"teacher.engine_args.{key}", f"{show(value)}: not a vLLM engine argument" + (f" (did you mean {hint!r}?)" if hint else "")))
    return problems
