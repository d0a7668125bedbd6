"""A conversion plan for a log store (issue 21, step 4): per task cluster, whether it is worth
turning into a small model, and for each one that is, a runnable recipe.

A cluster is chosen when its answers have a shape a verifier can check, failed calls do not
dominate it, enough usable calls remain (ok, not duplicates, from a logged model whose licence is
known), free text is not too long and varied to check, and the licence engine allows the recipe:
the logged model counts as a teacher, since its answers are the references (the prompt files
carry its terms as their licence, so `distill licence RECIPE` judges them as its outputs).

The targets a student learns are the logged answers themselves (`--targets logged`, the default):
the recipe's teacher is an entry that replays them (OUT/<cluster>/logged.yaml, `replay:`), so
the student is trained on what the logged model answered and scored against it on the held-out
calls. `--targets teacher` names a teacher entry that relabels the prompts instead, and the
verifier keeps the samples that agree with the logged answers. Layout under OUT (the plan owns
the folders it lists in plan.json):

    OUT/plan.json                     every cluster: chosen or not, why, and what was written
    OUT/<cluster>/<student>-from-<teacher>.yaml, train.jsonl, heldout.jsonl (and logged.yaml)
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from distill import storage
from distill.lineage import code_version
from distill.usage.openai_log import STUDENT
from distill.usage import export
from distill.usage.catalogues import candidates, logged_licence, model_key, parse_overrides
from distill.usage.recipe_writer import Draft, PromptFile, render
from distill.usage.store import StoreError, UsageStore

KIND = "distill usage plan"
PLAN_FILE = "plan.json"
COLUMNS = ["call_id", "timestamp", "model", "response_model", "prompt", "completion", "tools", "status", "duplicate",
           "prompt_tokens", "completion_tokens"]
DEFAULT_TEACHER = "smollm2-135m-instruct"  # runs on a CPU; --teacher names a stronger one
VERIFIER_NOTES = {
    "tool call": "tool-call: the teacher's calls against the logged calls (names, arguments, no call)",
    "extraction": "match (json): every field of the logged JSON object, exactly",
    "classification": "match (text): the logged label, case and surrounding quotes aside",
    "free text": "judge against the logged answer",
}


class PlanError(Exception):
    """A setting or output folder the plan cannot use; the message says what to give instead."""


@dataclass
class Settings:
    min_calls: int = 50  # usable calls below which a small model has too little to learn from
    heldout: float = 0.1  # share of a cluster's rows held out for the evaluation
    split: str = "time"  # time: the latest calls are held out; random: a seeded sample
    seed: int = 0
    targets: str = "logged"  # logged: train on the logged answers (replayed); teacher: relabel with --teacher
    teacher: str = DEFAULT_TEACHER
    max_train: int | None = None  # at most this many training calls per cluster (a seeded sample), None: all
    max_heldout: int | None = None  # at most this many held-out calls per cluster, None: all
    max_train_tokens: int | None = None  # at most about this many tokens of training calls per cluster, None: no bound
    student: str | None = None  # None: the first shipped base that fits the task
    judge: str | None = None  # None: the logged model's teacher entry, else the teacher
    logged_licence: list[str] = field(default_factory=list)  # [MODEL=]LICENCE
    max_failed: float = 0.5  # share of failed calls above which the agent's use of the task is broken
    max_answer_words: int = 40  # free text whose median answer is longer (and whose answers differ) is too varied
    key: str | None = "workload_id"  # the tag a clustering made now groups by


def check(settings: Settings) -> None:
    """Every setting the plan needs, checked before anything is read or written. Raises PlanError."""
    from distill.licensing import UnknownLicence, shipped
    from distill.models import resolve_base
    from distill.teachers import load_teacher

    s = settings
    if not 0 < s.heldout < 1:
        raise PlanError(f"--heldout {s.heldout}: give a share between 0 and 1, e.g. 0.1")
    if s.split not in ("time", "random"):
        raise PlanError(f"--split {s.split!r}: give time (the latest calls held out) or random")
    if s.targets not in ("logged", "teacher"):
        raise PlanError(f"--targets {s.targets!r}: give logged (train on the logged answers) or teacher (relabel "
                        "them with --teacher)")
    for name, value in (("--max-train", s.max_train), ("--max-heldout", s.max_heldout),
                        ("--max-train-tokens", s.max_train_tokens)):
        if value is not None and value < 1:
            raise PlanError(f"{name} {value}: give at least 1, or leave it out for every call")
    if s.min_calls < 2:
        raise PlanError(f"--min-calls {s.min_calls}: give at least 2 (one to train on, one to hold out)")
    try:
        for ref in [s.teacher] + ([s.judge] if s.judge else []):
            load_teacher(ref)
        if s.student:
            resolve_base(s.student, Path.cwd())
        pairs, fallback = parse_overrides(s.logged_licence)
        for licence in [lic for _, lic in pairs] + ([fallback] if fallback else []):
            shipped().get(licence)
    except UnknownLicence as e:
        raise PlanError(f"--logged-licence: {e}") from None
    except ValueError as e:
        raise PlanError(str(e)) from None


def _clusters(uri: str, store: UsageStore, calls: list[dict], key: str | None) -> tuple[dict, dict[str, str], bool]:
    """(report, call -> cluster, clustered now): the stored clustering when it covers every call."""
    import json

    assignments = store.read_assignments()
    if store.clusters_path.exists() and all(c["call_id"] in assignments for c in calls):
        try:
            return json.loads(store.clusters_path.read_text()), assignments, False
        except (OSError, ValueError):
            pass  # unreadable: cluster again
    from distill.usage.clusters import cluster_store

    clustering = cluster_store(uri, key)
    return clustering.report, clustering.assignments, True


def _judge(settings: Settings, models: list[str]) -> tuple[str, str]:
    """The judge's teacher entry and why it is that one."""
    from distill.teachers import catalog, load_teacher

    if settings.judge:
        return settings.judge, f"judged by {settings.judge} (--judge)"
    for tid in catalog():
        entry = load_teacher(tid)
        if any(model_key(m) in (tid, model_key(entry.model)) for m in models):
            return tid, f"judged by {tid}, the logged model's teacher entry"
    return settings.teacher, (f"judged by the teacher {settings.teacher}, as no teacher entry serves the logged model "
                              f"({', '.join(models)}); a small judge is weak: pass --judge ID")


def _too_varied(rows: list[dict], settings: Settings) -> str | None:
    words = [len(str(r["reference"]).split()) for r in rows]
    distinct = len({r["reference"] for r in rows}) / len(rows)
    median = statistics.median(words)
    if median > settings.max_answer_words and distinct > 0.5:
        return (f"too varied: free-text answers of {median:.0f} words (median), {distinct:.0%} of them distinct, above "
                f"{settings.max_answer_words} words: too long and diverse for a small model to match or a judge to check")
    return None


def assess(cluster: dict, calls: list[dict], settings: Settings) -> dict:
    """One cluster's entry of the plan without the recipe: its numbers and every reason it is not
    worth converting (none: chosen, subject to the licence). `_rows` holds its prompt rows."""
    pairs, fallback = parse_overrides(settings.logged_licence)
    task = cluster["task_type"]
    failed = sum(c["status"] not in ("ok", STUDENT) for c in calls)  # a student's answer is no failure
    models: dict[str, dict] = {}
    for c in calls:
        name = c["model"] or c["response_model"] or "(not logged)"
        if name not in models:
            licence, source = logged_licence(name, pairs, fallback)
            models[name] = {"model": name, "calls": 0, "licence": licence, "licence_from": source}
        models[name]["calls"] += 1
    def model_of(c: dict) -> dict:
        return models[c["model"] or c["response_model"] or "(not logged)"]

    known = [c for c in calls if model_of(c)["licence"]]
    licence_of = {c["call_id"]: model_of(c)["licence"] for c in known}
    rows = export.export_rows(known, task) if task in VERIFIER_NOTES else []
    for r in rows:
        r["_licence"] = licence_of[r["call_id"]]
    reasons, notes = [], []
    if task not in VERIFIER_NOTES:
        reasons.append("no checkable answers: they are neither tool calls, JSON, labels nor text")
    if calls and failed / len(calls) > settings.max_failed:
        reasons.append(f"failed calls dominate: {failed} of {len(calls)} ({failed / len(calls):.0%}) failed, above "
                       f"{settings.max_failed:.0%}")
    unknown = [m for m in models.values() if m["licence"] is None]
    for m in unknown:  # all unknown: nothing to convert; some: the rest is, without them
        text = f"{m['model']} ({m['calls']} calls): {m['licence_from']}"
        if len(unknown) == len(models):
            reasons.append(text)
        else:
            notes.append(f"left out {text}")
    if len(unknown) < len(models) and task in VERIFIER_NOTES and len(rows) < settings.min_calls:
        reasons.append(f"too few calls: {len(rows)} usable (answered, not failed, not duplicates"
                       + (", of a model whose licence is known" if unknown else "") + f"), the minimum is {settings.min_calls} (--min-calls)")
    if task == "free text" and rows and not reasons:
        if varied := _too_varied(rows, settings):
            reasons.append(varied)
    return {"id": cluster["id"], "label": cluster["label"], "task_type": task, "calls": len(calls), "failed": failed,
            "usable": sum(map(export.usable, calls)), "logged_models": list(models.values()), "chosen": False, "reasons": reasons,
            "notes": notes, "_rows": rows}


def _student(settings: Settings, task: str) -> tuple[str | None, list[str], str]:
    """(student base, the shipped bases that fit, why that one)."""
    fits = [b.id for b in candidates(task)]
    if settings.student:
        return settings.student, fits, "--student"
    if not fits:
        return None, fits, "no shipped base fits the task"
    return fits[0], fits, "the first shipped base that fits the task (distill/usage/bases.yaml)"


def _decide(path: Path):
    """The licence decision `distill licence` prints for the recipe at `path`."""
    from distill.recipe import load_recipe
    from distill.recipe.licence import decide_for_recipe

    return decide_for_recipe(load_recipe(path))


def _logged_teacher(entry: dict, folder: Path, models: list[str], licences: list[str]) -> str:
    """Writes OUT/<cluster>/logged.yaml, a teacher entry that replays the logged answers of the
    cluster's prompt files; returns the name the recipe gives it."""
    import yaml

    licence = max(licences, key=[m["licence"] for m in entry["logged_models"] if m["licence"]].count)
    data = {"id": f"logged-{entry['id']}", "model": ", ".join(models), "revision": "logged", "licence": licence,
            "chat_template": "none: the logged answers are replayed, not generated",
            "replay": {"files": [p.name for p in sorted(folder.glob("*.jsonl"))], "messages_field": "messages",
                       "tools_field": "tools", "answer_field": "logged"}}
    header = (f"# The answers {', '.join(models)} gave to the calls of cluster {entry['id']}, as logged and redacted,\n"
              "# replayed as a teacher's: the student learns them, and they are what it is scored against.\n")
    storage.write_text(folder / "logged.yaml", header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return "logged.yaml"


def write_cluster(entry: dict, folder: Path, settings: Settings, final: Path) -> None:
    """Writes the cluster's prompt files and recipe into `folder` (moved to `final` if chosen) and runs the licence engine on it;
    fills the entry (chosen, or the refusal and its clause among the reasons)."""
    from distill.problems import RecipeError

    task, rows = entry["task_type"], entry["_rows"]
    stratify = task == "tool call"
    train, held = export.split(rows, settings.heldout, settings.split, settings.seed, stratify=stratify)
    train = export.cap(train, settings.max_train, settings.seed, stratify, settings.max_train_tokens)
    held = export.cap(held, settings.max_heldout, settings.seed, stratify)
    licences = sorted({r["_licence"] for r in rows})
    files = []
    for licence in licences:  # one file per logged licence: a source has one licence
        suffix = "" if len(licences) == 1 else f"-{licence}"
        for split_name, part, stem in (("train", train, "train"), ("eval", held, "heldout")):
            if chosen := [r for r in part if r["_licence"] == licence]:
                export.write_rows(folder / f"{stem}{suffix}.jsonl", chosen)
                files.append(PromptFile(split_name, f"{stem}{suffix}.jsonl", licence))
    student, fits, student_from = _student(settings, task)
    if student is None:
        entry["reasons"].append("no student base: no shipped base's chat template fits the task; pass --student")
        return
    models = [m["model"] for m in entry["logged_models"] if m["licence"]]
    if task == "tool call":
        verifier, note = {"name": "tool-call"}, VERIFIER_NOTES[task]
    elif task == "classification":
        verifier, note = {"name": "match"}, VERIFIER_NOTES[task]
    elif task == "extraction":
        verifier, note = {"name": "match", "mode": "json"}, VERIFIER_NOTES[task]
    else:
        judge, why = _judge(settings, models)
        verifier, note = {"name": "judge", "model": judge}, f"{VERIFIER_NOTES[task]}; {why}"
    if settings.targets == "logged":
        teacher, teacher_name = _logged_teacher(entry, folder, models, licences), "logged"
        targets = (f"the logged answers of {', '.join(models)}, replayed by logged.yaml: the student learns them and is "
                   "scored against them")
    else:
        teacher = teacher_name = settings.teacher
        targets = (f"relabelled: the teacher {settings.teacher} answers each logged request and the verifier keeps the "
                   f"answers that agree with the logged ones ({', '.join(models)})")
    held_how = ("the latest" if settings.split == "time" else f"a random (seed {settings.seed})") + \
        f" {settings.heldout:.0%}" + (" of each tool's calls" if stratify else " of the calls")
    capped = [f"{name} capped at {n}" for name, n in (("training calls", settings.max_train),
                                                    ("training tokens", settings.max_train_tokens),
                                                    ("held-out calls", settings.max_heldout)) if n is not None]
    short = student.rsplit("/", 1)[-1].removesuffix(".yaml")
    recipe_name = f"{short}-from-{teacher_name}.yaml"
    draft = Draft(entry["id"], task, teacher, student, f"{short}-{entry['id']}", verifier, files,
                  with_tools=any(r["tools"] for r in rows), replayed=settings.targets == "logged",
                  train_rows=len(train), header=[
                      f"Cluster {entry['id']}" + ("" if entry["label"] == entry["id"] else f" ({entry['label']})") + f": {task}, {len(rows)} usable logged calls of "
                      f"{', '.join(models)}; written by `distill usage plan`.",
                      f"Prompts: train.jsonl ({len(train)}) and heldout.jsonl ({len(held)}: {held_how}"
                      + (f"; {', '.join(capped)}, a seeded sample" if capped else "") + ").",
                      f"Targets: {targets}.", f"Verifier: {note}.",
                      f"Licence: the prompt files carry the logged model's terms ({', '.join(licences)}).",
                      f"Run:  distill run {final / recipe_name}"])
    path = folder / recipe_name
    try:
        storage.write_text(path, render(draft))
        decision = _decide(path)
        prefix = [i for i in decision.refusals if i.rule.endswith(":name-prefix")]
        if prefix and decision.name_prefix:  # a name the terms demand is no reason to drop the cluster
            draft.student_name = f"{decision.name_prefix.replace(' ', '-')}-{draft.student_name}"
            storage.write_text(path, render(draft))
            decision = _decide(path)
    except RecipeError as e:
        entry["reasons"].append("the written recipe does not validate: " + "; ".join(p.render(e.file) for p in e.problems))
        return
    entry["licence"] = {"verdict": decision.verdict,
                        "student_licence": decision.student_licence.license if decision.student_licence else None,
                        "issues": [{"rule": i.rule, "message": i.message, "citations": i.citations}
                                   for i in decision.issues],
                        "obligations": [f"{o.what} ({o.citation})" for o in decision.obligations if not o.routine]}
    for issue in decision.refusals:
        entry["reasons"].append(f"licence refused ({issue.rule}): {issue.message} [{'; '.join(issue.citations)}]")
    entry.update(recipe=f"{entry['id']}/{path.name}", train=len(train), heldout=len(held), split=held_how,
                 verifier=verifier["name"], verifier_note=note, teacher=teacher, targets=targets,
                 student=student, student_from=student_from, candidates=fits, chosen=not entry["reasons"])


def _previous(out: Path) -> set[str]:
    """The cluster folders an earlier plan wrote into `out`: the only ones a plan replaces."""
    import json

    try:
        return {c["id"] for c in json.loads((out / PLAN_FILE).read_text())["clusters"] if c.get("chosen")}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def plan_store(uri: str, out: str | Path, settings: Settings | None = None) -> dict:
    """Plans the store at `uri` into the folder `out`; returns what plan.json holds. Raises
    StoreError, PlanError, and the clustering's errors when it must cluster first."""
    settings = settings or Settings()
    check(settings)
    if storage.is_remote(str(out)):
        raise PlanError(f"--out {out}: give a local folder; recipes name their prompt files by a relative path")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out}: a file, not a folder; give a new folder or an earlier plan's")
    store = UsageStore.open(uri, existing=True)
    calls = store.read_calls(COLUMNS).to_pylist()
    if not calls:
        raise StoreError(f"{uri}: holds no calls yet; import logs into it first: distill usage import FILE... --to {uri}")
    report, assignments, clustered = _clusters(uri, store, calls, settings.key)
    previous = _previous(out)
    foreign = [c["id"] for c in report["clusters"] if (out / c["id"]).exists() and c["id"] not in previous]
    if foreign:
        raise PlanError(f"--out {out}: {', '.join(foreign)} already exist(s) there and no earlier plan wrote them; "
                        "give a new folder, or move them away")
    members: dict[str, list[dict]] = {c["id"]: [] for c in report["clusters"]}
    for call in calls:
        members[assignments[call["call_id"]]].append(call)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for cluster in report["clusters"]:
        entry = assess(cluster, members[cluster["id"]], settings)
        if not entry["reasons"]:
            staging = Path(tempfile.mkdtemp(prefix=".plan-", dir=out))
            try:
                write_cluster(entry, staging, settings, out / cluster["id"])
                if entry["chosen"]:
                    shutil.rmtree(out / cluster["id"], ignore_errors=True)
                    staging.rename(out / cluster["id"])
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        entry.pop("_rows")
        entries.append(entry)
    for gone in previous - {e["id"] for e in entries if e["chosen"]}:
        shutil.rmtree(out / gone, ignore_errors=True)  # an earlier plan's recipe this plan does not choose
    plan = {"kind": KIND, "version": 1, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(), "store": uri, "out": str(out), "clustered_now": clustered,
            "settings": asdict(settings), "clusters": entries}
    storage.write_json(out / PLAN_FILE, plan)
    return plan
