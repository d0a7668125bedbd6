"""Reading a run directory into the store's artifacts and edges, and registering them.

Everything registered is read from the run directory alone (through distill.run.RunDir), so a
run can be registered again, anywhere, at any time. Artifact ids are derived from content, so
registering twice adds nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from distill.lineage import dataset_name, digest
from distill.lineage_store.tables import RELATIONS, Store, artifacts, edges, row_counts, upsert
from distill.run import RunDir


def _id(kind: str, *identity: object) -> str:
    return f"{kind}:{digest(*identity)}"


@dataclass
class _Batch:
    """What one run directory says, before it is written."""

    artifacts: dict[str, dict]
    edges: set[tuple[str, str, str]]

    def add(self, id_: str, kind: str, name: str, version=None, licence=None, run_id=None, **attrs) -> str:
        self.artifacts[id_] = {"id": id_, "kind": kind, "name": name, "version": version, "licence": licence,
                               "run_id": run_id, "attrs": attrs}
        return id_

    def link(self, child: str, relation: str, parent: str) -> None:
        assert relation in RELATIONS, relation
        self.edges.add((child, parent, relation))

    def licence(self, child: str, licence: str | None) -> None:
        if licence:
            self.link(child, "licensed-under", self.add(f"licence:{licence.lower()}", "licence", licence))


def read_run_dir(run_dir: Path) -> _Batch:
    """The artifacts and edges a run directory records; stages that have not run are skipped."""
    files = RunDir(run_dir)
    run_dir = files.root
    if not files.resolved_recipe.is_file():
        raise FileNotFoundError(f"{run_dir}: not a distill run directory (no recipe.resolved.yaml); "
                                "give a directory runs/<recipe>/<run id>/ that `distill run` made")
    resolved = files.read_resolved()
    recipe, run_id, recipe_hash = resolved["recipe"], resolved["run_id"], resolved["recipe_hash"]
    b = _Batch({}, set())
    run = b.add(f"run:{recipe_hash}", "run", recipe["name"], recipe_hash, None, run_id, path=str(run_dir),
                code_version=resolved["code_version"], samples_key=resolved["samples_key"])

    samples = _samples(files)
    if samples is not None:
        count, teachers, prompts, replicas = samples
        s = b.add(f"samples:{recipe_hash}", "samples", f"{recipe['name']}-samples-{run_id}", resolved["samples_key"],
                  None, run_id, count=count, replicas=replicas)
        b.link(s, "produced-by", run)
        for t in teachers:
            tid = b.add(_id("teacher", t["teacher_id"], t["teacher_model"], t["teacher_revision"]), "teacher",
                        t["teacher_id"], t["teacher_revision"], t["teacher_licence"], model=t["teacher_model"])
            b.licence(tid, t["teacher_licence"])
            b.link(s, "sampled-from", tid)
        for p in prompts:
            pid = b.add(_id("prompt_source", p["prompt_source"], p["prompt_licence"]), "prompt_source",
                        p["prompt_source"], None, p["prompt_licence"])
            b.licence(pid, p["prompt_licence"])
            b.link(s, "prompts-from", pid)

    manifest = files.read_json(files.manifest)
    dataset = None
    if manifest is not None:
        dataset = b.add(f"dataset:{manifest['content_sha256']}", "dataset", dataset_name(resolved, manifest),
                        manifest["content_sha256"], None, run_id, rows=manifest["rows"],
                        prompt_licences=manifest["prompt_licences"])
        b.link(dataset, "produced-by", run)
        if samples is not None:
            b.link(dataset, "built-from", f"samples:{recipe_hash}")

    summary = files.read_json(files.train_summary)
    if summary is not None and dataset is not None:
        base = summary["base"]
        bid = b.add(_id("base_model", base["id"], base["model"], base["revision"]), "base_model", base["id"],
                    base["revision"], base["licence"], model=base["model"], params_b=base.get("params_b"))
        b.licence(bid, base["licence"])
        lin = files.read_json(files.lineage) or {}
        terms = _student_terms(files, lin)
        # A hub `other` licence is known by its name (qwen, nvidia-open-model-license), as teachers name it.
        licence = (terms.get("license_name") if terms.get("license") == "other" else terms.get("license")) or base["licence"]
        evaluation = files.read_json(files.metrics)
        model = b.add(f"model:{summary['weights_sha256']}", "model", recipe["student"]["name"], summary["weights_sha256"],
                      licence, run_id, path=str(files.student_dir), method=summary["method"], steps=summary["steps"],
                      train_loss=summary["train_loss"], params_b=lin.get("model", {}).get("params_b"),
                      non_commercial=terms.get("non_commercial"), name_prefix=terms.get("name_prefix"),
                      eval={k: evaluation["student"][k] for k in ("pass@1", "pass@k", "greedy_accuracy")}
                      if evaluation else None)
        b.link(model, "trained-on", dataset)
        b.link(model, "fine-tuned-from", bid)
        b.link(model, "produced-by", run)
        for governing in terms.get("governed_by") or [licence]:  # the licence ids whose terms bind the weights
            b.licence(model, governing)
        if evaluation:
            for p in _eval_sources(files):  # the held-out sets the scores come from (bfcl, tool-tasks, ...)
                pid = b.add(_id("prompt_source", p["source"], p["source_licence"]), "prompt_source", p["source"], None,
                            p["source_licence"])
                b.licence(pid, p["source_licence"])
                b.link(model, "evaluated-on", pid)
    return b


def _student_terms(files: RunDir, lin: dict) -> dict:
    """The student's licence as the engine derived it: lineage.json's, else licence.json's; {} without either."""
    if lin.get("licence"):
        return lin["licence"]
    decision = files.read_json(files.licence) or {}
    if not decision.get("student_licence"):
        return {}
    return decision["student_licence"] | {k: decision.get(k) for k in ("non_commercial", "name_prefix")}


def _eval_sources(files: RunDir) -> list[dict]:
    """The distinct (source, source_licence) of the held-out prompts; [] when none were written."""
    if not files.prompts("eval").is_file():
        return []
    found = {(p["source"], p["source_licence"]) for p in files.read_prompts("eval", ["source", "source_licence"])}
    return [{"source": s, "source_licence": lic} for s, lic in sorted(found)]


def _samples(files: RunDir):
    """(count, distinct teachers, distinct prompt sources, samples per engine replica), reading only
    those columns, a batch at a time; None before sampling."""
    teacher_cols = ["teacher_id", "teacher_model", "teacher_revision", "teacher_licence"]
    prompt_cols = ["prompt_source", "prompt_licence"]
    count, teachers, prompts, replicas = 0, set(), set(), Counter()
    for batch in files.iter_samples(teacher_cols + prompt_cols + ["replica"]):
        count += batch.num_rows
        table = pa.Table.from_batches([batch])
        teachers.update(_distinct(table, teacher_cols))
        prompts.update(_distinct(table, prompt_cols))
        for r in table.group_by("replica").aggregate([([], "count_all")]).to_pylist():
            if r["replica"]:  # null: a backend that does not say (HTTP, older runs)
                replicas[r["replica"]] += r["count_all"]
    if count == 0:
        return None

    def rows(found, cols):
        return [dict(zip(cols, values)) for values in sorted(found)]

    return count, rows(teachers, teacher_cols), rows(prompts, prompt_cols), dict(sorted(replicas.items()))


def _distinct(table: pa.Table, cols: list[str]) -> set[tuple]:
    return {tuple(r[c] for c in cols) for r in table.group_by(cols).aggregate([]).to_pylist()}


def register_run(store: Store, run_dir: Path) -> dict[str, int]:
    """Registers what the run directory holds; returns how many artifacts and edges were new.

    Idempotent: an artifact already known keeps its id, name, first run and creation time;
    only its attributes are refreshed (a resumed run has more samples, an evaluated model
    its scores). One transaction, so a failed registration leaves nothing half-written.
    """
    batch = read_run_dir(run_dir)
    now = datetime.now(timezone.utc)
    with store.begin() as conn:
        before = row_counts(conn)
        for row in sorted(batch.artifacts.values(), key=lambda a: a["id"]):
            upsert(conn, artifacts, row | {"created_at": now}, update=("attrs",))
        for child, parent, relation in sorted(batch.edges):
            upsert(conn, edges, {"child": child, "parent": parent, "relation": relation})
        after = row_counts(conn)
    return {table: after[table] - before[table] for table in after}
