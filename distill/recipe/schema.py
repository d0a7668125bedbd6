"""The recipe's schema: one typed class per section, every default here with its reason.

Unknown keys are errors. Every field has a description; docs/recipe-reference.md is generated
from them (`python -m distill.recipe.reference`), and a test fails when that page is stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from distill.licensing import Acknowledgement
from distill.models import StudentBase, resolve_base
from distill.registry import Params
from distill.schema import Strict
from distill.teachers import Teacher, load_teacher


def _check_template(name: str | None, info) -> str | None:
    """A chat template name or file that exists; a file's path becomes absolute (relative to the recipe)."""
    from distill import chat_templates

    if name is None or name in chat_templates.NAMES:
        return name
    base = Path((info.context or {}).get("base_dir", "."))
    chat_templates.resolve(name, base)  # raises, saying what was looked for
    return str((base / name).resolve())


# A chat template's name or file, checked when the recipe loads.
TemplateName = Annotated[str | None, AfterValidator(_check_template)]


# A verdict of a plain-text verifier takes milliseconds; a minute is a runaway.
DEFAULT_VERIFY_LIMIT_S = 60.0


class Section(Strict):
    """A recipe section: unknown keys are errors."""


class Component(BaseModel):
    """A registered component in a recipe list: its short name plus its own parameters.

    The parameters are checked against the registered Params class in a second pass
    (distill/recipe/load.py), which also resolves them into `params`.
    """

    model_config = ConfigDict(extra="allow")
    _params: Params | None = PrivateAttr(default=None)

    @property
    def params(self) -> Params:
        assert self._params is not None, "recipe not loaded through load_recipe"
        return self._params


class PromptSource(Component):
    """A prompt source by registered name (`distill ls` lists them), with that source's own keys."""

    source: str = Field(description="a registered prompt source: jsonl, parquet, hf-disk, arithmetic, ... "
                                    "(`distill ls`), or a plug-in's dotted name")


class TeacherRef(Section):
    """The teacher: a shipped entry or a YAML file of the same shape."""

    id: str = Field(description="a shipped teacher id (distill ls) or the path of a teacher YAML")
    engine_args: dict[str, Any] = Field({}, description="vLLM engine arguments over the teacher entry's serving "
                                                        "defaults, e.g. {enforce_eager: true}; checked against vLLM")
    template: TemplateName = Field(None, description="the chat template the teacher is served with, over the entry's: "
                                                   "a shipped one (hermes: tool calls in <tool_call> tags) or a Jinja "
                                                   "file relative to the recipe; none: the entry's, else the model's own")


class Prompts(Section):
    """Where the prompts come from."""

    train: list[PromptSource] = Field(min_length=1, description="sources of the prompts the teacher answers "
                                                                "for training")
    eval: list[PromptSource] = Field([], description="held-out sources: never sampled for training; the evaluate "
                                                     "stage answers these, and decontamination checks against them")
    system_prompt: str | None = Field(None, description="a system turn before every prompt; none keeps the chat "
                                                        "template's own default")
    bad_rows: Literal["fail", "skip"] = Field(
        "fail", description="a prompt-file row that cannot be a prompt (not JSON, not an object, no question, no "
                            "answer when answer_field is set): fail lists them when the recipe loads and runs "
                            "nothing; skip leaves them out and logs how many")


class Sampling(Section):
    """How the teacher samples; the evaluation uses the same settings."""

    n: int = Field(8, ge=1, le=1024, description="samples per prompt: several, so the verifiers can keep the good ones")
    temperature: float = Field(0.8, ge=0, description="diverse enough for n samples to differ")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; 1 keeps every token")
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens below this share of the top token's probability")
    max_tokens: int = Field(512, ge=1, description="per completion: long enough for short reasoning, bounded cost")
    repetition_penalty: float = Field(1.0, gt=0, description="1: none")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI-style presence penalty; 0: none")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI-style frequency penalty; 0: none")
    stop: list[str] = Field([], description="strings that end a completion")
    seed: int = Field(0, ge=0, description="each sample's seed derives from this, its prompt and its index")
    batch_size: int = Field(64, ge=1, description="samples per written batch file: bounds what a crash can cost "
                                                  "(at most the batches in flight)")
    accepted_per_prompt: int | None = Field(
        None, ge=1, description="verifier in the loop: a prompt with fewer accepted samples after a round is "
                                "sampled again (n more samples, new seeds); none: one round")
    max_rounds: int = Field(1, ge=1, le=100, description="rounds in all, with accepted_per_prompt")
    attempts: int = Field(3, ge=1, le=20, description="passes over a round's work: a pass an engine crash or a lost "
                                                      "worker node cut short is followed by one for what is missing")
    extra: dict[str, Any] = Field({}, description="further vllm.SamplingParams fields, passed through unchanged "
                                                  "(checked against vLLM)")
    logprobs: int | None = Field(None, ge=1, le=20, description="keep the teacher's top-k log-probabilities of "
                                                               "every generated token (for train.method: kd); none: "
                                                               "not kept")
    constrained_calls: float | None = Field(
        None, gt=0, le=1, description="share of each tool prompt's n samples decoded under a grammar that admits only "
                                      "calls to the offered tools, arguments fitting each tool's JSON Schema (a JSON "
                                      "list of {name, arguments}); the rest are free, so a prompt that needs no call "
                                      "can still be answered. For a teacher that rarely writes a well-formed call; the "
                                      "verifiers still judge every value, and evaluation is never constrained. none: off")
    reproducible: bool | None = Field(
        None, description="samples and evaluation answers that do not depend on how the engine happened to batch "
                          "requests (the machine's load): vLLM's batch-invariant kernels on GPUs; on CPUs an engine "
                          "step loop per replica that queues requests in a fixed order, between steps "
                          "(docs/performance.md has its cost). Same recipe, hardware and replicas: same samples. none "
                          "or false: the engines batch requests as they arrive")

    @model_validator(mode="after")
    def _rounds_need_a_target(self):
        if self.max_rounds > 1 and self.accepted_per_prompt is None:
            raise ValueError("max_rounds > 1 re-samples prompts with too few accepted samples: "
                             "set accepted_per_prompt too")
        return self


class Verifier(Component):
    """A verifier by registered name, with its own keys."""

    name: str = Field(description="a registered verifier (`distill ls`), or a plug-in's dotted name")
    required: bool = Field(True, description="a sample is accepted only if every required verifier passes it")
    threshold: float = Field(1.0, ge=0, le=1, description="the score at or above which this verifier passes a sample")


class Verification(Section):
    """Where verifiers run and how long one verdict may take."""

    workers: int = Field(1, ge=0, description="Ray tasks verifying the sample stage's result batches while the "
                                              "engine generates the next ones; 0: in the run's own process, "
                                              "between batches")
    cpus_per_worker: float = Field(0.25, gt=0, description="Ray CPUs a verification task reserves")
    time_limit_s: float = Field(
        DEFAULT_VERIFY_LIMIT_S, gt=0,
        description="seconds one completion's verdict may take, per verifier, in a worker process that is killed "
                    "when they pass (the verdict is then None, with the reason); math and code keep their own limits")


class Filter(Component):
    """A filter by registered name, with its own keys; filters run in order."""

    name: str = Field(description="a registered filter (`distill ls`), or a plug-in's dotted name")
    mode: Literal["drop", "mark"] = Field("drop", description="drop a flagged row, or keep it and record the verdict")


class Student(Section):
    """The model trained on the kept samples; without it the run makes data only."""

    name: str = Field(min_length=1, description="the published model's name")
    base: str = Field(description="a shipped teacher id, a teacher YAML, or a local model directory")
    commercial_use: bool = Field(True, description="what the licence engine checks the teachers' terms against")
    competing: bool = Field(False, description="the student competes with an API provider whose outputs it learns "
                                               "from (OpenAI's and Gemini's terms forbid that)")
    acknowledge: list[Acknowledgement] = Field(
        [], description="explicit, recorded overrides of licence refusals: each names the rule id it overrides "
                        "(as `distill licence` prints it) and why")
    base_licence: str | None = Field(None, description="licence id of a base given as a local directory; teacher "
                                                       "entries carry their own")
    template: TemplateName = Field(None, description="the chat template the student is trained with and saved with (so it "
                                                   "is served as it learned): a shipped one (hermes) or a Jinja file "
                                                   "relative to the recipe; none: the base model's own")


class Lora(Section):
    """LoRA settings, with train.weights: lora (the adapter is merged into the student)."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scale numerator (alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="module names to adapt, "
                                                                                        "or every linear layer")


class Pairs(Section):
    """How dpo and kto build preference data from the run's own samples: chosen = a sample the
    verifiers accepted, rejected = a failed sample of the same prompt."""

    rule: Literal["hardest", "random", "all"] = Field(
        "hardest", description="hardest: each accepted sample with the failed sample the verifiers scored highest "
                               "(the nearest miss); random: with a failed sample drawn at random; all: every "
                               "accepted x failed pair, up to max_per_prompt")
    max_per_prompt: int = Field(4, ge=1, description="pairs per prompt at most")
    seed: int = Field(0, description="draws the random pairs and which pairs `all` keeps")


class Preference(Section):
    """DPO and KTO settings (TRL's DPOTrainer / KTOTrainer)."""

    beta: float = Field(0.1, gt=0, description="how far the student may move from the reference model")
    loss_type: str = Field("sigmoid", description="DPO's loss (TRL's loss_type: sigmoid, ipo, ...); KTO ignores it")
    sft_steps: int | None = Field(None, ge=1, description="sft+dpo: optimizer steps of its SFT phase (the DPO phase "
                                                          "keeps trl_args.max_steps); none: as train.epochs and "
                                                          "trl_args say")
    learning_rate: float | None = Field(None, gt=0, description="the DPO / KTO phase's peak learning rate "
                                                                "(preference losses want a far smaller one than "
                                                                "SFT: TRL's default is 1e-6); none: "
                                                                "train.learning_rate")


class Kd(Section):
    """Logit distillation from the teacher's stored top-k log-probabilities (sampling.logprobs)."""

    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="between the teacher's and the student's next-token distributions over the "
                                  "teacher's top-k plus one tail bucket")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="the mixture weight of the generalised JSD")
    ce_weight: float = Field(0.5, ge=0, le=1, description="share of the usual cross-entropy on the sampled tokens; "
                                                          "the rest is the divergence")
    temperature: float = Field(1.0, gt=0, description="softens both distributions before the divergence")


class OnPolicy(Section):
    """On-policy distillation: the student generates, the teacher scores its tokens (TRL's GKD)."""

    lmbda: float = Field(0.5, ge=0, le=1, description="share of batches the student generates itself "
                                                      "(the rest use the teacher's samples)")
    beta: float = Field(0.5, ge=0, le=1, description="generalised JSD interpolation: 0 forward KL, 1 reverse KL")
    max_new_tokens: int = Field(128, ge=1, description="tokens the student generates per prompt")
    temperature: float = Field(0.9, gt=0, description="the student's sampling temperature when it generates")


METHODS = ("sft", "dpo", "kto", "sft+dpo", "kd", "on-policy")


class Train(Section):
    """Fine-tuning the student with TRL: supervised on the kept samples, or beyond."""

    method: Literal["sft", "dpo", "kto", "sft+dpo", "kd", "on-policy"] = Field(
        "sft", description="sft: on the accepted samples; dpo / kto: preference pairs from accepted and failed "
                           "samples of one prompt; sft+dpo: sft, then dpo with the sft student as reference; kd: the "
                           "teacher's stored top-k log-probabilities (needs sampling.logprobs); on-policy: the student "
                           "generates and the teacher scores its tokens")
    weights: Literal["full", "lora"] = Field("full", description="train every weight, or a LoRA adapter merged after")
    epochs: float = Field(1.0, gt=0, description="passes over the dataset")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (cosine schedule, 3% warm-up)")
    batch_size: int = Field(8, ge=1, description="rows per device and step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps whose gradients add up before an update")
    max_length: int = Field(1024, ge=16, description="tokens per row; longer samples are cut")
    packing: bool = Field(True, description="several short samples share one row without padding: far fewer "
                                            "wasted tokens")
    seed: int = Field(0, description="the trainer's and the data order's seed")
    save_steps: int = Field(50, ge=1, description="a checkpoint every this many steps: what a killed training "
                                                  "can lose")
    gradient_checkpointing: bool = Field(
        True, description="recompute activations in the backward pass instead of keeping them (TRL's default): "
                          "far less memory, more compute; a small student on short rows trains faster without")
    lora: Lora = Field(Lora(), description="LoRA settings, with weights: lora")
    deepspeed_stage: Literal[0, 2, 3] = Field(0, description="DeepSpeed ZeRO stage on GPUs; 0: none")
    workers: int = Field(1, ge=1, description="1 trains in-process; more are Ray Train data-parallel workers "
                                              "(global batch: batch_size x workers)")
    trl_args: dict[str, Any] = Field({}, description="further arguments of the method's TRL config (SFTConfig, "
                                                     "DPOConfig, ...), passed through unchanged (checked against TRL)")
    pairs: Pairs = Field(Pairs(), description="how dpo, kto and sft+dpo pair the run's samples")
    preference: Preference = Field(Preference(), description="dpo and kto settings")
    kd: Kd = Field(Kd(), description="kd settings")
    on_policy: OnPolicy = Field(OnPolicy(), description="on-policy settings")

    @model_validator(mode="before")
    @classmethod
    def _method_was_weights(cls, data):
        # `method: full` / `method: lora` named the weights before there were other methods.
        if isinstance(data, dict) and data.get("method") in ("full", "lora"):
            data = {**data, "method": "sft", "weights": data["method"]}
        return data

    @model_validator(mode="after")
    def _lora_not_on_sharded_weights(self):
        if self.weights == "lora" and self.deepspeed_stage == 3:
            # Merging an adapter into ZeRO-3 shards would write a broken student.
            raise ValueError("LoRA with deepspeed_stage 3 is not supported: use deepspeed_stage 2, or method: full")
        return self


class ProbeSpec(Component):
    """A probe by registered name (`distill ls`), with its own keys: a fixed set of prompts that
    shows what the student lost or inherited beside its task score."""

    name: str = Field(description="a registered probe: ifbench, harmbench, do-not-answer, over-refusal, bias, "
                                  "humaneval, bfcl, custom (`distill ls`), or a plug-in's dotted name")
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                              description="its name in eval.json, the card and gate metrics; none: the probe's name")
    limit: int | None = Field(None, ge=1, description="at most this many of its items, drawn with `seed`; none: all")
    seed: int = Field(0, description="draws the limited subset: the same seed, the same items")
    max_tokens: int | None = Field(None, ge=1, description="tokens an answer may take; none: the probe's own "
                                                           "default, else sampling.max_tokens")

    @property
    def key(self) -> str:
        return self.label or self.name


class GateCondition(Section):
    """One condition a student must meet to be promoted: a metric of the student against the
    teacher's or the base model's, or against a fixed number."""

    metric: str = Field(description="task.pass@1, task.pass@k, task.greedy_accuracy, or <probe label>.<metric> "
                                    "(e.g. ifbench.prompt_accuracy)")
    vs: Literal["teacher", "base"] | None = Field(None, description="the model the student is compared with; "
                                                                    "none: a fixed bound (at_least / at_most)")
    min_ratio: float | None = Field(None, ge=0, description="student >= min_ratio x the other model's value")
    max_drop: float | None = Field(None, ge=0, description="student >= the other model's value - max_drop")
    max_rise: float | None = Field(None, ge=0, description="student <= the other model's value + max_rise")
    at_least: float | None = Field(None, description="student >= at_least")
    at_most: float | None = Field(None, description="student <= at_most")

    @model_validator(mode="after")
    def _one_bound(self):
        bounds = [k for k in ("min_ratio", "max_drop", "max_rise", "at_least", "at_most") if getattr(self, k) is not None]
        if len(bounds) != 1:
            raise ValueError("give exactly one of min_ratio, max_drop, max_rise (with vs) or at_least, at_most")
        relative = bounds[0] in ("min_ratio", "max_drop", "max_rise")
        if relative and self.vs is None:
            raise ValueError(f"{bounds[0]} compares with another model: add vs: teacher or vs: base")
        if not relative and self.vs is not None:
            raise ValueError(f"{bounds[0]} is a fixed bound: remove vs")
        if "." not in self.metric:
            raise ValueError("metric is task.<score> or <probe label>.<metric>, e.g. task.pass@1")
        return self


class Eval(Section):
    """Teacher and student on the held-out prompts, scored by the same verifiers."""

    k: int = Field(4, ge=1, description="sampled answers per held-out prompt, for pass@1 and pass@k")
    max_prompts: int | None = Field(None, ge=1, description="evaluate the first this many held-out prompts; none: all")
    price_per_mtok: dict[str, float] = Field({}, description="price per 1M output tokens per model id, for the "
                                                             "cost per correct answer; unset: parameters as the proxy")
    require_teacher_probes: bool = Field(False, description="`distill run` refuses to start until `distill "
                                                             "probe-teacher` has probed this teacher's safety and bias")
    probes: list[ProbeSpec] = Field([], description="capability and safety probes, each answered by the teacher, "
                                                    "the student's base and the student with the same sampling "
                                                    "settings and shown side by side on the card")


class Tracking(Section):
    """Experiment tracking with wandb."""

    wandb: Literal["auto", "offline", "online", "disabled"] = Field(
        "auto", description="auto: online when logged in to wandb (an API key is set), else offline; offline keeps "
                            "everything in the run directory and sends nothing")
    project: str = Field("distill", description="the wandb project")
    entity: str | None = Field(None, description="the wandb team or user; none: the default")
    init_timeout_s: float = Field(
        10, gt=0, description="seconds wandb may take to start a run; online runs past it continue offline in the run "
                              "directory (`wandb sync` uploads them later), so an unreachable server does not hold up "
                              "the run for long")


class Cluster(Section):
    """Where the run's Ray work goes."""

    address: str | None = Field(None, description="a Ray cluster's address; none: a local Ray started for the run")
    replicas: int = Field(1, ge=1, description="vLLM engine replicas sharing the prompt stream")
    cpus_per_replica: float = Field(1, gt=0, description="Ray CPUs each engine replica reserves")
    resources_per_replica: dict[str, float] = Field(
        {}, description="custom Ray resources each replica needs besides its CPUs/GPUs, to keep engines on the "
                        "nodes that offer them, e.g. {teacher_node: 1}")
    accelerator_type: str | None = Field(None, description="a Ray accelerator type for engines and training "
                                                           "workers, e.g. A100")
    wait_for_replicas_s: float | None = Field(
        None, gt=0, description="seconds to wait for every replica to start before the first prompt; the run fails "
                                "if they do not; none: work starts on the first engine up")


class Recipe(Section):
    """A distill recipe: one YAML file drives every stage."""

    name: str = Field(max_length=100, description="names the run directory: letters, digits, '.', '_', '-'")
    teacher: TeacherRef = Field(description="the teacher: an id or path, or {id, engine_args}")
    prompts: Prompts = Field(description="the prompt sources")
    sampling: Sampling = Field(Sampling(), description="how the teacher samples")
    verifiers: list[Verifier] = Field([], description="scored on every sample; every verdict is recorded")
    verification: Verification = Field(Verification(), description="where verifiers run, and their time limit")
    filters: list[Filter] = Field([], description="run in order over the accepted samples")
    student: Student | None = Field(None, description="the model to train; none: a data-only run")
    train: Train = Field(Train(), description="how the student is trained")
    eval: Eval = Field(Eval(), description="how teacher and student are evaluated")
    gate: list[GateCondition] = Field([], description="conditions the student must meet to be promoted; a held "
                                                     "student's card says so, and `distill gate RUN_DIR` exits 1")
    tracking: Tracking = Field(Tracking(), description="experiment tracking")
    cluster: Cluster = Field(Cluster(), description="Ray cluster placement")
    output_dir: str = Field("runs", description="where run directories go: a path, or a bucket URI (s3://, gs://)")

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
        if self.teacher.template and self._teacher.template != self.teacher.template:
            self._teacher = self._teacher.model_copy(update={"template": self.teacher.template})
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
        data["eval"]["probes"] = [_resolved(p, "name") for p in self.eval.probes]
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
        keys = ("teacher", "prompts", "sampling", "verifiers", "verification")
        return self._hash({k: data[k] for k in keys if k in data})

    def _hash(self, data: dict) -> str:
        data = dict(data)
        # Where a run is tracked, placed and written does not change what it makes: the same
        # recipe has the same run id on a laptop and as a cluster job.
        for key in ("tracking", "cluster", "output_dir"):
            data.pop(key, None)
        # Where verification runs does not change a verdict; a time limit other than the default can.
        limit = (data.pop("verification", None) or {}).get("time_limit_s", DEFAULT_VERIFY_LIMIT_S)
        if limit != DEFAULT_VERIFY_LIMIT_S:
            data["verification"] = {"time_limit_s": limit}
        # Keys added at their default leave the hash as it was, so earlier runs keep their ids.
        if data.get("prompts", {}).get("bad_rows") == "fail":
            data["prompts"] = {k: v for k, v in data["prompts"].items() if k != "bad_rows"}
        data = _without_unset(data, ADDED_UNSET)
        train = data.get("train")
        if isinstance(train, dict) and train.get("method") == "sft":  # added later: sft runs keep their ids
            train = {k: v for k, v in train.items() if k not in ("pairs", "preference", "kd", "on_policy")}
            train["method"] = train.pop("weights")  # as written before there were other methods
            data["train"] = train
        if not data.get("gate"):  # added later: an empty gate leaves the hash as it was
            data.pop("gate", None)
        if isinstance(data.get("eval"), dict):  # added later; a check before the run changes no output
            data["eval"] = {k: v for k, v in data["eval"].items()
                            if k != "require_teacher_probes" and not (k == "probes" and not v)}
        # The teacher entry itself (model, revision, serving), not only its id: re-pinning a
        # revision must not resume a run made with the old weights.
        entry = self.teacher_entry.model_dump(mode="json")
        if entry.get("endpoint"):  # where and what is served decides the samples; rate limits do not
            entry["endpoint"] = {k: entry["endpoint"][k] for k in ("base_url", "model")}
        if entry.get("backend") is None:  # the default backend: the same runs as entries without the key
            entry.pop("backend", None)
        for key in ("template", "replay"):  # keys added later: unset, they leave the hash as it was
            if entry.get(key) is None:
                entry.pop(key, None)
        data["teacher_entry"] = entry
        data["sources_sha256"] = [
            getattr(c.params, "content_sha256", None) for c in self.prompts.train + self.prompts.eval
        ]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


# Keys added after runs were made, by where they sit; unset (None) they leave a recipe's hash as it was.
ADDED_UNSET = {("teacher", "template"), ("sampling", "constrained_calls"), ("sampling", "logprobs"),
               ("sampling", "reproducible"), ("student", "template"), ("prompts", "train", "*", "messages_field"),
               ("prompts", "train", "*", "tools_field"), ("prompts", "train", "*", "category_field"),
               ("prompts", "eval", "*", "messages_field"), ("prompts", "eval", "*", "tools_field"),
               ("prompts", "eval", "*", "category_field"), ("train", "preference", "sft_steps"),
               ("train", "preference", "learning_rate")}


def _without_unset(data: Any, paths: set[tuple], at: tuple = ()) -> Any:
    """`data` without the keys at `paths` ("*": every list item) whose value is None."""
    if isinstance(data, list):
        return [_without_unset(v, paths, at + ("*",)) for v in data]
    if not isinstance(data, dict):
        return data
    return {k: _without_unset(v, paths, at + (k,)) for k, v in data.items()
            if not (v is None and at + (k,) in paths)}


def _resolved(component: Component, key: str) -> dict[str, Any]:
    fixed = {k: v for k, v in component.model_dump(mode="json").items() if k in type(component).model_fields}
    return {**fixed, key: getattr(component, key), **component.params.model_dump(mode="json")}
