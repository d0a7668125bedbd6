"""Evaluate: teacher and student answer the held-out prompts, scored by the same verifiers.

Both models get the same requests: k sampled answers per prompt with the recipe's sampling
settings and the same per-sample seeds, plus one greedy answer. Each model's answers are
written to `eval/<role>.parquet` when it finishes, so a rerun evaluates only what is
missing; `eval.json` holds the metrics.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa

from distill.lineage import sample_seed
from distill.stages.requests import request, sampling_params
from distill.stages.verify import accepted, verify_batch
from distill.teachers import Serving, Teacher

NAME = "evaluate"
NEEDS_STUDENT = True
GREEDY = "greedy"


def run(ctx) -> dict:
    out = evaluate(ctx.run, ctx.serve, ctx.progress_factory, ctx.served_by_id)
    ctx.tracker.summary({role: {k: v for k, v in out[role].items() if isinstance(v, (int, float))}
                         for role in ("teacher", "base", "student") if role in out}, "eval")
    return out


def student_as_model(run) -> Teacher:
    """The trained student described like a teacher, so the same backend serves it."""
    files = run.files
    summary = files.read_json(files.train_summary)
    base = run.recipe.student_base
    serving = base.entry.serving if base.entry is not None else Serving()  # a local base: vLLM's defaults
    meta = files.read_json(files.student_meta)
    return Teacher(id=run.recipe.student.name, model=str(files.student_dir), revision=summary["weights_sha256"][:16],
                   licence=base.licence or "unknown", params_b=meta["params_b"], serving=serving)


def eval_prompts(run) -> list[dict]:
    prompts = run.files.read_prompts("eval")
    if not prompts:
        raise RuntimeError(
            "the evaluate stage needs held-out prompts: add a `prompts.eval` source to the recipe "
            "(they are never used for training)"
        )
    limit = run.recipe.eval.max_prompts
    return prompts[:limit] if limit else prompts


def plan_eval(recipe, prompts: list[dict]) -> list[dict]:
    """k sampled requests (the recipe's settings, per-sample seeds) and one greedy per prompt."""
    work = []
    for p in prompts:
        for i in range(recipe.eval.k):
            seed = sample_seed(recipe.sampling.seed, p["prompt_id"], i)
            work.append(request(recipe, p, f"{p['prompt_id']}:{i}", sampling_params(recipe, seed)))
        greedy = {**sampling_params(recipe, recipe.sampling.seed), "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                  "min_p": 0.0}
        work.append(request(recipe, p, f"{p['prompt_id']}:{GREEDY}", greedy))
    return work


def answer(run, role: str, model: Teacher, backend, prompts: list[dict], progress=None, judge=None) -> pa.Table:
    """One model's answers to every eval request, verified; written to eval/<role>.parquet."""
    work = plan_eval(run.recipe, prompts)
    if progress:
        progress.start(total=len(work))
    results, timing = generate_timed(backend, work, progress)
    run.files.write_json(run.files.eval_dir / f"{role}.timing.json", timing)
    return write_answers(run, role, model, prompts, work, results, judge)


def generate_timed(backend, work: list[dict], progress=None) -> tuple[list[dict], dict]:
    """Every result of `work` from the backend, and answer_timing's figures of them."""
    results: list[dict] = []
    started, first, engine_from = time.time(), None, None
    for batch in backend.generate(work):
        results.extend(batch)
        if first is None:
            first = (time.time(), len(batch))
        engine_from = first_submitted(batch, engine_from)
        if progress:
            progress.advance(len(batch))
    return results, answer_timing(started, first, len(results), engine_from)


def first_submitted(batch: list[dict], earliest: float | None) -> float | None:
    """The earliest time a request of the results so far reached the engine: each result that
    says how long it spent in the engine (`seconds`, the vLLM-on-Ray backend's) went in at the
    latest that long before its batch came back."""
    now = time.time()
    starts = [now - r["seconds"] for r in batch if r.get("seconds")]
    return min([*starts, *([earliest] if earliest is not None else [])], default=None)


def answer_timing(started: float, first: tuple[float, int] | None, answers: int,
                  engine_from: float | None = None) -> dict:
    """How long a model took to answer: in all; per answer while its engine worked
    (`engine_seconds_per_answer`: from the first request reaching the started engine to the
    last result, over the answers, so the engine's start is left out; None when the backend does
    not say how long requests spent in it); and per answer after its first batch of results
    (`steady_seconds_per_answer`, None when one batch held every answer; an engine that runs
    all the requests together returns its batches at nearly the same time, so this one reads far
    too low then). What serving the model costs is priced from the first, else the second."""
    end = time.time()
    steady = None
    if first is not None and answers > first[1] and end > first[0]:
        steady = (end - first[0]) / (answers - first[1])
    engine = (end - engine_from) / answers if engine_from is not None and answers and end > engine_from else None
    return {"answers": answers, "seconds": end - started, "first_batch_seconds": first[0] - started if first else None,
            "engine_seconds_per_answer": engine, "steady_seconds_per_answer": steady}


def seconds_per_answer(timing: dict) -> float | None:
    """What a model's answer costs in time, from answer_timing's figures (None: not measured)."""
    return timing.get("engine_seconds_per_answer") or timing.get("steady_seconds_per_answer")


def write_answers(run, role: str, model: Teacher, prompts: list[dict], work: list[dict], results: list[dict],
                  judge=None) -> pa.Table:
    """Verifies a model's results to the eval requests `work` and writes eval/<role>.parquet."""
    recipe = run.recipe
    requests = {w["work_id"]: w for w in work}
    references = {p["prompt_id"]: p["reference"] for p in prompts}
    rows = []
    for r in results:
        prompt_id, index = r["work_id"].rsplit(":", 1)
        rows.append({
            "role": role, "model_id": model.id, "model_revision": model.revision, "prompt_id": prompt_id,
            "kind": GREEDY if index == GREEDY else "sampled", "sample_index": -1 if index == GREEDY else int(index),
            "seed": requests[r["work_id"]]["sampling_params"]["seed"], "completion": r["text"],
            "finish_reason": r["finish_reason"], "completion_tokens": r["completion_tokens"],
            "error": r["error"] or None,
        })
    questions = {p["prompt_id"]: p["question"] for p in prompts}
    tools = {p["prompt_id"]: json.loads(p["tools"]) if p.get("tools") else None for p in prompts}
    verdicts = verify_batch(recipe.verifiers, [r["completion"] for r in rows], [references[r["prompt_id"]] for r in rows],
                            questions=[questions[r["prompt_id"]] for r in rows],
                            finish_reasons=[r["finish_reason"] for r in rows],
                            tools=[tools[r["prompt_id"]] for r in rows], backend_for=judge,
                            time_limit=recipe.verification.time_limit_s)
    for row, v in zip(rows, verdicts):
        row["verdicts"] = v
        row["correct"] = accepted(v, row["error"])
    rows.sort(key=lambda r: (r["prompt_id"], r["kind"], r["sample_index"]))
    return run.files.write_eval_answers(role, rows)


TEACHER_EVAL = "eval|"  # work id prefix of the teacher's eval requests when they ride along with sampling


def teacher_eval_work(run) -> tuple[list[dict], list[dict]] | None:
    """(prompts, work) of the teacher's evaluation, to send with the sample stage's requests so the
    teacher's engine is started once for both; None when it is already done or cannot be done."""
    from distill.stages import probing

    if run.recipe.student is None or not run.files.read_prompts("eval"):
        return None
    prompts = eval_prompts(run)
    done = run.files.read_eval_answers("teacher")
    task = [] if done is not None and _matches(done, run.teacher, len(prompts) * (run.recipe.eval.k + 1)) \
        else plan_eval(run.recipe, prompts)
    probes = probing.missing(run, "teacher", run.teacher, probing.load_probes(run.recipe))
    return (prompts, task + probes) if task or probes else None


def scores(table: pa.Table) -> dict:
    """pass@1, pass@k and greedy accuracy of a model's answers, each with its 95% interval."""
    rows = table.to_pylist()
    by_prompt: dict[str, list[bool]] = {}
    for r in rows:
        if r["kind"] == "sampled":
            by_prompt.setdefault(r["prompt_id"], []).append(bool(r["correct"]))
    greedy = {r["prompt_id"]: float(bool(r["correct"])) for r in rows if r["kind"] == GREEDY}
    return {
        "pass@1": sum(sum(c) / len(c) for c in by_prompt.values()) / len(by_prompt) if by_prompt else 0.0,
        "pass@k": sum(any(c) for c in by_prompt.values()) / len(by_prompt) if by_prompt else 0.0,
        "greedy_accuracy": sum(greedy.values()) / len(greedy) if greedy else 0.0,
        # How far each score could move with other prompts of the same kind: 95% bootstrap
        # intervals over the held-out prompts.
        "pass@1_ci95": bootstrap_ci([sum(c) / len(c) for c in by_prompt.values()]),
        "pass@k_ci95": bootstrap_ci([float(any(c)) for c in by_prompt.values()]),
        "greedy_accuracy_ci95": bootstrap_ci(list(greedy.values())),
    }


def metrics(table: pa.Table, model: Teacher, price_per_mtok: dict[str, float]) -> dict:
    rows = table.to_pylist()
    sampled = [r for r in rows if r["kind"] == "sampled"]
    correct = sum(r["correct"] for r in sampled)
    tokens = sum(r["completion_tokens"] for r in sampled)
    if model.id in price_per_mtok:
        price, unit = price_per_mtok[model.id], "as set in eval.price_per_mtok"
    elif model.params_b is not None:
        # With no price set, parameters (billions) per million tokens stand in for a price:
        # serving cost grows about linearly with size.
        price, unit = model.params_b, "proxy: parameters (B) per 1M output tokens"
    else:  # a logged API model: neither a price nor a size to stand in for one
        price, unit = None, f"unknown: set eval.price_per_mtok for {model.id!r} (its size is not known)"
    s = scores(table)
    return {
        "model": model.id,
        "revision": model.revision,
        "params_b": model.params_b,
        "prompts": len({r["prompt_id"] for r in sampled}),
        "samples": len(sampled),
        **{k: s[k] for k in ("pass@1", "pass@k", "greedy_accuracy")},
        "mean_output_tokens": tokens / len(sampled) if sampled else 0.0,
        "truncated": sum(r["finish_reason"] == "length" for r in sampled),
        "errors": sum(bool(r["error"]) for r in rows),
        "price_per_mtok": price,
        "price_unit": unit,
        "cost_per_correct": (tokens * price / 1e6) / correct if correct and price is not None else None,
        **{k: s[k] for k in ("pass@1_ci95", "pass@k_ci95", "greedy_accuracy_ci95")},
    }


BOOTSTRAP_SAMPLES = 2000  # enough for stable 2.5/97.5 percentiles; seconds are not at stake


def bootstrap_ci(per_prompt: list[float], level: float = 0.95, seed: int = 0) -> list[float] | None:
    """The percentile bootstrap interval of the mean of per-prompt scores, resampling prompts
    (seeded: the same answers give the same interval); None without prompts."""
    import numpy as np

    if not per_prompt:
        return None
    values = np.asarray(per_prompt, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def base_model(run) -> Teacher:
    """The student's base before training, described like a teacher, served as the student is."""
    base = run.recipe.student_base
    template = run.recipe.student.template
    if base.entry is not None:
        entry = base.entry
        return entry.model_copy(update={"template": template}) if template else entry
    return Teacher(id=base.id, model=base.path, revision=base.revision, licence=base.licence or "unknown",
                   params_b=base.params_b, template=template)


def needs_base(recipe) -> bool:
    """The base model answers too when probes or a gate condition compare the student with it."""
    return bool(recipe.eval.probes) or any(c.vs == "base" for c in recipe.gate)


def same_model(a: Teacher, b: Teacher) -> bool:
    """The same weights served the same way: one model's answers stand for the other's."""
    def key(m: Teacher):
        return m.model, m.weights_from, m.revision, m.template, m.endpoint, m.replay

    return key(a) == key(b)


def evaluate(run, backend_for, progress_factory=None, judge=None) -> dict:
    """Evaluates the teacher, the base (when probes or the gate need it) and the student on the
    held-out prompts and the recipe's probes, each model's requests through one engine;
    `backend_for(model)` builds a backend serving that model; `judge(model id)` serves the
    models of model-running verifiers."""
    from distill.stages import gate, probing

    prompts = eval_prompts(run)
    loaded = probing.load_probes(run.recipe)
    models = {"teacher": run.teacher}
    if needs_base(run.recipe):
        models["base"] = base_model(run)
    models["student"] = student_as_model(run)
    shared = "base" in models and same_model(models["base"], run.teacher)
    tables, probe_tables = {}, {}
    started = time.time()
    for role, model in models.items():
        if role == "base" and shared:  # the base is the teacher's model: its answers are the teacher's
            tables[role], probe_tables[role] = tables["teacher"], probe_tables["teacher"]
            continue
        saved = run.files.read_eval_answers(role)
        done = saved is not None and _matches(saved, model, len(prompts) * (run.recipe.eval.k + 1))
        task_work = [] if done else plan_eval(run.recipe, prompts)
        probe_work = probing.missing(run, role, model, loaded)
        if task_work or probe_work:
            progress = progress_factory(f"evaluating {role}") if progress_factory else None
            if progress:
                progress.start(total=len(task_work) + len(probe_work))
            results, timing = generate_timed(backend_for(model), task_work + probe_work, progress)
            if task_work:
                run.files.write_json(run.files.eval_dir / f"{role}.timing.json", timing | {"probe_answers": len(probe_work)})
                saved = write_answers(run, role, model, prompts, task_work,
                                      [r for r in results if not probing.is_probe(r["work_id"])], judge)
            if probe_work:
                probing.write_answers(run, role, model, probe_work, [r for r in results if probing.is_probe(r["work_id"])])
        tables[role] = saved
        probe_tables[role] = probing.saved_for(run.files, role, model)
    price = run.recipe.eval.price_per_mtok
    result = {
        "run_id": run.id,
        "recipe_hash": run.recipe_hash,
        "held_out_prompts": len(prompts),
        "k": run.recipe.eval.k,
        "sampling": sampling_params(run.recipe, run.recipe.sampling.seed) | {"seed": "per sample, as in training"},
        "verifiers": [v.name for v in run.recipe.verifiers],
        **{role: metrics(tables[role], model, price) for role, model in models.items()},
        "seconds": time.time() - started,
    }
    if shared:
        result["base"]["same_as_teacher"] = True
    t, s = result["teacher"], result["student"]
    result["student_minus_teacher"] = {"pass@1": s["pass@1"] - t["pass@1"],
                                       "greedy_accuracy": s["greedy_accuracy"] - t["greedy_accuracy"]}
    if "base" in result:
        b = result["base"]
        result["student_minus_base"] = {"pass@1": s["pass@1"] - b["pass@1"],
                                        "greedy_accuracy": s["greedy_accuracy"] - b["greedy_accuracy"]}
    if loaded:
        result["probes"] = probing.results(loaded, probe_tables, judge)
    if groups := prompt_groups(prompts):
        result["groups"] = {name: {"prompts": len(ids), **{role: group_metrics(tables[role], ids) for role in models}}
                            for name, ids in groups.items()}
    if decision := gate.decide([c.model_dump() for c in run.recipe.gate], result):
        result["gate"] = decision
    run.files.write_json(run.files.metrics, result)
    return result


def prompt_groups(prompts: list[dict]) -> dict[str, set[str]]:
    """The held-out prompts by where they come from: `source/category` for prompts with a category
    (bfcl/simple_python, tool-tasks/parallel), and each source as a whole when there are several;
    empty when one source without categories holds them all (the overall scores say it)."""
    groups: dict[str, set[str]] = {}
    sources = {p["source"] for p in prompts}
    for p in prompts:
        if len(sources) > 1:
            groups.setdefault(p["source"], set()).add(p["prompt_id"])
        if p.get("category"):
            groups.setdefault(f"{p['source']}/{p['category']}", set()).add(p["prompt_id"])
    return dict(sorted(groups.items()))


def group_metrics(table: pa.Table, prompt_ids: set[str]) -> dict:
    """A model's scores on some of the held-out prompts."""
    import pyarrow.compute as pc

    return scores(table.filter(pc.is_in(table["prompt_id"], pa.array(sorted(prompt_ids)))))


def _matches(table: pa.Table, model: Teacher, expected_rows: int) -> bool:
    """A saved answer file counts only if it is this model's (same weights) and complete."""
    revisions = set(table["model_revision"].to_pylist())
    return table.num_rows == expected_rows and revisions == {model.revision}
