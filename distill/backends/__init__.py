"""Teacher backends. A backend turns request rows (work_id, messages, sampling_params)
into result rows (work_id, text, prompt_tokens, completion_tokens, finish_reason, error),
yielded in batches as they finish, so the caller can write each batch at once."""

from __future__ import annotations

from typing import Iterator, Protocol


class Backend(Protocol):
    name: str

    def describe(self) -> dict: ...

    def generate(self, requests: list[dict]) -> Iterator[list[dict]]: ...
