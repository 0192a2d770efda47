"""The real `ses-relay` command line, run as a subprocess: check-config, serve, send-test, suppression.

`python -m relay` is the console script's entry point (`relay.cli:main`) without depending on PATH.
Every process is stopped in a `finally`; waits are generous and no test asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.fake_ses import FakeSES
from testkit.net import free_port, wait_for_port
from testkit.serve import (
    CLI_TIMEOUT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    assert_one_line_error,
    http_get,
    port_open,
    relay_env,
    run_cli,
    send_test,
    serve_config,
    serving,
    smtp_send,
    wait_exit,
    write_config,
)
from testkit.tools import require_tool

# -- check-config --------------------------------------------------------------------------------


def test_check_config_good_file_exits_0(tmp_path):
    path = write_config(tmp_path, {"smtp": {"listen": ["127.0.0.1:2600"], "max_recipients": 10},
                                   "ses": {"region": "eu-west-1"}})
    result = run_cli(["check-config", "--config", str(path)], relay_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert "127.0.0.1:2600" in result.stdout
    assert "eu-west-1" in result.stdout
    assert str(tmp_path / "state" / "suppression.db") in result.stdout
    assert result.stderr == ""


def test_check_config_without_a_file_uses_defaults(tmp_path):
    result = run_cli(["check-config"], relay_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:2525" in result.stdout


def test_check_config_unknown_key_exits_2_naming_the_key(tmp_path):
    path = write_config(tmp_path, {"smtp": {"lisen": ["127.0.0.1:2600"]}})
    result = run_cli(["check-config", "--config", str(path)], relay_env(tmp_path))
    assert result.returncode == 2
    assert "smtp.lisen" in result.stderr and "unknown key" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_config_missing_file_exits_2(tmp_path):
    path = tmp_path / "nope.yaml"
    result = run_cli(["check-config", "--config", str(path)], relay_env(tmp_path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_bad_environment_override_exits_2(tmp_path):
    result = run_cli(["check-config"], relay_env(tmp_path, SES_RELAY_SMTP__MAX_RECIPIENTS="abc"))
    assert result.returncode == 2
    assert "smtp.max_recipients" in result.stderr
    assert "environment" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_config_exits_2_without_binding(tmp_path):
    port = free_port()
    path = write_config(tmp_path, {"smtp": {"listen": [f"127.0.0.1:{port}"], "max_recipients": "many"}})
    result = run_cli(["serve", "--config", str(path)], relay_env(tmp_path))
    assert result.returncode == 2
    assert "smtp.max_recipients" in result.stderr
    assert "Traceback" not in result.stderr


# -- serve against moto --------------------------------------------------------------------------


def serve_send_and_scrape(tmp_path: Path, moto) -> tuple[str, list[dict[str, Any]], int]:
    env = relay_env(tmp_path)
    config = serve_config(free_port(), free_port(), moto.endpoint_url)
    with serving(tmp_path, env, config) as served:
        result = send_test(served, env)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert any(line.startswith("DATA: 250") for line in result.stdout.splitlines()), result.stdout
        (stored,) = moto.raw_messages()
        assert "bob@example.org" in stored["destinations"]
        assert stored["id"] in result.stdout  # the 250 reply carries SES's message id
        assert http_get(served.http_url + "/healthz") == (200, "ok\n")
        status, body = http_get(served.http_url + "/readyz")
        assert status == 200, body
        assert json.loads(body)["ready"] is True
        status, metrics = http_get(served.http_url + "/metrics")
        assert status == 200
        code = served.terminate()
        logs = served.log_lines()
    return metrics, logs, code


def test_serve_sends_through_moto_and_stops_cleanly_on_sigterm(tmp_path, moto):
    metrics, logs, code = serve_send_and_scrape(tmp_path, moto)
    assert "ses_relay_messages_sent_total 1.0" in metrics
    assert 'ses_relay_smtp_transactions_total{result="2xx"} 1.0' in metrics
    assert code == 0
    transactions = [entry for entry in logs if entry.get("event") == "transaction"]
    assert len(transactions) == 1
    assert transactions[0]["reply"] == "250"
    assert transactions[0]["mail_from"] == "alice@example.com"
    assert transactions[0]["recipients"] == 1
    assert any(entry.get("event") == "stopped" for entry in logs)
    assert logs[-1].get("event") == "stopped"
    for entry in logs:
        assert {"ts", "level", "logger", "msg"} <= set(entry)


def test_metrics_pass_promtool_check(tmp_path, moto):
    promtool = require_tool("promtool")
    metrics, _, _ = serve_send_and_scrape(tmp_path, moto)
    result = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sigterm_lets_the_transaction_in_flight_finish_and_refuses_new_connections(tmp_path):
    with FakeSES(latency=2.0) as fake:
        env = relay_env(tmp_path)
        config = serve_config(free_port(), free_port(), fake.endpoint_url)
        with serving(tmp_path, env, config) as served:
            outcome: list[Any] = []

            def client() -> None:
                try:
                    outcome.append(smtp_send(served.smtp_port, ["bob@example.org"]))
                except BaseException as exc:  # reported by the test thread
                    outcome.append(exc)

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while fake.received < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert fake.received >= 1, "the relay never called SES"
            served.process.send_signal(signal.SIGTERM)
            served.wait_for_log(lambda entry: entry.get("event") == "stopping")
            time.sleep(0.2)  # the listening socket is closed right after that line is written
            try:
                with socket.create_connection(("127.0.0.1", served.smtp_port), timeout=10) as sock:
                    greeting = sock.recv(1024)
                assert greeting.startswith(b"421") or greeting == b"", greeting
            except ConnectionRefusedError:
                pass
            thread.join(timeout=60)
            assert not thread.is_alive()
            assert len(outcome) == 1
            assert not isinstance(outcome[0], BaseException), outcome[0]
            code, reply = outcome[0]
            assert code == 250, reply
            assert fake.message_ids and fake.message_ids[0] in reply.decode()
            assert served.process.wait(timeout=STOP_TIMEOUT) == 0
            logs = served.log_lines()
            assert [entry["reply"] for entry in logs if entry.get("event") == "transaction"] == ["250"]
            assert logs[-1].get("event") == "stopped"


# -- dry run and missing credentials -------------------------------------------------------------


def test_dry_run_needs_no_credentials_and_saves_the_message(tmp_path):
    env = relay_env(tmp_path, aws=False)
    assert not any(key.startswith("AWS_") for key in env)
    config = serve_config(free_port(), free_port(), None)
    with serving(tmp_path, env, config, "--dry-run") as served:
        status, body = http_get(served.http_url + "/readyz")
        assert status == 200, body
        result = send_test(served, env)
        assert result.returncode == 0, (result.stdout, result.stderr)
        data_lines = [line for line in result.stdout.splitlines() if line.startswith("DATA:")]
        assert len(data_lines) == 1 and "250" in data_lines[0] and "dry run" in data_lines[0]
        assert served.terminate() == 0
        served.log_lines()
    files = list((tmp_path / "state" / "dry-run").glob("*.eml"))
    assert len(files) == 1, list((tmp_path / "state").rglob("*"))
    assert files[0].stem in data_lines[0]  # the reply names the saved message
    content = files[0].read_bytes()
    lines = content.splitlines()
    assert lines[0] == b"X-Relay-Mail-From: <alice@example.com>"
    assert lines[1] == b"X-Relay-Rcpt-To: <bob@example.org>"
    assert lines[2] == b"From: alice@example.com"  # then the original message, unchanged
    assert b"Subject: ses-relay test message" in lines
    assert any(line.startswith(b"Test message from ses-relay") for line in lines)
    assert lines.index(b"") > lines.index(b"Subject: ses-relay test message")


def dry_run_capture_of_send_test(tmp_path: Path) -> bytes:
    env = relay_env(tmp_path, aws=False)
    with serving(tmp_path, env, serve_config(free_port(), free_port(), None), "--dry-run") as served:
        result = send_test(served, env)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert served.terminate() == 0
    (saved,) = (tmp_path / "state" / "dry-run").glob("*.eml")
    return saved.read_bytes()


def test_send_test_sends_crlf_line_endings(tmp_path):
    content = dry_run_capture_of_send_test(tmp_path)
    assert content.count(b"\n") == content.count(b"\r\n"), content


def test_serve_without_credentials_starts_explains_and_is_not_ready(tmp_path):
    env = relay_env(
        tmp_path,
        aws=False,
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    config = serve_config(free_port(), free_port(), f"http://127.0.0.1:{free_port()}")
    with serving(tmp_path, env, config) as served:
        status, body = http_get(served.http_url + "/readyz")
        assert status == 503, body
        assert json.loads(body)["ready"] is False
        assert json.loads(body)["checks"]["sender"]["ok"] is False
        assert served.terminate() == 0
        logs = served.log_lines()
    help_lines = [entry for entry in logs if entry.get("event") == "no_credentials"]
    assert len(help_lines) == 1, logs
    assert "AWS_PROFILE" in help_lines[0]["msg"] and "--dry-run" in help_lines[0]["msg"]
    assert help_lines[0]["level"] == "warning"


# -- startup failures: one line, no traceback ----------------------------------------------------


@pytest.mark.parametrize("taken", ["smtp", "http"])
def test_port_in_use_fails_with_one_line(tmp_path, taken):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        smtp_port, http_port = (busy, free_port()) if taken == "smtp" else (free_port(), busy)
        config = serve_config(smtp_port, http_port, "http://127.0.0.1:9")
        with serving(tmp_path, relay_env(tmp_path), config, wait=False) as served:
            code = wait_exit(served.process)
            stderr = served.stderr()
    assert code != 0
    assert_one_line_error(stderr, f"127.0.0.1:{busy}", "HTTP" if taken == "http" else "SMTP")


def test_suppression_path_that_is_a_directory_fails_with_one_line(tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    config = serve_config(free_port(), free_port(), "http://127.0.0.1:9", suppression={"path": str(directory)})
    with serving(tmp_path, relay_env(tmp_path), config, wait=False) as served:
        code = wait_exit(served.process)
        stderr = served.stderr()
    assert code != 0
    assert_one_line_error(stderr, str(directory))
    assert not port_open(served.smtp_port)


def test_unknown_aws_profile_fails_with_one_line(tmp_path):
    env = relay_env(tmp_path, AWS_PROFILE="nonexistent")
    config = serve_config(free_port(), free_port(), "http://127.0.0.1:9")
    with serving(tmp_path, env, config, wait=False) as served:
        code = wait_exit(served.process)
        stderr = served.stderr()
    assert code != 0
    assert_one_line_error(stderr, "nonexistent", "profile")


def test_unusable_dry_run_directory_fails_with_one_line(tmp_path):
    state = tmp_path / "state-is-a-file"
    state.write_text("not a directory")
    config = serve_config(free_port(), free_port(), None,
                          suppression={"path": str(tmp_path / "suppression.db")})
    env = relay_env(tmp_path, aws=False, SES_RELAY_STATE_DIR=str(state))
    with serving(tmp_path, env, config, "--dry-run", wait=False) as served:
        code = wait_exit(served.process)
        stderr = served.stderr()
    assert code != 0
    assert_one_line_error(stderr, "dry-run")


# -- suppression CLI -----------------------------------------------------------------------------


def test_suppression_add_check_list_remove(tmp_path):
    env = relay_env(tmp_path)
    result = run_cli(["suppression", "add", "x@example.org", "--reason", "BOUNCE", "--detail", "5.1.1 no such user"], env)
    assert result.returncode == 0, result.stderr
    assert "x@example.org" in result.stdout
    assert (tmp_path / "state" / "suppression.db").exists()

    result = run_cli(["suppression", "check", "x@example.org"], env)
    assert result.returncode == 0, result.stderr
    assert "BOUNCE" in result.stdout
    result = run_cli(["suppression", "check", "X@Example.ORG"], env)
    assert result.returncode == 0, "lookups fold case"

    result = run_cli(["suppression", "list"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    address, reason, stamp, source = lines[0].split("\t")
    assert (address, reason, source) == ("x@example.org", "BOUNCE", "manual")
    assert stamp.endswith("Z") and "T" in stamp
    assert "1 suppressed" in result.stderr

    result = run_cli(["suppression", "remove", "x@example.org"], env)
    assert result.returncode == 0, result.stderr
    result = run_cli(["suppression", "check", "x@example.org"], env)
    assert result.returncode == 1
    assert "not suppressed" in result.stdout
    result = run_cli(["suppression", "remove", "x@example.org"], env)
    assert result.returncode == 1
    result = run_cli(["suppression", "list"], env)
    assert (result.returncode, result.stdout) == (0, "")


def test_suppression_cli_with_a_bad_reason_is_a_usage_error(tmp_path):
    result = run_cli(["suppression", "add", "x@example.org", "--reason", "SPAM"], relay_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_suppression_cli_with_memory_backend_explains(tmp_path):
    path = write_config(tmp_path, {"suppression": {"backend": "memory"}})
    result = run_cli(["suppression", "list", "--config", str(path)], relay_env(tmp_path))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "memory")


def smtp_send_until(port, recipient, wanted, seconds=5.0):
    """Send until the reply is `wanted` or the deadline passes; the last (code, reply)."""
    deadline = time.monotonic() + seconds
    while True:
        code, reply = smtp_send(port, [recipient])
        if code == wanted or time.monotonic() > deadline:
            return code, reply
        time.sleep(0.05)


@pytest.mark.parametrize("region_env, scope", [
    ({"AWS_REGION": "eu-west-3"}, "eu-west-3"),  # botocore alone would ignore this one
    ({"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
])
def test_region_from_the_environment_signs_the_send(tmp_path, region_env, scope):
    with FakeSES() as fake:
        env = {k: v for k, v in relay_env(tmp_path).items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
        env.update(region_env)
        config = serve_config(free_port(), free_port(), fake.endpoint_url)
        config["ses"]["region"] = None
        with serving(tmp_path, env, config) as served:
            code, reply = smtp_send(served.smtp_port, ["bob@example.org"])
            assert code == 250, reply
            assert served.terminate() == 0
        (request,) = fake.requests
        assert f"/{scope}/ses/aws4_request" in request.headers["Authorization"]


def test_suppression_added_by_the_cli_is_honoured_by_the_running_relay(tmp_path):
    env = relay_env(tmp_path, aws=False)
    config = serve_config(free_port(), free_port(), None)
    with serving(tmp_path, env, config, "--dry-run") as served:
        code, reply = smtp_send(served.smtp_port, ["x@example.org"])
        assert code == 250, reply
        result = run_cli(["suppression", "add", "x@example.org", "--reason", "BOUNCE"], env)
        assert result.returncode == 0, result.stderr
        # The relay caches lookups; another process's write is seen within 0.25 s.
        code, reply = smtp_send_until(served.smtp_port, "x@example.org", 550)
        assert code == 550, reply
        assert reply.decode().startswith("5.1.1")
        result = run_cli(["suppression", "remove", "x@example.org"], env)
        assert result.returncode == 0, result.stderr
        code, reply = smtp_send_until(served.smtp_port, "x@example.org", 250)
        assert code == 250, reply
        assert served.terminate() == 0
        served.log_lines()


def test_send_test_in_flight_during_shutdown_reports_success(tmp_path):
    """The relay answers 250, then hangs up with 421 during shutdown: send-test's message was sent."""
    with FakeSES(latency=2.0) as fake:
        env = relay_env(tmp_path)
        config = serve_config(free_port(), free_port(), fake.endpoint_url)
        with serving(tmp_path, env, config) as served:
            client = subprocess.Popen(
                [sys.executable, "-m", "relay", "send-test", "--from", "alice@example.com",
                 "--to", "bob@example.org", "--smtp", served.smtp],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                deadline = time.monotonic() + STARTUP_TIMEOUT
                while fake.received < 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert fake.received >= 1, "the relay never called SES"
                served.process.send_signal(signal.SIGTERM)
                stdout, stderr = client.communicate(timeout=CLI_TIMEOUT)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.communicate(timeout=10)
            assert served.process.wait(timeout=STOP_TIMEOUT) == 0
    assert "DATA: 250" in stdout, (stdout, stderr)
    assert client.returncode == 0, (stdout, stderr)


def test_event_loop_choice_is_honoured(tmp_path):
    """serve runs on uvloop when asked (it is in the test extras) and on asyncio's loop when asked."""
    import importlib.util

    assert importlib.util.find_spec("uvloop") is not None, "uvloop is a test dependency"
    for choice in ("uvloop", "asyncio"):
        port, http = free_port(), free_port()
        env = {**os.environ, "SES_RELAY_STATE_DIR": str(tmp_path / choice), "SES_RELAY_EVENT_LOOP": choice,
               "SES_RELAY_SES__DRY_RUN": "true", "SES_RELAY_SMTP__LISTEN": f'["127.0.0.1:{port}"]',
               "SES_RELAY_HTTP__LISTEN": f"127.0.0.1:{http}", "SES_RELAY_LOGGING__LEVEL": "debug"}
        process = subprocess.Popen([sys.executable, "-m", "relay", "serve"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(port)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                assert client.noop()[0] == 250
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        (listening,) = [line for line in map(json.loads, stderr.splitlines()) if line.get("event") == "listening"]
        assert listening["event_loop"] == choice
