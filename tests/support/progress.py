"""A progress bar for tests of code that reports progress."""

from __future__ import annotations


class CountingBar:
    """A progress bar that remembers what it was told (the start/advance protocol of distill's bars)."""

    def __init__(self):
        self.total, self.done = None, 0

    def start(self, total, completed=0):
        self.total, self.done = total, completed

    def advance(self, n):
        self.done += n
