"""`ses-relay serve` and the other subcommands as real subprocesses: config files, environment, waiting, SMTP.

`python -m relay` is the console script's entry point (`relay.cli:main`) without depending on PATH.
Every process is stopped in a `finally`; waits are generous and nothing here asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
MESSAGE = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: cli test\r\n\r\nHello.\r\n"


def relay_env(tmp_path: Path, *, aws: bool = True, **extra: str) -> dict[str, str]:
    """os.environ (fake AWS credentials from the autouse fixture) + a private state directory."""
    env = dict(os.environ)
    if not aws:
        env = {key: value for key, value in env.items() if not key.startswith("AWS_")}
    env["SES_RELAY_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str],
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def serve_config(smtp_port: int, http_port: int, endpoint_url: str | None,
                 **sections: dict) -> dict[str, Any]:
    data: dict[str, Any] = {
        "smtp": {"listen": [f"127.0.0.1:{smtp_port}"], "hostname": "relay.test"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "ses": {"endpoint_url": endpoint_url, "region": "us-east-1", "max_send_rate": None,
                "quota_reserve": 0, "connect_timeout": 2, "request_timeout": 10},
        "logging": {"format": "json", "level": "info"},
        # SES's verdict reaches the client; tests of the spool modes choose theirs.
        "delivery": {"mode": "direct"},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        try:
            return error.code, error.read().decode()
        finally:
            error.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Served:
    process: subprocess.Popen
    stderr_path: Path
    smtp_port: int
    http_port: int
    _files: list = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def smtp(self) -> str:
        return f"127.0.0.1:{self.smtp_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed: the test fails on any line that is not JSON."""
        entries = []
        for line in self.stderr().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                pytest.fail(f"stderr line is not JSON: {line!r}\n--- stderr ---\n{self.stderr()}")
        return entries

    def wait_for_log(self, predicate, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if predicate(entry):
                    return
            time.sleep(0.05)
        pytest.fail(f"log line never appeared\n--- stderr ---\n{self.stderr()}")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}\n--- stderr ---\n{self.stderr()}")
            if port_open(self.http_port) and port_open(self.smtp_port):
                return
            time.sleep(0.05)
        pytest.fail(f"serve did not listen within {STARTUP_TIMEOUT}s\n--- stderr ---\n{self.stderr()}")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@contextmanager
def serving(tmp_path: Path, env: dict[str, str], config: dict[str, Any] | None, *extra_args: str,
            wait: bool = True) -> Iterator[Served]:
    args = [sys.executable, "-m", "relay", "serve", *extra_args]
    smtp_port = http_port = 0
    if config is not None:
        args += ["--config", str(write_config(tmp_path, config, "serve.yaml"))]
        smtp_port = int(config["smtp"]["listen"][0].rsplit(":", 1)[1])
        http_port = int(config["http"]["listen"].rsplit(":", 1)[1]) if config["http"]["listen"] else 0
    stderr_path = tmp_path / f"serve-{time.monotonic_ns()}.stderr"
    stdout = open(tmp_path / "serve.stdout", "ab")  # closed in finally
    stderr = open(stderr_path, "wb")
    process = subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    served = Served(process, stderr_path, smtp_port, http_port)
    try:
        if wait:
            served.wait_ready()
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        stdout.close()
        stderr.close()


def send_test(served: Served, env: dict[str, str],
              to: str = "bob@example.org") -> subprocess.CompletedProcess:
    return run_cli(["send-test", "--from", "alice@example.com", "--to", to, "--smtp", served.smtp], env)


def smtp_send(port: int, recipients: list[str], data: bytes = MESSAGE) -> tuple[int, bytes]:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60)
    try:
        client.ehlo()
        code, reply = client.mail("alice@example.com")
        assert code == 250, reply
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code != 250:
                return code, reply
        return client.data(data)
    finally:
        client.close()


def assert_one_line_error(result_stderr: str, *needles: str) -> None:
    assert "Traceback" not in result_stderr, result_stderr
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("ses-relay: error:"), result_stderr
    for needle in needles:
        assert needle in last, result_stderr


def wait_exit(process: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running although it could not start")
