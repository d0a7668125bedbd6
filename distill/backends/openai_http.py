"""The served-teacher backend: a teacher behind an OpenAI-compatible chat API.

For teachers someone else serves: a `vllm serve`, SGLang, TGI, or a hosted API. A teacher
entry with an `endpoint:` section is sampled through this backend instead of a local engine:

    id: qwen2.5-72b-instruct-served
    model: Qwen/Qwen2.5-72B-Instruct
    revision: a09a35458c702b33eeacc393d103063234e8bc28
    licence: qwen
    params_b: 72.7
    endpoint:
      base_url: http://gpu-box:8000/v1   # /chat/completions is added
      model: qwen-72b                    # the served name; default: `model` above
      api_key_env: QWEN_API_KEY          # the key's environment variable; omit for none
      max_concurrency: 32
      requests_per_minute: 600           # omit for no limit
      tokens_per_minute: 400000          # omit for no limit
      timeout_seconds: 600
      max_attempts: 10
      send_extra_params: true            # false for hosted APIs that reject unknown fields

Each request row becomes one POST to `{base_url}/chat/completions` with `model`,
`messages`, `n: 1` and the OpenAI sampling fields (temperature, top_p, max_tokens, seed,
stop, presence_penalty, frequency_penalty). The vLLM-only ones (top_k, min_p,
repetition_penalty and `sampling.extra`) go as extra body fields when `send_extra_params`
is on, which vLLM and SGLang accept; when it is off they are dropped with a warning.
Text, finish reason and token counts come from the response. A reasoning model served
with a reasoning parser returns its trace apart from the answer; it is joined back as
`<think>\\n{trace}\\n</think>\\n\\n{answer}`, the text the local engine would have produced.
With `sampling.logprobs: k` a request asks for `logprobs: true, top_logprobs: k` and, with
`send_extra_params`, for vLLM's `return_tokens_as_token_ids`: the log-probabilities are kept by
token id, and a server that names tokens only by their text (a hosted API) gives none to keep.
A request with tools sends them as `tools`; the tool calls the server parsed (`message.tool_calls`,
e.g. `vllm serve --enable-auto-tool-choice --tool-call-parser hermes`) are kept as the result's
`tool_calls` and written into the text as `<tool_call>` blocks after the content, the form the
shipped hermes template trains the student on.

Retried, with exponential backoff and jitter (or after the server's Retry-After): HTTP 429,
408 and 5xx, connection errors and timeouts (`timeout_seconds` per attempt). A 429 with
Retry-After pauses every request, not only the one refused. Any other 4xx is not retried.
A request that fails for good, or after `max_attempts`, becomes an error row with the reason;
it never stops the run. At most `max_concurrency` requests are in flight; the request and
token budgets are spread evenly over each minute (tokens are charged as a prompt estimate
plus max_tokens before sending, and corrected by the usage the server reports).

The key is read from the environment variable named by `api_key_env` and sent as a bearer
token; it is never written anywhere. `describe()` records the backend "openai-http", the
HTTP client's version, the endpoint without credentials or query string, the served model
name and the limits; the teacher's id, revision and licence come from its entry as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
import time
from typing import Any, Iterator

import httpx

from distill.backends import BACKENDS, BackendOptions
from distill.backends.http_limits import Session, estimate_prompt_tokens
from distill.backends.http_wire import (ERROR_BODY_CHARS, chat_url, error_text, parse_completion, public_url,
                                        retry_after_seconds)
from distill.teachers import Teacher

NAME = "openai-http"
# Fields of the OpenAI chat API; the rest of a request's sampling params are vLLM extras.
OPENAI_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "frequency_penalty")
# Extras at these values change nothing, so dropping them is not worth a warning.
NEUTRAL_EXTRAS = {"top_k": (0, -1), "min_p": (0, 0.0), "repetition_penalty": (1, 1.0)}
RETRIED_STATUS = {408, 429}  # and every 5xx
BACKOFF_BASE_SECONDS = 1.0  # first retry after 0.5-1 s, doubling
BACKOFF_MAX_SECONDS = 60.0  # a retry at least once a minute notices a server that came back
RETRY_AFTER_MAX_SECONDS = 600.0  # a server asking for hours is treated as down, not waited for
FLUSH_SECONDS = 30.0  # a slow endpoint still hands over (and the caller writes) what finished

log = logging.getLogger(__name__)


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.retry_after, self.status = reason, retry, retry_after, status


class OpenAIHTTPBackend:
    """Generates one completion per request row over HTTP; yields batches of result rows as
    they finish, in any order."""

    name = NAME

    def __init__(self, teacher: Teacher, batch_size: int = 16, *, backoff_base: float = BACKOFF_BASE_SECONDS,
                 backoff_max: float = BACKOFF_MAX_SECONDS, flush_seconds: float = FLUSH_SECONDS):
        if teacher.endpoint is None:
            raise ValueError(f"teacher {teacher.id!r} has no endpoint: section; it is served by vLLM, not over HTTP")
        self.teacher = teacher
        self.endpoint = teacher.endpoint
        self.model = self.endpoint.model or teacher.model
        self.url = chat_url(self.endpoint.base_url)
        self.batch_size = batch_size
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.flush_seconds = flush_seconds
        self._headers = {"Content-Type": "application/json"}
        if env := self.endpoint.api_key_env:
            key = os.environ.get(env, "")
            if not key:  # before any request: hundreds of 401 error rows would say less
                raise ValueError(f"teacher {teacher.id!r}: endpoint.api_key_env names {env}, which is not set; "
                                 f"export {env}=<your key> and run again")
            self._headers["Authorization"] = f"Bearer {key}"
        self.stats: dict[str, int] = {}  # of the last generate(): requests, attempts, retries, errors

    def describe(self) -> dict[str, Any]:
        e = self.endpoint
        return {
            "backend": NAME,
            "version": f"httpx {httpx.__version__}",
            "engine_args": {
                "endpoint": public_url(e.base_url), "model": self.model, "max_concurrency": e.max_concurrency,
                "requests_per_minute": e.requests_per_minute, "tokens_per_minute": e.tokens_per_minute,
                "timeout_seconds": e.timeout_seconds, "max_attempts": e.max_attempts,
                "send_extra_params": e.send_extra_params,
            },
        }

    def body(self, request: dict) -> dict:
        """The JSON body for one request row."""
        params = dict(request["sampling_params"])
        top_k = params.pop("logprobs", None)  # vLLM's number; OpenAI's logprobs is a yes or no
        body: dict[str, Any] = {"model": self.model, "messages": request["messages"], "n": 1}
        if request.get("tools"):
            body["tools"] = request["tools"]
        body.update({k: params[k] for k in OPENAI_FIELDS if params.get(k) is not None})
        if top_k:
            body.update(logprobs=True, top_logprobs=top_k)
            if self.endpoint.send_extra_params:  # vLLM: tokens as "token_id:N", so they map to ids
                body["return_tokens_as_token_ids"] = True
        if self.endpoint.send_extra_params:
            body.update({k: v for k, v in params.items() if k not in OPENAI_FIELDS and v is not None})
        return body

    def generate(self, requests: list[dict]) -> Iterator[list[dict]]:
        """requests: rows with work_id, messages, sampling_params. Yields result rows:
        work_id, text, prompt_tokens, completion_tokens, finish_reason, error."""
        self.stats = {"requests": len(requests), "attempts": 0, "retries": 0, "errors": 0}
        if not requests:
            return
        self._warn_dropped(requests)
        results: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        task = loop.create_task(self._run(requests, results))
        # The caller is synchronous and writes each batch: the requests go on meanwhile.
        thread = threading.Thread(target=_drive, args=(loop, task), name="openai-http", daemon=True)
        thread.start()
        try:
            batch: list[dict] = []
            first_at = 0.0
            while True:
                wait = None if not batch else max(0.0, first_at + self.flush_seconds - time.monotonic())
                try:
                    item = results.get(timeout=wait)
                except queue.Empty:
                    yield batch
                    batch = []
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if not batch:
                    first_at = time.monotonic()
                batch.append(item)
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:  # also when the caller stops early: cancel what is in flight
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop already finished and closed
                pass
            thread.join()

    async def _run(self, requests: list[dict], results: queue.Queue) -> None:
        try:
            e = self.endpoint
            session = Session(e)
            pending = iter(requests)
            limits = httpx.Limits(max_connections=e.max_concurrency, max_keepalive_connections=e.max_concurrency)
            async with httpx.AsyncClient(headers=self._headers, timeout=e.timeout_seconds, limits=limits) as client:

                async def worker() -> None:
                    for request in pending:  # one shared iterator: each request is taken once
                        results.put(await self._complete(client, session, request))

                await asyncio.gather(*(worker() for _ in range(min(e.max_concurrency, len(requests)))))
            results.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the client itself failed: the caller gets the exception
            results.put(exc)

    async def _complete(self, client: httpx.AsyncClient, session: Session, request: dict) -> dict:
        """One request row to one result row, retrying what may succeed later."""
        work_id = request["work_id"]
        try:
            body = self.body(request)
            charge = estimate_prompt_tokens(request["messages"]) + int(body.get("max_tokens") or 0)
            for attempt in range(1, self.endpoint.max_attempts + 1):
                await session.wait_turn(charge)
                self.stats["attempts"] += 1
                try:
                    row = await self._attempt(client, body)
                except _Failure as f:
                    if session.tokens:  # a refused or lost request used none of the budget
                        session.tokens.give_back(charge)
                    if not f.retry:
                        return self._error(work_id, f"{f.reason} (not retried)")
                    if attempt == self.endpoint.max_attempts:
                        return self._error(work_id, f"{f.reason} (gave up after {attempt} attempts)")
                    delay = self._delay(attempt, f.retry_after)
                    if f.status == 429 and f.retry_after is not None:  # the limit is the account's, not the request's
                        session.not_before = max(session.not_before, time.monotonic() + delay)
                    if not session.warned:
                        session.warned = True
                        log.warning("%s: %s; retrying (up to %d attempts a request)", public_url(self.url), f.reason,
                                    self.endpoint.max_attempts)
                    log.debug("%s: attempt %d failed: %s; retrying in %.1f s", work_id, attempt, f.reason, delay)
                    self.stats["retries"] += 1
                    await asyncio.sleep(delay)
                    continue
                if session.tokens and (used := row["prompt_tokens"] + row["completion_tokens"]):
                    session.tokens.give_back(charge - used)
                return {"work_id": work_id, **row}
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a surprise must cost one row, not the run
            return self._error(work_id, f"{type(exc).__name__}: {exc}")

    async def _attempt(self, client: httpx.AsyncClient, body: dict) -> dict:
        timeout = self.endpoint.timeout_seconds
        try:
            # httpx times each read and write; this bounds the whole exchange.
            response = await asyncio.wait_for(client.post(self.url, json=body), timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Failure(f"timed out after {timeout:g} s", retry=True) from None
        except httpx.TransportError as e:
            raise _Failure(f"connection error: {type(e).__name__}: {e}".rstrip(": "), retry=True) from None
        status = response.status_code
        if status != 200:
            retry = status in RETRIED_STATUS or status >= 500
            raise _Failure(f"HTTP {status}: {error_text(response)}", retry=retry,
                           retry_after=retry_after_seconds(response.headers.get("retry-after")) if retry else None,
                           status=status)
        try:
            return parse_completion(response.json(), body.get("top_logprobs") if body.get("logprobs") else None)
        except (ValueError, LookupError, TypeError, AttributeError) as e:
            raise _Failure(f"unexpected response ({type(e).__name__}: {e}): {response.text[:ERROR_BODY_CHARS]}",
                           retry=False) from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server knows best; a little jitter so retries do not bunch
            return min(retry_after, RETRY_AFTER_MAX_SECONDS) * random.uniform(1.0, 1.1)
        # Half to all of an exponentially growing step: spread out, yet a known minimum wait.
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _error(self, work_id: str, reason: str) -> dict:
        self.stats["errors"] += 1
        return {"work_id": work_id, "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                "finish_reason": "error", "error": reason}

    def _warn_dropped(self, requests: list[dict]) -> None:
        if self.endpoint.send_extra_params:
            return
        if any(r["sampling_params"].get("logprobs") for r in requests):
            log.warning("teacher %r: endpoint.send_extra_params is off, so the server is not asked for token ids "
                        "(vLLM's return_tokens_as_token_ids) and the top-k log-probabilities cannot be kept",
                        self.teacher.id)
        dropped = sorted({k for r in requests for k, v in r["sampling_params"].items()
                          if k not in OPENAI_FIELDS + ("logprobs",) and v is not None
                          and v not in NEUTRAL_EXTRAS.get(k, ())})
        if dropped:
            log.warning("teacher %r: endpoint.send_extra_params is off, so %s are not sent and the server's "
                        "defaults apply", self.teacher.id, ", ".join(dropped))


@BACKENDS.register("openai-http")
def make_http_backend(teacher: Teacher, options: BackendOptions) -> OpenAIHTTPBackend:
    """A teacher served elsewhere behind an OpenAI-compatible chat API (its entry's `endpoint:`)."""
    return OpenAIHTTPBackend(teacher, options.batch_size)


def _drive(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
