"""`ses-relay serve` under a service manager: readiness notification (Type=notify) and reload on SIGHUP.

The test plays systemd: it binds the AF_UNIX datagram socket that $NOTIFY_SOCKET names and reads what
the relay sends. Reload: the config file is rewritten, then SIGHUP, as `systemctl reload` does.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from testkit.fake_ses import FakeSES
from testkit.net import free_port
from testkit.serve import (
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    Served,
    port_open,
    relay_env,
    serve_config,
    serving,
    smtp_send,
)
from testkit.waiting import wait_until


@contextmanager
def notify_socket(kind: str) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the $NOTIFY_SOCKET value naming it (a path, or '@' + abstract name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(STARTUP_TIMEOUT)
    directory = tempfile.TemporaryDirectory(dir="/tmp")  # short: AF_UNIX paths are limited to 107 bytes
    try:
        if kind == "path":
            address = f"{directory.name}/notify"
            sock.bind(address)
        else:
            name = f"ses-relay-test-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            address = "@" + name
        yield sock, address
    finally:
        sock.close()
        directory.cleanup()


def receive(sock: socket.socket) -> dict[str, str]:
    datagram = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in datagram.splitlines() if line)


def receive_until(sock: socket.socket, key: str) -> list[dict[str, str]]:
    """Every notification up to and including the first one that carries `key`."""
    seen = [receive(sock)]
    while key not in seen[-1]:
        seen.append(receive(sock))
    return seen


def config_for(fake_ses: FakeSES, level: str = "info") -> dict:
    return serve_config(free_port(), free_port(), fake_ses.endpoint_url, logging={"level": level})


def rewrite_config(served: Served, tmp_path: Path, config: dict) -> None:
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")  # the file serving() wrote


def events(served: Served, name: str) -> list[dict]:
    return [line for line in served.log_lines() if line.get("event") == name]


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_once_smtp_accepts_and_stopping_on_sigterm(tmp_path, fake_ses, kind):
    config = config_for(fake_ses)
    with notify_socket(kind) as (sock, address):
        env = relay_env(tmp_path, NOTIFY_SOCKET=address)
        with serving(tmp_path, env, config, wait=False) as served:
            ready = receive(sock)
            smtp_up, http_up = port_open(served.smtp_port), port_open(served.http_port)  # at once, no retry
            assert ready.get("READY") == "1", ready
            assert (smtp_up, http_up) == (True, True)
            assert served.smtp in ready["STATUS"]
            served.process.send_signal(signal.SIGTERM)
            after = receive_until(sock, "STOPPING")
            assert served.process.wait(timeout=STOP_TIMEOUT) == 0
    assert after[-1]["STOPPING"] == "1"
    assert all("READY" not in item for item in after)  # no second READY=1 while stopping


def test_without_notify_socket_serve_runs_as_before(tmp_path, fake_ses):
    env = relay_env(tmp_path)
    env.pop("NOTIFY_SOCKET", None)
    with serving(tmp_path, env, config_for(fake_ses)) as served:
        assert smtp_send(served.smtp_port, ["bob@example.org"])[0] == 250
        assert served.terminate() == 0
    assert not [line for line in served.log_lines() if line["level"] in ("warning", "error")]


def test_sighup_applies_the_new_log_level(tmp_path, fake_ses):
    config = config_for(fake_ses, level="warning")
    with notify_socket("abstract") as (sock, address):
        env = relay_env(tmp_path, NOTIFY_SOCKET=address)
        with serving(tmp_path, env, config) as served:
            assert receive(sock).get("READY") == "1"
            assert smtp_send(served.smtp_port, ["bob@example.org"])[0] == 250
            assert events(served, "transaction") == []  # info lines are below "warning"

            rewrite_config(served, tmp_path, {**config, "logging": {"level": "debug", "format": "json"},
                                              "smtp": {**config["smtp"], "hostname": "renamed.test"}})
            served.process.send_signal(signal.SIGHUP)
            reload_notes = receive_until(sock, "READY")
            served.wait_for_log(lambda entry: entry.get("event") == "reloaded")
            assert smtp_send(served.smtp_port, ["carol@example.org"])[0] == 250
            wait_until(lambda: events(served, "transaction"), message="no transaction line after the reload")
            assert served.process.poll() is None
            assert served.terminate() == 0
    assert reload_notes[0]["RELOADING"] == "1" and int(reload_notes[0]["MONOTONIC_USEC"]) > 0
    debug = [line for line in served.log_lines() if line["level"] == "debug"]
    assert any(line.get("values") == {"logging.level": "debug"} for line in debug), debug
    # the EHLO name cannot change under a running server: the operator is told a restart is needed
    assert [line["sections"] for line in events(served, "restart_needed")] == [["smtp"]]


@pytest.mark.parametrize("broken", ["smtp: [\n", "logging: {level: loud}\n", None])
def test_sighup_with_a_bad_config_keeps_the_relay_and_its_settings(tmp_path, fake_ses, broken):
    config = config_for(fake_ses, level="info")
    with serving(tmp_path, relay_env(tmp_path), config) as served:
        if broken is None:
            (tmp_path / "serve.yaml").unlink()  # the file vanished
        else:
            (tmp_path / "serve.yaml").write_text(broken, encoding="utf-8")
        served.process.send_signal(signal.SIGHUP)
        served.wait_for_log(lambda entry: entry.get("event") == "reload_failed")
        assert served.process.poll() is None
        assert smtp_send(served.smtp_port, ["bob@example.org"])[0] == 250
        wait_until(lambda: events(served, "transaction"), message="the old level (info) no longer logs")
        assert served.terminate() == 0
    failed = events(served, "reload_failed")
    assert [line["level"] for line in failed] == ["error"]
    assert "serve.yaml" in failed[0]["msg"]
    assert not [line for line in served.log_lines() if line["level"] == "debug"]

