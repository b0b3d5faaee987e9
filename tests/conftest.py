"""Shared fixtures. ``sim`` runs the Glacier emulator in a subprocess for one test.

Flags for it come from ``@pytest.mark.sim_args("--delay", "Standard=0", ...)`` on the test.
"""

from __future__ import annotations

import pytest

from glacierfs.sim.testing import SimProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim_args(*args): extra command-line flags for the "
                                       "sim fixture's emulator")


@pytest.fixture
def sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A running emulator (``glacierfs.sim.testing.SimProcess``) with a fresh data dir."""
    marker = request.node.get_closest_marker("sim_args")
    args = list(marker.args) if marker else []
    base = tmp_path_factory.mktemp("sim")
    proc = SimProcess(base / "data", args=args, log_path=base / "sim.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def glacier(sim: SimProcess):
    """A boto3 Glacier client for ``sim`` with botocore retries disabled, so every injected
    fault surfaces as the exception a caller would see."""
    return sim.client(max_attempts=1)


@pytest.fixture
def vault(glacier) -> str:
    """A fresh vault named ``test``."""
    glacier.create_vault(vaultName="test")
    return "test"
