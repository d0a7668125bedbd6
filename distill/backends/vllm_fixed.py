"""Reproducible sampling on CPUs: batches formed by the engine's own steps, never by timing.

A float32 forward pass gives slightly different numbers for one sequence depending on what
else is in its batch (matrix shapes choose other kernels and summation orders), and a seeded
sample that meets a near-tie then takes another token. Ray Data LLM's engines take requests as
they stream in, so which requests share a step depends on timing, and a loaded machine gets
other samples than a quiet one.

Here each replica is a Ray actor driving a `vllm.LLM`'s engine itself, with the engine core in
the same process: it queues requests in a fixed order, only between steps, and only while fewer
than ADMIT_PER_SEQ x max_num_seqs are unfinished (a count the steps alone decide), then steps.
Every step's batch is then a function of the requests, never of when they arrived. Results
stream back as they finish, in batches of `batch_size`. Replica r takes requests r, r + R, ...
GPUs have vLLM's batch-invariant kernels instead (`VLLM_BATCH_INVARIANT`, set by the Ray Data
path).

What still changes the samples: another number of replicas, a resumed run (its remaining work
is queued anew), other hardware or thread count, and requests under a grammar
(sampling.constrained_calls), which wait to be scheduled until their grammar has compiled.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Iterator

# Requests kept queued in the engine per running sequence it can hold: enough waiting work that
# a finished sequence's slot is refilled at the next step.
ADMIT_PER_SEQ = 2


def replica_name() -> str:
    """Which engine answered: its Ray actor, the actor's process and its node. A replica Ray
    restarts after a crash keeps its actor id and gets a new process id, so a replacement
    shows up as a second process under the same actor."""
    import ray

    ctx = ray.get_runtime_context()
    return f"actor {(ctx.get_actor_id() or 'none')[:8]} (pid {os.getpid()}) on node {ctx.get_node_id()[:8]}"


def sampling_params(params: dict):
    """vllm.SamplingParams from a request's dict (its grammar as StructuredOutputsParams), asking
    for each output once, when it is finished."""
    import vllm
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    params = dict(params)
    structured = params.pop("structured_outputs", None)
    return vllm.SamplingParams(**params, output_kind=RequestOutputKind.FINAL_ONLY,
                               structured_outputs=StructuredOutputsParams(**structured) if structured else None)


def flat_logprobs(row: dict) -> dict:
    """The engine's log-probabilities of a row's generated tokens (per token, {token id: {logprob,
    rank, decoded_token}}: the top-k and the sampled token) as two ragged lists per token, ids
    and log-probabilities, most likely first. Arrow has no mapping keyed by integers: left as
    it is, Ray Data would pickle every row of the block. A row without them is returned as is."""
    positions = row.get("logprobs")
    if positions is None:
        return row
    ids, values = [], []
    for entries in positions:
        pairs = sorted(((int(token), float(v["logprob"] if isinstance(v, dict) else getattr(v, "logprob", v)))
                        for token, v in (entries or {}).items() if v is not None), key=lambda p: -p[1])
        ids.append([t for t, _ in pairs])
        values.append([v for _, v in pairs])
    out = {key: value for key, value in row.items() if key != "logprobs"}
    out.update(logprob_ids=ids, logprob_values=values)
    return out


def flat_result(request: dict, output, replica: str) -> dict:
    """One finished `vllm.RequestOutput` as the Ray Data path's postprocessed row (see
    vllm_ray._postprocess)."""
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    row = {"work_id": request["work_id"], "text": completion.text or "",
           "prompt_tokens": len(output.prompt_token_ids or []), "completion_tokens": len(tokens),
           "last_token": int(tokens[-1]) if tokens else -1, "replica": replica, "error": ""}
    if completion.logprobs is not None and request["sampling_params"].get("logprobs") is not None:
        row.update(flat_logprobs({"logprobs": completion.logprobs}), token_ids=tokens)
    return row


class StepLoopEngine:
    """A Ray actor holding one `vllm.LLM` and stepping its engine itself (see the module's doc)."""

    def __init__(self, model: str, engine_kwargs: dict[str, Any], env: dict[str, str]):
        """engine_kwargs as vllm.LLM takes them (vllm_ray.vllm_engine_kwargs)."""
        os.environ.update(env)
        # Every core of the node for the model's threads, as vLLM gives its own worker processes:
        # Ray starts an actor with OMP_NUM_THREADS at its CPU count (1), and an engine in this
        # process would compute on one core.
        threads = int(env.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        # The engine core in this process: it schedules only when step() is called, so requests
        # queued between two steps are all seen by the next (a core process would start on the
        # first arrivals).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # Work ids are unique already; vLLM's random suffix would be the one input that differs
        # between two runs.
        os.environ["VLLM_DISABLE_REQUEST_ID_RANDOMIZATION"] = "1"
        import vllm

        self.llm = vllm.LLM(model=model, **engine_kwargs)
        self.engine = self.llm.llm_engine
        self.admit_up_to = ADMIT_PER_SEQ * self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        self.replica = replica_name()

    def ready(self) -> dict:
        import torch

        return {"replica": self.replica, "threads": torch.get_num_threads()}

    def stream(self, requests: list[dict], batch_size: int) -> Iterator[list[dict]]:
        """Rendered requests (work_id, prompt, sampling_params) in; lists of up to `batch_size`
        result rows out, as they finish. A request the engine refuses becomes an error row."""
        queue, asked, done = deque(requests), {}, []
        while queue or self.engine.has_unfinished_requests():
            while queue and self.engine.get_num_unfinished_requests() < self.admit_up_to:
                r = queue.popleft()
                try:
                    self.engine.add_request(r["work_id"], r["prompt"], sampling_params(r["sampling_params"]))
                    asked[r["work_id"]] = r
                except Exception as e:  # e.g. a prompt longer than the model takes
                    done.append({"work_id": r["work_id"], "error": f"{type(e).__name__}: {e}"})
            if self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        done.append(flat_result(asked.pop(output.request_id), output, self.replica))
            while len(done) >= batch_size:
                yield done[:batch_size]
                done = done[batch_size:]
        if done:
            yield done
