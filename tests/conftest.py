"""Test configuration: hypothesis profiles (CI gets fewer examples), shared fixtures."""

import os
import resource
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

# The OMA DM session fixtures (a release chain, a server on loopback, the emulated fleet).
from dm_fixtures import fleet, lab, release  # noqa: F401


@pytest.fixture
def descriptors_past_fd_setsize() -> Iterator[None]:
    """Descriptors below 1100 are all taken while the test runs, so the sockets it opens get numbers past
    FD_SETSIZE (1024), which select() refuses: as in a server or emulator with many connections open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    taken = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="session")
def base_url() -> None:
    """No base URL for the browser tests (they open full URLs). Defined here because
    pytest-playwright's own fallback is a fixture on a plugin object, which pytest 9 deprecates
    with a warning in every run that uses it."""
    return None
