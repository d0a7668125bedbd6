"""The Ray Serve app of `distill serve`: a Router deployment with a FastAPI ingress in front (the
OpenAI-compatible endpoints, limits, the client key) and one Student deployment per student (a
vLLM engine). The routing itself is distill.serve.router; the large model is reached over HTTP.

Endpoints: POST /v1/chat/completions (`stream: true` too: the checked answer sent as chunks,
distill.serve.stream), GET /v1/models, GET /health. The router's metrics: distill.serve.metrics.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from distill.backends.http_wire import chat_url, error_text
from distill.serve.config import Fallback, ServeConfig
from distill.serve.router import Router, Served, UpstreamError, error_body
from distill.serve.stream import chunks, sse

log = logging.getLogger(__name__)
api = FastAPI(title="distill serve")
ROUTE_HEADER = "x-distill-route"


class HTTPUpstream:
    """The fallback model over its OpenAI-compatible API; the key comes from the environment."""

    def __init__(self, fallback: Fallback):
        import httpx

        headers = {}
        if fallback.api_key_env:
            key = os.environ.get(fallback.api_key_env)
            if not key:
                raise RuntimeError(f"fallback.api_key_env names {fallback.api_key_env}, which is not set where the "
                                   "router runs; export it before `distill serve`")
            headers["Authorization"] = f"Bearer {key}"
        self.url = chat_url(fallback.base_url)
        self.client = httpx.AsyncClient(timeout=fallback.timeout_seconds, headers=headers)

    async def chat(self, request: dict) -> dict:
        import httpx

        body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
        try:
            r = await self.client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise UpstreamError("timed out", 504) from None
        except httpx.HTTPError as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise UpstreamError(f"HTTP {r.status_code}: {error_text(r)}")
        try:
            return r.json()
        except ValueError:
            raise UpstreamError("its answer is not JSON") from None


class RemoteStudent:
    """A Student deployment behind its handle, as the router asks students."""

    def __init__(self, handle):
        self.handle = handle

    async def answer(self, request: dict):
        return await self.handle.answer.remote(request)


@serve.deployment(name="Student", health_check_period_s=10, health_check_timeout_s=30)
class StudentDeployment:
    def __init__(self, student: dict):
        from distill.serve.config import Student
        from distill.serve.student import StudentEngine

        self.engine = StudentEngine(Student.model_validate(student))

    async def answer(self, request: dict):
        return await self.engine.answer(request)

    async def check_health(self) -> None:
        await self.engine.check_health()


def _error(status: int, message: str, kind: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


def take_stream(body: dict) -> tuple[bool, bool]:
    """Takes `stream` and `stream_options` out of a request body: the router answers every request
    whole, and the answer is streamed once complete. Returns (stream, include_usage)."""
    stream, options = bool(body.pop("stream", False)), body.pop("stream_options", None)
    return stream, stream and isinstance(options, dict) and bool(options.get("include_usage"))


def respond(served: Served, stream: bool = False, include_usage: bool = False) -> Response:
    """The router's answer as the client asked for it: a ChatCompletion, or (`stream`) the same
    answer as server-sent chunks. An error is a JSON error body with its status either way."""
    headers = {ROUTE_HEADER: served.header}
    if not stream or served.status != 200:
        return JSONResponse(served.body, status_code=served.status, headers=headers)
    return StreamingResponse(sse(chunks(served.body, include_usage)), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


@serve.deployment(name="Router")
@serve.ingress(api)
class RouterDeployment:
    def __init__(self, config: dict, students: dict):
        from distill.serve.metrics import RayMetrics
        from distill.serve.served_log import ServedLog
        from distill.usage.classifier import RequestClassifier

        self.config = ServeConfig.model_validate(config)
        self.key = None
        if env := self.config.api_key_env:
            self.key = os.environ.get(env)
            if not self.key:
                raise RuntimeError(f"api_key_env names {env}, which is not set where the router runs")
        classifier = RequestClassifier.load(self.config.classifier) if self.config.classifier else None
        call_log = ServedLog(self.config.log_dir) if self.config.log_dir else None
        self.router = Router(self.config, classifier, {n: RemoteStudent(h) for n, h in students.items()},
                             HTTPUpstream(self.config.fallback), call_log, metrics=RayMetrics())
        self.in_flight = 0
        self.started = time.time()

    def _refused(self, request: Request) -> JSONResponse | None:
        if self.key is None:
            return None
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth.removeprefix("Bearer ").encode(), self.key.encode()) or \
                not auth.startswith("Bearer "):
            return _error(401, "missing or wrong API key: send it as `Authorization: Bearer KEY`",
                          "invalid_request_error", "invalid_api_key")
        return None

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        if refused := self._refused(request):
            return refused
        limits = self.config.limits
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_request_bytes:
            return _error(413, f"request body of {size} bytes; the limit is {limits.max_request_bytes}",
                          "invalid_request_error", "request_too_large")
        if self.in_flight >= limits.max_concurrency:
            return _error(429, f"{limits.max_concurrency} requests in flight already; retry shortly",
                          "rate_limit_error", "too_many_requests", {"retry-after": "1"})
        self.in_flight += 1
        try:
            raw = await request.body()
            if len(raw) > limits.max_request_bytes:
                return _error(413, f"request body of {len(raw)} bytes; the limit is {limits.max_request_bytes}",
                              "invalid_request_error", "request_too_large")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return _error(400, f"the body is not JSON: {e}", "invalid_request_error")
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
                return _error(400, "the body must be a JSON object with a non-empty `messages` list",
                              "invalid_request_error")
            stream, include_usage = take_stream(body)
            return respond(await self.router.handle(body), stream, include_usage)
        finally:
            self.in_flight -= 1

    @api.get("/v1/models")
    async def models(self, request: Request):
        if refused := self._refused(request):
            return refused
        created = int(self.started)
        names = [s.name for s in self.config.students] + [self.config.fallback.model]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "distill"}
                                           for n in names]}

    @api.get("/health")
    async def health(self):
        return {"status": "ok", "in_flight": self.in_flight,
                "students": {name: b.state for name, b in self.router.breakers.items()}}


def build_app(config: ServeConfig):
    """The bound app: the router in front of one Student deployment per student."""
    from distill.backends.vllm_ray import cpu_engine_env

    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"), **cpu_engine_env()}
    students = {}
    for s in config.students:
        students[s.name] = StudentDeployment.options(
            name=f"Student-{s.name}", num_replicas=s.replicas, max_ongoing_requests=64,
            ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": env}}).bind(s.model_dump())
    # More than the router lets in, so the requests over the limit reach it and get their 429.
    return RouterDeployment.options(max_ongoing_requests=2 * config.limits.max_concurrency,
                                    ray_actor_options={"num_cpus": 0.25}).bind(config.model_dump(), students)


def start(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, ray_address: str | None = None) -> str:
    """Starts Ray (or joins `ray_address`), Ray Serve on host:port, and the app; returns its base URL."""
    from distill import ray_runtime

    ray_runtime.start_ray(ray_address, False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name="distill", route_prefix="/", blocking=False)
    return f"http://{host}:{port}/v1"


def stop() -> None:
    serve.shutdown()
