"""The serving config (`distill serve CONFIG`): the classifier that routes requests, the large
model behind an OpenAI-compatible API as the fallback, the students that own clusters, limits,
the client key and where the served calls are logged.

Read like a recipe: unknown keys are errors, and every problem is reported at once with the file,
the dotted key, the bad value and what to write instead (distill.problems). `starting_config`
writes a first config from `distill usage convert`'s convert.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from distill.problems import Problem, RecipeError, RecipeLoader, problems_from, yaml_error
from distill.schema import Strict
from distill.teachers import Endpoint

Policy = Literal["student", "cascade", "llm"]
VerifierName = Literal["tool-call", "json", "none"]
# convert's task types and the check a cascade runs on a student's answer for them
# (distill.usage.plan chooses the recipe's verifier from the same task types).
TASK_VERIFIERS = {"tool call": "tool-call", "extraction": "json"}


class ConfigError(RecipeError):
    """A serving config with problems; str() lists each as `file: key: message`."""


class Fallback(Strict):
    """The large model: any OpenAI-compatible chat-completions API (a served teacher, a hosted API)."""

    base_url: str = Field(description="the API root, e.g. https://api.openai.com/v1 or http://host:8000/v1; "
                                      "/chat/completions is added")
    model: str = Field(description="the model name sent upstream; the `model` field of its answers")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the upstream key "
                                                      "(sent as a bearer token, never logged); None: no key")
    # A long tool-calling answer from a hosted model takes tens of seconds; past this the call fails (504).
    timeout_seconds: float = Field(60, gt=0, description="seconds before an upstream call is given up")

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:  # the same rules as a teacher's endpoint
            return Endpoint(base_url=url).base_url
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


class Student(Strict):
    """A small model that owns one cluster of requests."""

    cluster: str = Field(description="the classifier's cluster id whose requests this student answers")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the `model` field of its answers and its name in x-distill-route")
    model: str = Field(description="a local model directory (a run's student/ folder) or a shipped base id "
                                   "(`distill ls teachers`); a relative path is relative to this file")
    template: str | None = Field(None, description="chat template it was trained with: a shipped name (hermes) or a "
                                                   "Jinja file; None: the model's own (a run's student/ keeps it)")
    policy: Policy = Field("cascade", description="student: its answer is returned; cascade: returned only when it "
                                                  "passes the verifier, else the fallback answers; llm: the fallback "
                                                  "answers")
    # A tool-calling student's answers are checked by default: a broken call costs the agent a turn.
    verifier: VerifierName = Field("none", description="the check of a cascade: tool-call (the calls parse, name "
                                                       "known tools and fit their schemas), json (an object), none")
    # A request the classifier placed by a weak margin is the kind a student was not trained on.
    min_confidence: float = Field(0.0, ge=0, le=1, description="routing confidence below which the fallback "
                                                               "answers instead")
    max_tokens: int = Field(512, ge=1, description="the most tokens it writes (a request's own max_tokens, when "
                                                   "lower, wins)")
    # A 135M model on 2 CPU cores writes ~100 tokens in a few seconds; a longer wait means it is stuck or queued.
    timeout_seconds: float = Field(30, gt=0, description="seconds before its answer is given up and the fallback "
                                                         "answers")
    examples: str | None = Field(None, description="a JSON file of example turns (user/assistant) put after the "
                                                   "system turn of every request, as for a base promoted few-shot; "
                                                   "relative to this file")
    replicas: int = Field(1, ge=1, description="Ray Serve replicas of its engine")
    engine_args: dict = Field({}, description="vLLM engine arguments over the CPU/GPU defaults (e.g. max_model_len)")


class Limits(Strict):
    # Concurrent requests a router replica takes before it answers 429: its students' queues stay short.
    max_concurrency: int = Field(64, ge=1, description="requests in flight per router replica; more get 429")
    # An agent's long conversation with tool results is tens of kB; 1 MB leaves room and stops abuse.
    max_request_bytes: int = Field(1_000_000, ge=1, description="largest request body; larger gets 413")
    timeout_seconds: float = Field(120, gt=0, description="a whole request's time (student, check and fallback); "
                                                          "past it the client gets 504")


class Breaker(Strict):
    """A student that keeps failing (errors, timeouts) is bypassed for a while, then tried once."""

    failures: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    open_seconds: float = Field(30, gt=0, description="seconds the breaker stays open before one trial request")


class ServeConfig(Strict):
    classifier: str | None = Field(None, description="the saved request classifier (RequestClassifier.save); "
                                                     "required when there are students")
    fallback: Fallback
    students: list[Student] = Field([], description="the students and the clusters they own")
    limits: Limits = Limits()
    breaker: Breaker = Breaker()
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key clients "
                                                      "must send as a bearer token; None: no key")
    log_dir: str | None = Field("served", description="folder of the served-call log (served-*.jsonl, the openai "
                                                      "format `distill usage import` reads); None: no log")

    @model_validator(mode="after")
    def _students(self) -> ServeConfig:
        for key, seen in (("cluster", set()), ("name", set())):
            for s in self.students:
                value = getattr(s, key)
                if value in seen:
                    raise ValueError(f"two students with {key} {value!r}; one student per {key}")
                seen.add(value)
        if self.students and not self.classifier:
            raise ValueError("students need a classifier to route requests to them: give `classifier:`")
        if self.fallback.model in {s.name for s in self.students}:
            raise ValueError(f"fallback.model {self.fallback.model!r} is also a student's name; the `model` field "
                             "must tell them apart")
        return self

    def student(self, cluster: str | None) -> Student | None:
        return next((s for s in self.students if s.cluster == cluster), None)


def _resolve_model(ref: str, base: Path) -> str:
    """A local model directory (absolute) or a shipped base id; ValueError saying what exists."""
    from distill.teachers import catalog

    local = Path(ref) if Path(ref).is_absolute() else base / ref
    if (local / "config.json").is_file():
        return str(local.resolve())
    if ref in catalog():
        return ref
    raise ValueError(f"neither a model directory (no {local}/config.json) nor a shipped base "
                     f"({', '.join(sorted(catalog()))})")


def load_config(path: str | Path) -> ServeConfig:
    """Parse and check a serving config; raises ConfigError listing every problem found.
    Paths in it (classifier, models, templates, log_dir) become absolute, relative to the file."""
    from distill import chat_templates
    from distill.usage.classifier import ClassifierError, RequestClassifier

    path = Path(path)
    file = str(path)
    try:
        data = yaml.load(path.read_text(), Loader=RecipeLoader)
    except FileNotFoundError:
        raise ConfigError(file, [Problem("(file)", "no such file; write one (docs/serving.md), or make one from a "
                                                   "conversion: distill usage serve-config DIR --fallback-url URL "
                                                   "--fallback-model MODEL")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, [Problem("(file)", f"cannot read: {e}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError(file, [Problem("(file)", f"not valid YAML: {yaml_error(e)}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(file, [Problem("(top level)", "a serving config is a mapping (classifier, fallback, "
                                                        "students, limits, ...)")])
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(file, problems_from(e, ServeConfig)) from None

    base, problems = path.parent, []
    updates: dict = {}
    if config.classifier:
        where = Path(config.classifier) if Path(config.classifier).is_absolute() else base / config.classifier
        try:
            classifier = RequestClassifier.load(where)
        except ClassifierError as e:
            problems.append(Problem("classifier", str(e)))
        else:
            updates["classifier"] = str(where.resolve())
            for i, s in enumerate(config.students):
                if s.cluster not in classifier.answers:
                    problems.append(Problem(f"students[{i}].cluster", f"{s.cluster!r}: the classifier never answers "
                                            f"it; its clusters: {', '.join(classifier.answers) or 'none'}"))
    students = []
    for i, s in enumerate(config.students):
        update = {}
        try:
            update["model"] = _resolve_model(s.model, base)
        except ValueError as e:
            problems.append(Problem(f"students[{i}].model", f"{s.model!r}: {e}"))
        if s.template is not None:
            try:
                t = chat_templates.resolve(s.template, base)
                update["template"] = t.name if s.template in chat_templates.NAMES else str((base / s.template).resolve())
            except ValueError as e:
                problems.append(Problem(f"students[{i}].template", str(e)))
        if s.examples is not None:
            where = base / s.examples
            try:
                turns = json.loads(where.read_text())
                if not isinstance(turns, list) or not all(isinstance(t, dict) and t.get("role") in ("user", "assistant")
                                                          for t in turns):
                    raise ValueError("not a JSON list of user and assistant turns")
                update["examples"] = str(where.resolve())
            except (OSError, ValueError) as e:
                problems.append(Problem(f"students[{i}].examples", f"{s.examples!r}: {e}"))
        if s.policy == "cascade" and s.verifier == "none":
            problems.append(Problem(f"students[{i}].verifier", "a cascade checks the student's answer: give tool-call "
                                                               "or json, or make the policy student"))
        students.append(s.model_copy(update=update))
    if problems:
        raise ConfigError(file, problems)
    updates["students"] = students
    if config.log_dir:
        updates["log_dir"] = str((base / config.log_dir).resolve())
    return config.model_copy(update=updates)


def starting_config(convert_json: str | Path, classifier: str, fallback: dict) -> dict:
    """A first serving config from `distill usage convert`'s result: a cascade student for every
    cluster it promoted (its fine-tuned student, or the base that passed as it is), the others left
    to the fallback. Returns the mapping; `write_starting_config` writes it as YAML."""
    result = json.loads(Path(convert_json).read_text())
    if result.get("kind") != "distill usage convert":
        raise ValueError(f"{convert_json}: not a convert.json (no kind 'distill usage convert'); give the file "
                         "`distill usage convert` wrote in its plan folder")
    students, notes = [], []
    for c in result.get("clusters", []):
        decision = c.get("decision")
        verifier = TASK_VERIFIERS.get(c.get("task_type"), "none")
        entry = {"cluster": c["id"], "policy": "cascade" if verifier != "none" else "student", "verifier": verifier}
        if decision == "promote-student" and c.get("student"):
            st = c["student"]
            students.append({**entry, "name": st["name"], "model": str(Path(st["run_dir"]) / "student")})
        elif decision == "promote-base":
            base = next((b for b in c.get("baselines", []) if c["model"].startswith(b["model"])), None)
            if base is None:
                notes.append(f"{c['id']}: promote-base {c['model']!r}, but no baseline names it; left to the fallback")
                continue
            shown = {}
            if base.get("shots") and base.get("examples"):  # served with the examples it passed with
                shown = {"examples": base["examples"]}
            elif base.get("shots"):  # a convert.json written before the examples were kept
                notes.append(f"{c['id']}: {base['model']} passed {base['shots']}-shot, but convert.json does not say "
                             "which examples; it is served zero-shot here, so check it before relying on it")
            students.append({**entry, "name": f"{base['model']}-{c['id']}", "model": base["model"],
                             **({"template": "hermes"} if verifier == "tool-call" else {}), **shown})
        else:
            notes.append(f"{c['id']}: {decision}; the fallback answers it")
    config = {"classifier": str(classifier), "fallback": fallback, "students": students,
              "limits": Limits().model_dump(), "breaker": Breaker().model_dump(), "api_key_env": None,
              "log_dir": "served"}
    ServeConfig.model_validate(config)  # a starting config that does not load is a bug here
    return {"config": config, "notes": notes}


def write_starting_config(convert_json: str | Path, out: str | Path, classifier: str, fallback: dict) -> list[str]:
    """Writes the starting config to `out`, each cluster's decision as a comment; returns the notes."""
    made = starting_config(convert_json, classifier, fallback)
    header = [f"# distill serve config, written from {convert_json}", f"# start it with: distill serve {out}"]
    header += [f"# {n}" for n in made["notes"]]
    Path(out).write_text("\n".join(header) + "\n" + yaml.safe_dump(made["config"], sort_keys=False))
    return made["notes"]
