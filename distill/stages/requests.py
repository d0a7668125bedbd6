"""What the sample and evaluate stages send a backend: the chat turns and sampling parameters
of a request, from the recipe. One place, so the teacher and the student are asked alike."""

from __future__ import annotations

import json


def sampling_params(recipe, seed: int) -> dict:
    s = recipe.sampling
    return {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
        "max_tokens": s.max_tokens, "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
        "stop": list(s.stop) or None, "seed": seed, **s.extra,
    }


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
