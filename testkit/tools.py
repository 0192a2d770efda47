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


def require_private_postfix() -> None:
    """A private Postfix instance can start: postfix and postqueue installed, and root (master must
    start as root; its daemons then drop to the postfix user). Fails under CI=true, else skips."""
    require_tool("postfix")
    require_tool("postqueue")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the Postfix tests must run as root (they start a private Postfix instance)")
        pytest.skip("the Postfix tests need root to start a private Postfix instance")
