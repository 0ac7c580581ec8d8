"""Shared pytest fixtures and hooks (keep small)."""
import pytest

import dsv3_edu  # noqa: F401  (first: sets TRITON_INTERPRET on CPU-only machines before triton is imported)

_NOTEBOOK_TIMES = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_NOTEBOOK_TIMES] = {}


@pytest.fixture
def record_notebook_time(request):
    """``record_notebook_time(name, seconds)``: listed in the terminal summary after the run."""
    return request.config.stash[_NOTEBOOK_TIMES].__setitem__


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    times = config.stash.get(_NOTEBOOK_TIMES, {})
    if times:
        terminalreporter.section("notebook execution times (DSV3_FAST=1)")
        for name, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
        terminalreporter.write_line(f"{sum(times.values()):8.1f} s  total")
