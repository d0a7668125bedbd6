"""What the sample and evaluate stages send a backend: the chat turns and sampling parameters
of a request, from the recipe. One place, so the teacher and the student are asked alike."""

from __future__ import annotations


def sampling_params(recipe, seed: int) -> dict:
    s = recipe.sampling
    return {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
        "max_tokens": s.max_tokens, "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
        "stop": list(s.stop) or None, "seed": seed, **s.extra,
    }


def messages_for(recipe, question: str) -> list[dict]:
    system = recipe.prompts.system_prompt
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": question}]
