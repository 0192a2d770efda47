"""External programs the tests drive (swaks, postfix, promtool, php, systemd-analyze, ...)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of an external client; with CI=true a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI must install it: see .ci/run)")
        pytest.skip(f"{name} is not installed")
    return path
