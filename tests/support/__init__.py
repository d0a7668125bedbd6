"""Helpers the tests share, imported as `from support.<module> import ...`: the tiny model and its
teacher entry, fake backends, a progress bar that counts, a local Ray cluster. Fixtures that
wrap them live in tests/conftest.py."""
