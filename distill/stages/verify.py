"""Verify: run the recipe's verifiers over a batch of completions; keep every verdict.

Most verifiers are plain functions of the text. A verifier that runs a model (the LLM judge)
cannot run while the teacher's engine streams its batches, so the sample stage calls
`verify_batch(..., with_models=False)` per batch and `add_model_verdicts` once the batch of
work is generated; a sample is not accepted while a required verdict is missing.

Time limits hold whatever the verifier does: with `time_limit`, each completion's verdict is
computed in a worker process (distill/verifiers/hard_limit.py) that is killed when the limit
passes, so no computation (a regular expression that backtracks for ever, a tower of exponents
in C) can hold the run. A verifier that raises or runs out of time gives a None verdict with
the reason; the run goes on. The sample stage verifies its batches on Ray tasks beside the
engine (`VerifyPool`), not in the driver between batches.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from collections import deque
from typing import Callable, Iterator

from distill.verifiers import VERIFIERS, Verdict, VerifyContext, hard_limit

# Built-ins that bound their own time: math judges in its own worker process, and code runs the
# programs in the sandbox under its limits. Every other verifier runs under the generic limit.
SELF_LIMITED = frozenset({"math", "code"})

log = logging.getLogger(__name__)


def verify_batch(verifiers: list, completions: list[str | None], references: list[str | None], *,
                 questions: list[str | None] | None = None, finish_reasons: list[str | None] | None = None,
                 tools: list[list[dict] | None] | None = None, backend_for: Callable | None = None,
                 with_models: bool = True, time_limit: float | None = None) -> list[list[dict]]:
    """One list of verdict dicts per completion; error rows (completion None) get none.

    with_models=False skips the verifiers that run a model; `add_model_verdicts` adds them later.
    `time_limit`: seconds each completion's verdict may take, per verifier, held by a worker
    process (verifiers that run a model, or bound their own time, run as they are).
    """
    live = [i for i, c in enumerate(completions) if c is not None]
    out: list[list[dict]] = [[] for _ in completions]
    ctx = VerifyContext(
        questions=[questions[i] if questions else None for i in live],
        finish_reasons=[finish_reasons[i] if finish_reasons else None for i in live],
        tools=[tools[i] if tools else None for i in live],
        backend_for=backend_for,
    )
    texts, refs = [completions[i] for i in live], [references[i] for i in live]
    for spec in verifiers:
        entry = VERIFIERS.get(spec.name)
        if entry.uses_model and not with_models:
            continue
        if time_limit and not entry.uses_model and spec.name not in SELF_LIMITED:
            verdicts = [_limited(entry.fn, spec, texts[j], refs[j], ctx, j, time_limit) for j in range(len(live))]
        else:
            verdicts = _whole_batch(entry.fn, spec, texts, refs, ctx)
        if len(verdicts) != len(live):
            raise RuntimeError(f"verifier {spec.name!r} returned {len(verdicts)} verdicts for {len(live)} completions")
        for i, v in zip(live, verdicts):
            if not isinstance(v, Verdict):  # a plug-in's slip, said plainly rather than as an AttributeError later
                raise TypeError(f"verifier {spec.name!r} returned a {type(v).__name__}, not a Verdict")
            out[i].append(_verdict_dict(spec, v))
    return out


def _whole_batch(fn, spec, texts: list, refs: list, ctx: VerifyContext) -> list:
    """The verifier over the batch in this process; when it raises, every verdict is None with why."""
    try:
        return fn(texts, refs, spec.params, ctx)
    except Exception as e:  # noqa: BLE001  a verifier's failure is a verdict, never the run's end
        log.warning("verifier %s failed on a batch of %d: %s: %s", spec.name, len(texts), type(e).__name__, e)
        return [Verdict(None, f"verifier error: {type(e).__name__}: {e}") for _ in texts]


def _limited(fn, spec, text, ref, ctx: VerifyContext, j: int, seconds: float) -> Verdict:
    """One completion's verdict in the hard-limit worker process; None with the reason when the
    verifier raised, ran out of time or cannot be sent there (a function defined in a closure)."""
    one = VerifyContext(questions=[ctx.questions[j]], finish_reasons=[ctx.finish_reasons[j]],
                        tools=[ctx.tools[j]] if ctx.tools else None)
    try:
        out = hard_limit.call(_one, (fn, text, ref, spec.params, one), seconds)
    except (AttributeError, TypeError, ValueError, pickle.PicklingError) as e:  # no process can be sent it
        log.warning("verifier %s cannot run in a worker process (%s); it runs without a time limit", spec.name, e)
        got = _whole_batch(fn, spec, [text], [ref], one)
        return got[0] if len(got) == 1 else Verdict(None, "verifier returned no verdict")
    if out.timed_out:
        return Verdict(None, f"verifier took over {seconds:g} s: stopped")
    if out.error is not None:
        return Verdict(None, f"verifier error: {out.error}")
    return out.value


def _one(fn, text, ref, params, ctx: VerifyContext):
    """Runs in the worker process: the verifier over one completion."""
    got = fn([text], [ref], params, ctx)
    if len(got) != 1:
        raise RuntimeError(f"returned {len(got)} verdicts for 1 completion")
    return got[0]


class VerifyPool:
    """Verifies result batches while the engine generates the next ones.

    `submit(rows, tag)` hands over a batch of sample rows (completion, reference, prompt_text,
    finish_reason, tools); `ready()` then `drain()` give back (tag, verdict lists) in the order
    the batches came. With `workers` > 0 and Ray running, that many Ray actors of `cpus` CPUs
    each take the batches in turn, at most two each in flight, so sampling waits on verification
    only when verification falls behind; otherwise (and for verifiers that run a model) batches
    are verified here at submission. A batch whose actor was lost is verified here instead.
    """

    def __init__(self, verifiers: list, *, workers: int = 0, cpus: float = 0.25, time_limit: float | None = None,
                 with_models: bool = True):
        self.verifiers, self.time_limit, self.with_models = verifiers, time_limit, with_models
        self.window = 2 * workers
        self.pending: deque = deque()
        self.waited = 0.0  # seconds the caller spent waiting for verdicts
        self.actors: list = []
        self.turn = 0
        self.started = False  # the actors were seen up (or given up on)
        if workers and not (with_models and model_verifiers(verifiers)) and _ray_up():
            # The functions resolved here travel with the actors: a verifier registered in this
            # process only (a test's, a plug-in loaded by dotted name) works there too.
            import cloudpickle

            blob = cloudpickle.dumps((verifiers, {spec.name: VERIFIERS.get(spec.name).fn for spec in verifiers}))
            worker = _actor_class().options(num_cpus=cpus)
            self.actors = [worker.remote(blob, list(sys.path), time_limit) for _ in range(workers)]

    @property
    def on_ray(self) -> bool:
        return bool(self.actors)

    def submit(self, rows: list[dict], tag) -> None:
        batch = _batch(rows)
        if not self.actors:
            started = time.time()
            self.pending.append((tag, batch, self._here(batch)))
            self.waited += time.time() - started
        else:
            actor = self.actors[self.turn % len(self.actors)]
            self.turn += 1
            self.pending.append((tag, batch, actor.verify.remote(batch)))

    def ready(self) -> Iterator[tuple]:
        """Finished batches at the head of the line; waits while more than the window are out."""
        while self.pending:
            tag, batch, got = self.pending[0]
            if not isinstance(got, list):
                import ray

                if len(self.pending) <= self.window and not ray.wait([got], timeout=0)[0]:
                    return
                got = self._result(batch, got)
            self.pending.popleft()
            yield tag, got

    def drain(self) -> Iterator[tuple]:
        """Every batch still out, in order, waiting for each; then the actors end."""
        self.window = 0
        yield from self.ready()
        self.close()

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def _result(self, batch: dict, ref) -> list[list[dict]]:
        import ray

        started = time.time()
        try:
            if not self.started:
                self._wait_for_actors()
            if not self.actors:
                return self._here(batch)
            return ray.get(ref)
        except (ray.exceptions.RayError, OSError) as e:  # a lost actor or node: verify the batch here
            if self.actors:  # once: from now on every batch is verified here
                log.warning("verification workers failed (%s); verifying in the driver from now on",
                            str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__)
                self.close()
            return self._here(batch)
        finally:
            self.waited += time.time() - started

    def _wait_for_actors(self) -> None:
        """Once: the actors must be up within START_TIMEOUT_S. A cluster with no CPUs to spare for
        them (the engines and Ray Data's stages hold them all) would otherwise keep every batch
        waiting; the driver verifies then."""
        import ray

        self.started = True
        ready, _ = ray.wait([a.__ray_ready__.remote() for a in self.actors], num_returns=len(self.actors),
                            timeout=START_TIMEOUT_S)
        if len(ready) < len(self.actors):
            log.warning("%d of %d verification workers did not start within %d s (no free CPUs for their "
                        "verification.cpus_per_worker?); verifying in the driver", len(self.actors) - len(ready),
                        len(self.actors), START_TIMEOUT_S)
            self.close()

    def _here(self, batch: dict) -> list[list[dict]]:
        return verify_batch(self.verifiers, batch["completions"], batch["references"], questions=batch["questions"],
                            finish_reasons=batch["finish_reasons"], tools=batch["tools"],
                            with_models=self.with_models, time_limit=self.time_limit)


def _batch(rows: list[dict]) -> dict:
    return {"completions": [r["completion"] for r in rows], "references": [r["reference"] for r in rows],
            "questions": [r["prompt_text"] for r in rows], "finish_reasons": [r["finish_reason"] for r in rows],
            "tools": [json.loads(r["tools"]) if r.get("tools") else None for r in rows]}


def _ray_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


_ACTOR = None
START_TIMEOUT_S = 60


def _actor_class():
    global _ACTOR
    if _ACTOR is None:
        import ray

        _ACTOR = ray.remote(_VerifyWorker)
    return _ACTOR


class _VerifyWorker:
    """A Ray actor verifying batches with the driver's verifier functions; its hard-limit worker
    process (one per actor) stays up between batches."""

    def __init__(self, blob: bytes, path: list[str], time_limit: float | None):
        # The driver's import path first: a plug-in it imported from a recipe's folder (a dotted
        # name) is found here on a local cluster. Where it is not (another node), this raises and
        # the driver verifies instead.
        sys.path.extend(p for p in path if p not in sys.path)
        import cloudpickle

        verifiers, fns = cloudpickle.loads(blob)
        for spec in verifiers:
            if spec.name not in VERIFIERS and spec.name in fns:
                VERIFIERS.register(spec.name, params=type(spec.params))(fns[spec.name])
        self.verifiers, self.time_limit = verifiers, time_limit

    def verify(self, batch: dict) -> list[list[dict]]:
        return verify_batch(self.verifiers, batch["completions"], batch["references"], questions=batch["questions"],
                            finish_reasons=batch["finish_reasons"], tools=batch["tools"], with_models=False,
                            time_limit=self.time_limit)


def _verdict_dict(spec, v: Verdict) -> dict:
    score = None if v.score is None else float(v.score)
    return {"verifier": spec.name, "score": score, "reason": v.reason, "required": spec.required,
            "passed": score is not None and score >= spec.threshold}


def model_verifiers(verifiers: list) -> list:
    return [v for v in verifiers if VERIFIERS.get(v.name).uses_model]


def add_model_verdicts(verifiers: list, rows: list[dict], backend_for: Callable) -> bool:
    """Adds the verdicts of model-running verifiers that `rows` lack (rows: sample dicts with
    completion, reference, prompt_text, finish_reason, verdicts, error); recomputes `accepted`.
    Returns whether anything changed."""
    changed = False
    for spec in model_verifiers(verifiers):
        todo = [r for r in rows if r["completion"] is not None
                and not any(v["verifier"] == spec.name for v in r["verdicts"] or [])]
        if not todo:
            continue
        got = verify_batch([spec], [r["completion"] for r in todo], [r["reference"] for r in todo],
                           questions=[r["prompt_text"] for r in todo],
                           finish_reasons=[r["finish_reason"] for r in todo],
                           tools=[json.loads(r["tools"]) if r.get("tools") else None for r in todo],
                           backend_for=backend_for)
        for row, verdicts in zip(todo, got):
            row["verdicts"] = list(row["verdicts"] or []) + verdicts
        changed = True
    if changed:
        for row in rows:
            row["accepted"] = accepted(row["verdicts"], row["error"], verifiers)
    return changed


def accepted(verdicts: list[dict], error: str | None, verifiers: list | None = None) -> bool:
    """Every required verifier passed. A required verdict of None (cannot verify) is not a pass,
    and neither is one still missing (a model verifier not yet run), when `verifiers` is given."""
    if error:
        return False
    if verifiers is not None:
        have = {v["verifier"] for v in verdicts or []}
        if any(spec.required and spec.name not in have for spec in verifiers):
            return False
    return all(v["passed"] for v in verdicts or [] if v["required"])
