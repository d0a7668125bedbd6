"""Sample: n completions per train prompt from the teacher, verified, written with lineage.

Each (prompt, sample index) is one unit of work with its own seed. Finished batches are
written as Parquet parts atomically, so a rerun reads which units are done and
schedules only the rest: a crash costs at most the batches in flight.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from distill.lineage import sample_id, sample_seed
from distill.run import RunDir
from distill.stages import evaluate, probing
from distill.stages.requests import call_schema, constrained, request, sampling_params
from distill.stages.verify import VerifyPool, accepted, add_model_verdicts, model_verifiers

NAME = "sample"
NEEDS_STUDENT = False


def run(ctx) -> "SampleSummary":
    """Samples the teacher (verification runs inside, batch by batch). The teacher's evaluation
    answers ride along when the evaluate stage is to run: its engine starts once, not twice."""
    run_ = ctx.run
    backend = ctx.teacher_backend()
    judge = ctx.served_by_id if model_verifiers(ctx.recipe.verifiers) else None
    evaluation = evaluate.teacher_eval_work(run_) if "evaluate" in ctx.stages else None
    side = [{**w, "work_id": evaluate.TEACHER_EVAL + w["work_id"]} for w in evaluation[1]] if evaluation else None
    out = sample_teacher(run_, backend, ctx.bar("sampling"), backend_for=judge, side_work=side)
    if evaluation:
        prompts, work = evaluation
        answers = [{**r, "work_id": r["work_id"][len(evaluate.TEACHER_EVAL):]} for r in out.side_results]
        task = [w for w in work if not probing.is_probe(w["work_id"])]
        if task:
            evaluate.write_answers(run_, "teacher", run_.teacher, prompts, task,
                                   [r for r in answers if not probing.is_probe(r["work_id"])], judge)
        if probes := [w for w in work if probing.is_probe(w["work_id"])]:
            probing.write_answers(run_, "teacher", run_.teacher, probes,
                                  [r for r in answers if probing.is_probe(r["work_id"])])
    ctx.tracker.log({"samples": out.samples_total, "accepted": out.accepted, "errors": out.errors,
                     "accept_rate": out.accepted / out.samples_total if out.samples_total else 0.0,
                     "tokens_per_second": out.tokens_per_second, "verifiers": out.per_verifier,
                     "rounds": out.rounds, "prompts_never_accepted": len(out.never_passed)}, NAME)
    return out



@dataclass
class SampleSummary:
    prompts: int = 0
    samples_total: int = 0
    samples_new: int = 0
    resumed_from: int = 0
    reused_from: str | None = None  # the sibling run whose samples this one started from
    errors: int = 0
    accepted: int = 0
    completion_tokens_new: int = 0
    seconds: float = 0.0
    verify_wait_seconds: float = 0.0  # time sampling waited for verdicts (verification beside the engine: ~0)
    per_verifier: dict = field(default_factory=dict)  # name -> {passed, failed, none}
    rounds: list = field(default_factory=list)  # per sampling round: samples, accepted, accept rate
    never_passed: list = field(default_factory=list)  # prompt ids with no accepted sample
    # Results of `side_work` (requests that ride along with the first round, e.g. the teacher's
    # evaluation), returned to the caller rather than written as samples.
    side_results: list = field(default_factory=list, repr=False)
    attempts: list = field(default_factory=list)  # this run's passes (samples/attempts.json keeps all runs')

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens_new / self.seconds if self.seconds else 0.0


def plan_work(recipe, prompts: list[dict], done: set[str], round_: int = 0) -> list[dict]:
    """Every (prompt, sample index) of a round not yet written, as backend request rows.
    Round r holds the sample indices r*n .. r*n+n-1, so every round brings new seeds."""
    n = recipe.sampling.n
    work = []
    for p in prompts:
        for i in range(round_ * n, (round_ + 1) * n):
            work_id = f"{p['prompt_id']}:{i}"
            if work_id in done:
                continue
            seed = sample_seed(recipe.sampling.seed, p["prompt_id"], i)
            params = sampling_params(recipe, seed, teacher_logprobs=True)
            # vLLM's structured outputs (an HTTP server gets it as an extra field); the schema as JSON
            # text, so every request row has the same column types. Compact JSON (no free whitespace
            # between tokens) is an engine setting: structured_outputs_config.disable_any_whitespace.
            if constrained(recipe, p, i):
                params["structured_outputs"] = {"json": json.dumps(call_schema(json.loads(p["tools"])))}
            work.append(request(recipe, p, work_id, params))
    return work


def sample_teacher(run, backend, progress=None, backend_for=None, side_work: list[dict] | None = None) -> SampleSummary:
    """Sample every pending unit of the run's train prompts; write verified parts.

    With `sampling.accepted_per_prompt`, prompts short of that many accepted samples after a
    round get another round of n samples, up to `sampling.max_rounds` rounds. `backend_for(model
    id)` serves the models of model-running verifiers (the judge).
    """
    recipe = run.recipe
    s = recipe.sampling
    prompts = {p["prompt_id"]: p for p in run.files.read_prompts("train")}
    run.files.remove_unfinished_writes()  # a killed run's half-written parts: their work is sampled again
    reused = reuse_samples(run)
    existing = run.files.read_samples(["prompt_id", "sample_index"])
    done = {f"{p}:{i}" for p, i in zip(existing["prompt_id"].to_pylist(), existing["sample_index"].to_pylist())}
    summary = SampleSummary(prompts=len(prompts), resumed_from=len(done), reused_from=reused)
    if progress:
        progress.start(total=len(prompts) * s.n, completed=min(len(done), len(prompts) * s.n))
    started = time.time()
    info = None
    for round_ in range(s.max_rounds):
        if round_ == 0:
            targets = list(prompts.values())
        else:
            short = short_prompts(run.files.read_samples(["prompt_id", "accepted"]), s.accepted_per_prompt, prompts)
            targets = [prompts[pid] for pid in short]
            if not targets:
                break
        work = plan_work(recipe, targets, done, round_)
        side = side_work if round_ == 0 and side_work else []
        if round_ > 0 and progress and work:
            progress.start(total=len(targets) * s.n, completed=len(targets) * s.n - len(work))  # a bar per round
        if work or side:
            info = info or backend.describe()
            _passes(run, backend, info, prompts, work, side, summary, progress, round_, with_models=backend_for is None)
        if backend_for is not None:
            add_pending_model_verdicts(run, backend_for)
        if not s.accepted_per_prompt:
            break
    summary.seconds = time.time() - started
    table = run.files.read_samples(["prompt_id", "sample_index", "accepted", "error", "verdicts"])
    _count(summary, table)
    summary.rounds = round_stats(table, s.n)
    summary.never_passed = never_passed(table)
    return summary


def _passes(run, backend, info, prompts, work, side, summary, progress, round_: int, with_models: bool) -> None:
    """Generates `work` (+ `side`) in passes: a pass that ends with requests unanswered (an engine
    crashed, a worker node left, the backend raised) is followed by one for what is missing, up to
    `sampling.attempts` passes; each is recorded in samples/attempts.json. Results that come twice
    (a batch redone after a worker was replaced) are written once."""
    answered: set[str] = set()
    side_ids = {w["work_id"] for w in side}
    attempts = run.recipe.sampling.attempts
    for attempt in range(attempts):
        pending = [w for w in work + side if w["work_id"] not in answered]
        if not pending:
            break
        record = {"round": round_, "attempt": attempt, "requested": len(pending), "answered": 0, "duplicates": 0,
                  "replicas": {}, "error": None, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        before = len(answered)
        final = None
        try:
            _generate(run, backend, info, prompts, pending, summary, progress, with_models, side_ids, answered, record)
        except Exception as e:  # an engine or worker failure: what was written stays; the rest is retried
            record["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            # A backend marks what another pass cannot mend (retryable = False): the cluster cannot
            # hold the engines asked for, say. The run stops at once with the whole message.
            final = e if not getattr(e, "retryable", True) else None
            logging.getLogger(__name__).warning("sampling pass %d of round %d failed (%s); %s", attempt + 1,
                                                round_, record["error"],
                                                "not retried" if final else
                                                "retrying what is missing" if attempt + 1 < attempts else "giving up")
        record["answered"] = len(answered) - before
        run.files.append_attempt(record)  # samples/attempts.json: what was asked, answered, redone or failed
        summary.attempts.append(record)
        if final is not None:
            raise final
        if record["error"] and attempt + 1 == attempts:
            raise RuntimeError(f"sampling gave up after {attempts} passes: {record['error']}; "
                               "run the same command again to resume")
    missing = len(work) + len(side) - len(answered)
    if missing:
        raise RuntimeError(f"{missing} requests got no result after {attempts} passes (samples/attempts.json); "
                           "run the same command again to resume")


def _generate(run, backend, info, prompts, work, summary, progress, with_models: bool, side_ids: set,
              answered: set, record: dict) -> None:
    """Generates `work`; each result batch is verified (on Ray tasks beside the engine, see
    VerifyPool) and written as a part in the order the batches came. When generation fails, the
    batches already generated are still verified and written before the error goes on."""
    recipe = run.recipe
    v = recipe.verification
    pool = VerifyPool(recipe.verifiers, workers=v.workers, cpus=v.cpus_per_worker, time_limit=v.time_limit_s,
                      with_models=with_models)
    requests = {w["work_id"]: w for w in work}
    try:
        for results in backend.generate(work):
            fresh = [r for r in results if r["work_id"] not in answered and r["work_id"] in requests]
            record["duplicates"] += len(results) - len(fresh)
            answered.update(r["work_id"] for r in fresh)
            for r in fresh:  # which engine replicas answered this pass, and how much
                name = r.get("replica") or "unknown"
                record["replicas"][name] = record["replicas"].get(name, 0) + 1
            results = fresh
            if side_ids:
                summary.side_results.extend(r for r in results if r["work_id"] in side_ids)
                results = [r for r in results if r["work_id"] not in side_ids]
            if not results:
                continue
            rows = [_record(run, info, prompts, requests[r["work_id"]], r) for r in results]
            pool.submit(rows, (rows, results))
            for (done_rows, done_results), verdicts in pool.ready():
                _write_verified(run, done_rows, done_results, verdicts, summary, progress)
    finally:
        for (done_rows, done_results), verdicts in pool.drain():
            _write_verified(run, done_rows, done_results, verdicts, summary, progress)
        summary.verify_wait_seconds += pool.waited


def _write_verified(run, rows: list[dict], results: list[dict], verdicts: list[list[dict]], summary, progress) -> None:
    recipe = run.recipe
    for row, v in zip(rows, verdicts):
        row["verdicts"] = v
        row["accepted"] = accepted(v, row["error"], recipe.verifiers)
    work_ids = [row.pop("work_id") for row in rows]
    if recipe.sampling.logprobs:  # first: a samples part that exists has its log-probabilities
        run.files.write_logprob_part(work_ids, teacher_tokens(rows, results, recipe.sampling.logprobs))
    run.files.write_sample_part(work_ids, rows)
    summary.samples_new += len(rows)
    summary.completion_tokens_new += sum(r["completion_tokens"] for r in rows)
    if progress:
        progress.advance(len(rows))


def teacher_tokens(rows: list[dict], results: list[dict], k: int) -> list[tuple]:
    """(sample id, TeacherTokens) of the results whose backend returned the teacher's top-k
    log-probabilities (`logprobs` in the result row); an error row has none."""
    from distill.training.logits import TeacherTokens

    return [(row["sample_id"], TeacherTokens.from_lists(r["logprobs"], k))
            for row, r in zip(rows, results) if r.get("logprobs") is not None]


def add_pending_model_verdicts(run, backend_for) -> int:
    """Runs the model verifiers (the judge) over every sample that lacks their verdict, after the
    teacher's engine is done, in one pass (one engine start); rewrites the parts it changed, each
    atomically. Returns the number of parts rewritten."""
    if not model_verifiers(run.recipe.verifiers):
        return 0
    parts = {part: run.files.read_sample_part(part) for part in run.files.sample_parts()}
    before = {part: [len(r["verdicts"] or []) for r in rows] for part, rows in parts.items()}
    if not add_model_verdicts(run.recipe.verifiers, [r for rows in parts.values() for r in rows], backend_for):
        return 0
    rewritten = 0
    for part, rows in parts.items():
        if [len(r["verdicts"] or []) for r in rows] == before[part]:
            continue
        run.files.rewrite_sample_part(part, rows)
        rewritten += 1
    return rewritten


def short_prompts(table: pa.Table, wanted: int, prompts: dict) -> list[str]:
    """Prompts (in prompt order) with fewer than `wanted` accepted samples so far."""
    got: dict[str, int] = {pid: 0 for pid in prompts}
    for pid, ok in zip(table["prompt_id"].to_pylist(), table["accepted"].to_pylist()):
        if ok and pid in got:
            got[pid] += 1
    return [pid for pid, k in got.items() if k < wanted]


def round_stats(table: pa.Table, n: int) -> list[dict]:
    """Per sampling round: samples, accepted, accept rate (round = sample_index // n)."""
    rounds: dict[int, list[int]] = {}
    for index, ok in zip(table["sample_index"].to_pylist(), table["accepted"].to_pylist()):
        r = rounds.setdefault(index // n, [0, 0])
        r[0] += 1
        r[1] += bool(ok)
    return [{"round": r, "samples": c[0], "accepted": c[1], "accept_rate": c[1] / c[0] if c[0] else 0.0}
            for r, c in sorted(rounds.items())]


def never_passed(table: pa.Table) -> list[str]:
    """Prompt ids none of whose samples was accepted, in any round."""
    ok: dict[str, bool] = {}
    for pid, a in zip(table["prompt_id"].to_pylist(), table["accepted"].to_pylist()):
        ok[pid] = ok.get(pid, False) or bool(a)
    return sorted(pid for pid, a in ok.items() if not a)


def reuse_samples(run) -> str | None:
    """A run with no samples yet starts from a sibling run's, when the samples key matches.

    The key covers teacher, prompts, sampling and verifiers, so changing only training or
    evaluation settings does not pay for the teacher again. Parts are hard-linked (copied
    across file systems); their rows keep the run id and recipe hash that made them.
    """
    import shutil

    import yaml

    own = run.files.samples_dir
    if run.files.sample_parts():
        return None
    key = run.recipe.samples_key()
    best = None
    for sibling in sorted(run.dir.parent.iterdir()):
        other = RunDir(sibling)
        if sibling == run.dir or not other.resolved_recipe.is_file():
            continue
        try:
            if other.read_resolved().get("samples_key") != key:
                continue
        except (OSError, yaml.YAMLError):
            continue
        parts = other.sample_parts()
        if parts and (best is None or len(parts) > len(best[1])):
            best = (other, parts)
    if best is None:
        return None
    own.mkdir(parents=True, exist_ok=True)
    # The teacher's log-probabilities first (sampling.logprobs), so each part has them when it appears.
    links = [(p, run.files.logprobs_dir / p.name) for p in best[0].logprob_parts()]
    links += [(p, own / p.name) for p in best[1]]
    for source, target in links:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return best[0].root.name


def _record(run, info: dict, prompts: dict, request: dict, result: dict) -> dict:
    prompt_id, index = request["work_id"].rsplit(":", 1)
    p = prompts[prompt_id]
    t = run.teacher
    params = request["sampling_params"]
    return {
        "work_id": request["work_id"],
        "sample_id": sample_id(prompt_id, t.id, t.revision, params, int(index), result["text"]),
        "run_id": run.id,
        "recipe_hash": run.recipe_hash,
        "code_version": run.code_version,
        "prompt_id": prompt_id,
        "prompt_text": p["question"],
        "prompt_source": p["source"],
        "prompt_licence": p["source_licence"],
        "reference": p["reference"],
        "messages": json.dumps(request["messages"]),
        "tools": json.dumps(request["tools"]) if request.get("tools") else None,
        "chat_template": info.get("chat_template"),
        "teacher_id": t.id,
        "teacher_model": t.model,
        "teacher_revision": t.revision,
        "teacher_licence": t.licence,
        "backend": info["backend"],
        "backend_version": info["version"],
        "engine_args": json.dumps(info.get("engine_args", {}), sort_keys=True),
        "replica": result.get("replica"),
        "sample_index": int(index),
        "seed": params["seed"],
        "sampling_params": json.dumps(params, sort_keys=True),
        "temperature": params["temperature"],
        "top_p": params["top_p"],
        "max_tokens": params["max_tokens"],
        "completion": result["text"],
        "tool_calls": tool_calls_json(result),
        "finish_reason": result["finish_reason"],
        "prompt_tokens": result["prompt_tokens"],
        "completion_tokens": result["completion_tokens"],
        "error": result["error"] or None,
        "created_at": datetime.now(timezone.utc),
    }


def tool_calls_json(result: dict) -> str | None:
    """The completion's tool calls as JSON [{"name", "arguments"}]: the server's when it parsed them,
    else read from the text; None when there are none or the text does not parse as calls."""
    from distill.verifiers.tool_call import CallError, parse_tool_calls

    calls = result.get("tool_calls")
    if calls is None and result.get("text"):
        try:
            calls = [{"name": n, "arguments": a} for n, a, _ in parse_tool_calls(result["text"])]
        except CallError:
            calls = None
    return json.dumps(calls, ensure_ascii=False) if calls else None


def _count(summary: SampleSummary, table: pa.Table) -> None:
    summary.samples_total = table.num_rows
    summary.errors = sum(1 for e in table["error"].to_pylist() if e)
    summary.accepted = sum(1 for a in table["accepted"].to_pylist() if a)
    per: dict[str, dict[str, int]] = {}
    for verdicts in table["verdicts"].to_pylist():
        for v in verdicts or []:
            c = per.setdefault(v["verifier"], {"passed": 0, "failed": 0, "none": 0})
            c["none" if v["score"] is None else "passed" if v["passed"] else "failed"] += 1
    summary.per_verifier = per
