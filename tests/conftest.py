import os
import sys

from hypothesis import HealthCheck, settings

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# the repository (for `fastface`) and tests/ itself (for the shared helpers: strategies,
# likeness_models), which test modules in the subfolders import by name
for folder in (TESTS, ROOT):
    if folder not in sys.path:
        sys.path.insert(0, folder)

settings.register_profile("default", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fastface_log_reaches_caplog(monkeypatch):
    """fastface.hosts.common gives the 'fastface' logger its own stdout handler and stops
    propagation (WebUIs print to stdout); let records reach pytest's caplog during tests."""
    monkeypatch.setattr(logging.getLogger("fastface"), "propagate", True)
