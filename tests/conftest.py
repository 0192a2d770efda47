"""Shared fixtures: moto's server over HTTP, the fake SES, a config factory and a real relay in a thread.

The helpers behind them live in `testkit` (tests import them from there; nothing imports this file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, load_config
from testkit.fake_ses import FakeSES
from testkit.moto_server import MotoServer, run_moto_server
from testkit.relay_thread import RunningRelay, start_relay

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def _aws_test_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach real AWS or read the developer's AWS config."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "SES_RELAY_")):
            monkeypatch.delenv(key)
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with run_moto_server() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """moto with a clean state and example.com verified as a sending domain."""
    moto_server.reset()
    moto_server.verify_domain()
    return moto_server


@pytest.fixture
def fake_ses() -> Iterator[FakeSES]:
    with FakeSES() as fake:
        yield fake


@pytest.fixture
def relay_config(tmp_path: Path):
    """Build a Config for a test relay: free ports, state in tmp_path, no rate limit and no quota hold (so no
    GetAccount read among the fake's requests); `overrides` merge on top."""

    def build(ses_endpoint: str | None = None, **overrides: Any) -> Config:
        base: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "smtp": {"listen": ["127.0.0.1:0"], "hostname": "relay.test", "shutdown_grace": 5},
            "http": {"listen": "127.0.0.1:0"},
            "ses": {"endpoint_url": ses_endpoint, "region": "us-east-1", "max_send_rate": None,
                    "quota_reserve": 0, "request_timeout": 5, "connect_timeout": 2},
            "logging": {"level": "debug", "format": "json"},
            # Most tests are about SES's verdict reaching the client; the spool tests choose their mode.
            "delivery": {"mode": "direct"},
        }
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **values}
            else:
                base[section] = values
        return load_config(None, environ={}, overrides=base)

    return build


@pytest.fixture
def relay_factory(relay_config) -> Iterator:
    """`relay_factory(ses_endpoint, **overrides)` starts a relay; all are stopped after the test."""
    running: list[RunningRelay] = []

    def start(ses_endpoint: str | None = None, relay_kwargs: dict[str, Any] | None = None,
              **overrides: Any) -> RunningRelay:
        handle = start_relay(relay_config(ses_endpoint, **overrides), **(relay_kwargs or {}))
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.stop()
