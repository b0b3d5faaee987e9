"""Argument checks shared by ``glacierfs wait`` and ``glacierfs select``."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["wait", "/nonexistent"],
                                     ["select", "/nonexistent", "--query", "SELECT * FROM archive",
                                      "--output", "s3://b/p", "--wait"]])
@pytest.mark.parametrize("timeout", ["-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_not_seconds_is_a_usage_error(command, timeout):
    proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", *command, "--timeout", timeout],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "argument --timeout" in proc.stderr and "Traceback" not in proc.stderr
