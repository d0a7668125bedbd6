"""The demo agent's logs, imported once per session (an import of a thousand calls takes seconds),
and the figures the clustering tests measured, printed at the end of the run."""

import pytest

from support.usage_logs import DemoStore

MEASURED: list[str] = []


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoStore:
    """1200 calls of the demo agent, 30% of them without workload_id."""
    return DemoStore(tmp_path_factory.mktemp("demo"), calls=1200, seed=7, untagged=0.3)


@pytest.fixture(scope="session")
def demo_tagged(tmp_path_factory) -> DemoStore:
    """300 calls, every one tagged."""
    return DemoStore(tmp_path_factory.mktemp("demo-tagged"), calls=300, seed=8, untagged=0.0)


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.write_sep("-", "usage clustering, measured")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture
def measured() -> list[str]:
    """Append a line to print it in the run's summary (figures a test checks against a floor)."""
    return MEASURED
