"""Shared fixtures: free ports, moto's server over HTTP, the fake SES, and a real relay in a thread.

The relay runs in its own thread with its own event loop, exactly as `ses-relay serve` runs it, so
tests talk to it over real sockets with blocking clients (smtplib, swaks, Postfix, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.app import Relay
from relay.config import Config, load_config
from relay.metrics import RelayMetrics
from tests.fakes.fake_ses import FakeSES

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SENDER_DOMAIN = "example.com"  # verified in moto by the moto fixture


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def require_tool(name: str) -> str:
    """Path of an external client; with CI=true a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI must install it: see .ci/run)")
        pytest.skip(f"{name} is not installed")
    return path


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


class MotoServer:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port = port
        self.process = process
        self.endpoint_url = f"http://127.0.0.1:{port}"

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def verify_domain(self, domain: str = SENDER_DOMAIN) -> None:
        import boto3

        client = boto3.client("ses", region_name="us-east-1", endpoint_url=self.endpoint_url,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.verify_domain_identity(Domain=domain)

    def raw_messages(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=10) as response:
            return json.load(response)["ses"]["RawMessage"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield MotoServer(port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


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


@dataclass
class RunningRelay:
    relay: Relay
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    config: Config

    @property
    def smtp_port(self) -> int:
        return self.relay.smtp_addresses[0][1]

    @property
    def http_url(self) -> str:
        host, port = self.relay.http_address
        return f"http://{host}:{port}"

    @property
    def metrics(self) -> RelayMetrics:
        return self.relay.metrics

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the relay's loop (e.g. to edit its suppression store)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def store(self):
        return self.relay._store

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.relay.request_stop)
            self.thread.join(timeout=60)


def start_relay(config: Config, **relay_kwargs: Any) -> RunningRelay:
    relay = Relay(config, **relay_kwargs)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            await relay.start()
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
            started.set()
            return
        started.set()
        await relay._stop_requested.wait()
        await relay.stop()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    if not started.wait(30):
        raise TimeoutError("relay did not start")
    if failure:
        thread.join(10)
        raise failure[0]
    return RunningRelay(relay, loop, thread, config)


@pytest.fixture
def relay_config(tmp_path: Path):
    """Build a Config for a test relay: free ports, state in tmp_path, no rate limit; `overrides` merge on top."""

    def build(ses_endpoint: str | None = None, **overrides: Any) -> Config:
        base: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "smtp": {"listen": ["127.0.0.1:0"], "hostname": "relay.test", "shutdown_grace": 5},
            "http": {"listen": "127.0.0.1:0"},
            "ses": {"endpoint_url": ses_endpoint, "region": "us-east-1", "max_send_rate": None,
                    "request_timeout": 5, "connect_timeout": 2},
            "logging": {"level": "debug", "format": "json"},
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
