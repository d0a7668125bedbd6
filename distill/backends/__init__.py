"""Teacher backends, registered by short name in BACKENDS.

A backend turns request rows into result rows (the `Backend` protocol below). A teacher
entry's `backend:` names the factory that makes it: a registered name, an entry point of
the group `distill.backends`, or a dotted name `package.module:factory`; unset, a teacher
with a `replay:` section (recorded answers) is served by `replay`, one with an `endpoint:` by
`openai-http`, any other by `vllm-ray`. A factory is

    def make_my_backend(model: Teacher, options: BackendOptions) -> Backend

called with the model entry to serve (the teacher, a judge, or the student being
evaluated) and the run's settings; it ignores the options it has no use for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, runtime_checkable

from distill.registry import Registry

if TYPE_CHECKING:
    from distill.teachers import Teacher


@runtime_checkable
class Backend(Protocol):
    """What the sample and evaluate stages call.

    `generate(requests)` gets request rows, each a dict with `work_id` (str), `messages`
    (chat messages, OpenAI format) and `sampling_params` (a dict for one completion:
    seed, temperature, top_p, top_k, min_p, max_tokens, stop, the repetition, presence and
    frequency penalties, and the recipe's sampling.extra), and for a prompt with tools `tools` (OpenAI
    function definitions, for the chat template), and yields lists of result rows as they finish, in any
    order: each a dict with `work_id`, `text` (None on error), `prompt_tokens`, `completion_tokens`,
    `finish_reason` ("stop", "length", or "error") and `error` ("" when none), and optionally
    `tool_calls` ([{"name", "arguments"}], when the server parsed the calls itself). Every request
    gets exactly one result; a request that fails becomes an error row, never an exception
    (an exception means the backend itself died, and the stage retries the missing work).

    `describe()` is recorded with every sample: {"backend": name, "version": ...,
    "engine_args": {...}, optionally "chat_template": the template's label when not the model's own}. `name` is the backend's name in the samples' lineage.
    """

    name: str

    def describe(self) -> dict: ...

    def generate(self, requests: list[dict]) -> Iterator[list[dict]]: ...


@dataclass(frozen=True)
class BackendOptions:
    """The run's settings a backend factory gets besides the model entry."""

    # The recipe's teacher.engine_args: engine arguments over the entry's `serving` defaults.
    engine_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # sampling.seed; each request also carries its own seed
    batch_size: int = 16  # result rows per yielded batch (sampling.batch_size): what a crash can lose
    # Where engines run (the recipe's cluster section): a Ray address (None: a local Ray),
    # engine replicas, and what each one needs.
    ray_address: str | None = None
    replicas: int = 1
    cpus_per_replica: float = 1
    resources_per_replica: dict[str, float] = field(default_factory=dict)
    accelerator_type: str | None = None
    wait_for_replicas_s: float | None = None
    # A bucket URI the engines load the weights from instead of model.model (a student made by
    # a run whose directory is in a bucket); None: model.model.
    model_source: str | None = None
    quiet: bool = True  # keep engine logs out of the driver's output
    # sampling.reproducible: results that do not depend on how requests happen to be batched
    # (the machine's load), at some cost in throughput.
    reproducible: bool = False


BackendFactory = Callable[["Teacher", BackendOptions], Backend]


def _load_builtins() -> None:
    # Importing the modules runs their @BACKENDS.register decorators; done on the first lookup,
    # not at import (the package also holds vLLM's CPU plug-in, which needs torch).
    from distill.backends import openai_http, replay, vllm_ray  # noqa: F401


BACKENDS = Registry("backend", group="distill.backends", builtins=_load_builtins)


def backend_name(model: Teacher) -> str:
    """The backend that serves a model entry: its own `backend`, else by whether it has recorded
    answers or an endpoint."""
    if model.backend:
        return model.backend
    if model.replay is not None:
        return "replay"
    return "openai-http" if model.endpoint is not None else "vllm-ray"
