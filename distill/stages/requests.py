"""What the sample and evaluate stages send a backend: the chat turns and sampling parameters
of a request, from the recipe. One place, so the teacher and the student are asked alike."""

from __future__ import annotations

import json


def sampling_params(recipe, seed: int, teacher_logprobs: bool = False) -> dict:
    """The engine's sampling parameters. `teacher_logprobs` (the sample stage's requests): with
    `sampling.logprobs: k` the engine also returns its top-k log-probabilities of every generated
    token (vLLM's `logprobs`); without that setting the parameters are as they always were."""
    s = recipe.sampling
    params = {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
        "max_tokens": s.max_tokens, "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
        "stop": list(s.stop) or None, "seed": seed, **s.extra,
    }
    if teacher_logprobs and s.logprobs:
        params["logprobs"] = s.logprobs
    return params


def messages_for(recipe, prompt: dict) -> list[dict]:
    """The turns sent for a stored prompt: its conversation, or its question as a user turn; the
    recipe's system prompt goes first unless the conversation has its own."""
    system = recipe.prompts.system_prompt
    turns = json.loads(prompt["messages"]) if prompt.get("messages") else [{"role": "user", "content": prompt["question"]}]
    if system is not None and turns[0]["role"] not in ("system", "developer"):
        turns = [{"role": "system", "content": system}] + turns
    return turns


def request(recipe, prompt: dict, work_id: str, params: dict) -> dict:
    """A backend request row for a stored prompt: its turns, its tools when it has any."""
    row = {"work_id": work_id, "messages": messages_for(recipe, prompt), "sampling_params": params}
    if prompt.get("tools"):
        row["tools"] = json.loads(prompt["tools"])
    return row


def call_schema(tools: list[dict]) -> dict:
    """The JSON Schema of a non-empty list of calls to these tools: {"name": one tool's name,
    "arguments": fitting that tool's parameters}. A grammar built from it lets a decoder write
    only well-formed calls to tools that exist; which tool and which values stay the model's choice."""
    calls = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        calls.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                      "required": ["name", "arguments"], "additionalProperties": False})
    return {"type": "array", "items": {"anyOf": calls}, "minItems": 1}


def constrained(recipe, prompt: dict, sample_index: int) -> bool:
    """Whether this sample of the prompt is decoded under its call grammar: the first
    round(share x n) indices of every round of n, for prompts with tools."""
    share = recipe.sampling.constrained_calls
    if not share or not prompt.get("tools"):
        return False
    n = recipe.sampling.n
    return sample_index % n < max(1, round(share * n))
