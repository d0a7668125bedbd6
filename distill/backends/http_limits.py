"""Request and token budgets per minute for a served teacher, shared by the requests of one
generate() call: a hosted API's rate limits are kept by the client, not discovered by 429s."""

from __future__ import annotations

import asyncio
import math
import time

from distill.teachers import Endpoint


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """No tokenizer for a served model here: ~4 characters a token, plus the chat markup."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return math.ceil(chars / 4) + 4 * len(messages)


class Budget:
    """Units per minute, spread evenly: at most `burst` units at once, refilled continuously.

    A request bigger than the burst waits for a full budget and then goes, leaving a debt
    the next requests wait for, so the long-run rate is exact whatever the request sizes.
    """

    def __init__(self, per_minute: float, burst: float):
        self.rate = per_minute / 60.0
        self.burst = burst
        self.available = burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()  # first come, first served
        self.returned = asyncio.Event()  # wakes the waiter early when usage gives budget back

    def _refill(self) -> None:
        now = time.monotonic()
        self.available = min(self.burst, self.available + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, units: float) -> None:
        async with self.lock:
            while True:
                self._refill()
                need = min(units, self.burst)
                if self.available >= need:
                    self.available -= units
                    return
                self.returned.clear()
                try:
                    await asyncio.wait_for(self.returned.wait(), (need - self.available) / self.rate)
                except asyncio.TimeoutError:
                    pass

    def give_back(self, units: float) -> None:
        """Return (or, negative, charge more of) a budget already taken."""
        self._refill()
        self.available = min(self.burst, self.available + units)
        if units > 0:
            self.returned.set()


class Session:
    """State shared by the requests of one generate() call, inside its event loop."""

    def __init__(self, endpoint: Endpoint):
        self.requests = Budget(endpoint.requests_per_minute, 1) if endpoint.requests_per_minute else None
        tpm = endpoint.tokens_per_minute
        self.tokens = Budget(tpm, max(1.0, tpm / 60)) if tpm else None  # a second's worth at once
        self.not_before = 0.0  # monotonic time before which nobody sends (a 429's Retry-After)
        self.warned = False

    async def wait_turn(self, tokens: int) -> None:
        while (pause := self.not_before - time.monotonic()) > 0:
            await asyncio.sleep(pause)
        if self.requests:
            await self.requests.take(1)
        if self.tokens:
            await self.tokens.take(tokens)
