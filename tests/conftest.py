"""Test configuration: hypothesis profiles (CI gets fewer examples)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

# The OMA DM session fixtures (a release chain, a server on loopback, the emulated fleet).
from dm_fixtures import fleet, lab, release  # noqa: F401
