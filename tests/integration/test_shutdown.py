"""Stopping is bounded: `ses-relay serve` exits within smtp.shutdown_grace + a few seconds from any
state, a second SIGTERM skips the rest of the grace, and a send abandoned at the end is reported as
"outcome unknown". The bounds checked are liveness limits with wide margins, not speed claims.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time

import boto3

from testkit.fake_ses import FakeSES, Fault
from testkit.net import free_port
from testkit.serve import MESSAGE, relay_env, serve_config, serving
from testkit.waiting import wait_until

EXIT_MARGIN = 12.0  # seconds past the grace that the process may take, at most


def _hanging_send(port: int, outcome: list) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as client:
            client.ehlo()
            client.mail("alice@example.com")
            client.rcpt("bob@example.org")
            outcome.append(client.data(MESSAGE))
    except (smtplib.SMTPException, OSError) as exc:
        outcome.append(exc)


def _sqs_queue(moto_server) -> str:
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_server.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    return sqs.create_queue(QueueName=f"feedback-{time.monotonic_ns()}")["QueueUrl"]


def test_exits_within_the_grace_from_every_state_at_once(tmp_path, moto_server):
    grace = 2
    with FakeSES() as fake:
        # The first request is the SES suppression-list sync (it starts with the relay), the second
        # the message's SendEmail: both hang for good.
        fake.queue(Fault.hang(), Fault.hang())
        env = relay_env(tmp_path)
        config = serve_config(
            free_port(), free_port(), fake.endpoint_url,
            smtp={"shutdown_grace": grace},
            suppression={"ses_sync_interval": 60},
            feedback={"sqs": {"queue_url": _sqs_queue(moto_server), "endpoint_url": moto_server.endpoint_url,
                              "region": "us-east-1", "wait_time": 20}},
        )
        with serving(tmp_path, env, config) as served:
            wait_until(lambda: fake.received >= 1, timeout=20.0)  # the sync is blocked in its call
            in_flight: list = []
            sender = threading.Thread(target=_hanging_send, args=(served.smtp_port, in_flight))
            sender.start()
            wait_until(lambda: fake.received >= 2 or in_flight, timeout=20.0)  # the send is blocked in SES
            assert not in_flight, (in_flight, served.stderr())
            idle = socket.create_connection(("127.0.0.1", served.smtp_port), timeout=30)
            idle.recv(1024)  # the greeting
            mid_data = smtplib.SMTP("127.0.0.1", served.smtp_port, local_hostname="client.test", timeout=30)
            mid_data.ehlo()
            mid_data.mail("alice@example.com")
            mid_data.rcpt("bob@example.org")
            mid_data.putcmd("data")
            assert mid_data.getreply()[0] == 354
            mid_data.send(b"From: alice@example.com\r\nSubject: half\r\n")

            served.process.send_signal(signal.SIGTERM)
            code = served.process.wait(timeout=grace + EXIT_MARGIN)
            sender.join(10)
            logs = served.log_lines()

    assert code == 0
    assert idle.recv(1024).startswith(b"421")
    idle.close()
    mid_data.close()
    # The client that was waiting for SES never got a 250: it was hung up on with 421.
    assert in_flight and not (isinstance(in_flight[0], tuple) and in_flight[0][0] == 250), in_flight
    transactions = [entry for entry in logs if entry.get("event") == "transaction"]
    assert [entry["outcome"] for entry in transactions] == ["unknown"], transactions
    assert transactions[0]["reply"] is None
    assert any(entry.get("event") == "sends_abandoned" and entry["count"] == 1 for entry in logs)
    assert logs[-1].get("event") in ("stopped", "threads_abandoned")


def test_a_second_sigterm_during_the_drain_stops_at_once(tmp_path):
    grace = 120  # far longer than the test waits: only the second signal can end it in time
    with FakeSES() as fake:
        fake.queue(Fault.hang())
        env = relay_env(tmp_path)
        config = serve_config(free_port(), free_port(), fake.endpoint_url, smtp={"shutdown_grace": grace},
                              ses={"request_timeout": grace})
        with serving(tmp_path, env, config) as served:
            in_flight: list = []
            sender = threading.Thread(target=_hanging_send, args=(served.smtp_port, in_flight))
            sender.start()
            wait_until(lambda: fake.received >= 1, timeout=20.0)
            served.process.send_signal(signal.SIGTERM)
            served.wait_for_log(lambda entry: entry.get("event") == "stopping")
            assert served.process.poll() is None  # draining: the send is still out
            served.process.send_signal(signal.SIGTERM)
            code = served.process.wait(timeout=EXIT_MARGIN)
            sender.join(10)
            logs = served.log_lines()
    assert code == 0
    outcomes = [entry["outcome"] for entry in logs if entry.get("event") == "transaction"]
    assert outcomes == ["unknown"]


def test_a_send_that_finishes_within_the_grace_gets_its_250(tmp_path):
    with FakeSES(latency=1.0) as fake:
        env = relay_env(tmp_path)
        config = serve_config(free_port(), free_port(), fake.endpoint_url, smtp={"shutdown_grace": 20})
        with serving(tmp_path, env, config) as served:
            in_flight: list = []
            sender = threading.Thread(target=_hanging_send, args=(served.smtp_port, in_flight))
            sender.start()
            wait_until(lambda: fake.received >= 1, timeout=20.0)
            code = served.terminate()
            sender.join(10)
            logs = served.log_lines()
    assert code == 0
    assert in_flight[0][0] == 250
    assert [entry["outcome"] for entry in logs if entry.get("event") == "transaction"] == ["sent"]


def test_an_unexpected_start_up_error_is_one_line_with_its_own_exit_code(tmp_path):
    """A bug at start-up must not print a traceback; exit code 3 tells it from config (2) and known
    start-up (1) errors. The bug is planted with a sitecustomize that makes the store's open raise."""
    env = relay_env(tmp_path)
    config = serve_config(free_port(), free_port(), None, logging={"level": "info", "format": "json"})
    config["event_loop"] = "asyncio"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import relay.suppression.sqlite as s\n"
        "async def _boom(self):\n    raise RuntimeError('simulated bug')\n"
        "s.SqliteStore.open = _boom\n"
    )
    env["PYTHONPATH"] = f"{hook}:{env.get('PYTHONPATH', '')}"
    with serving(tmp_path, env, config, wait=False) as served:
        code = served.process.wait(timeout=30)
        stderr = served.stderr()
    assert code == 3, stderr
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("ses-relay: error: unexpected RuntimeError: simulated bug"), stderr
