"""The CLI against a DynamoDB suppression table on moto: create-table, add, check, and a relay that honours it."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

from relay.suppression.base import Reason, SuppressionEntry
from testkit.relay_thread import start_relay


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_create_table_then_shared_list_between_cli_and_relay(moto, relay_config, tmp_path):
    env = {**os.environ, "SES_RELAY_STATE_DIR": str(tmp_path / "state"),
           "SES_RELAY_SUPPRESSION__BACKEND": "dynamodb", "SES_RELAY_SUPPRESSION__DYNAMODB__TABLE": "relay-suppression",
           "SES_RELAY_SUPPRESSION__DYNAMODB__ENDPOINT_URL": moto.endpoint_url,
           "SES_RELAY_SUPPRESSION__DYNAMODB__REGION": "us-east-1"}
    first = run_cli("suppression", "create-table", env=env)
    assert first.returncode == 0, first.stderr
    assert "created DynamoDB table relay-suppression" in first.stdout
    again = run_cli("suppression", "create-table", env=env)
    assert (again.returncode, again.stdout.strip()) == (0, "DynamoDB table relay-suppression already exists")
    assert run_cli("suppression", "add", "gone@example.org", "--reason", "BOUNCE", env=env).returncode == 0
    check = run_cli("suppression", "check", "GONE@example.org", env=env)
    assert check.returncode == 0 and "BOUNCE" in check.stdout

    config = relay_config(moto.endpoint_url, suppression={
        "backend": "dynamodb",
        "dynamodb": {"table": "relay-suppression", "endpoint_url": moto.endpoint_url, "region": "us-east-1"}})
    relay = start_relay(config)
    try:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo()
            client.mail("alice@example.com")
            assert client.rcpt("gone@example.org")[0] == 550
            assert client.rcpt("bob@example.org")[0] == 250
        # ...and what the relay writes (e.g. from feedback) the CLI sees.
        relay.call(relay.store.put(SuppressionEntry("angry@example.org", Reason.COMPLAINT, source="sns")))
    finally:
        relay.stop()
    listing = run_cli("suppression", "list", env=env)
    assert listing.returncode == 0
    assert [line.split("\t")[:2] for line in listing.stdout.splitlines()] == [
        ["angry@example.org", "COMPLAINT"], ["gone@example.org", "BOUNCE"]]


def test_missing_table_is_a_one_line_startup_error(moto, tmp_path):
    env = {**os.environ, "SES_RELAY_STATE_DIR": str(tmp_path / "state"),
           "SES_RELAY_SUPPRESSION__BACKEND": "dynamodb", "SES_RELAY_SUPPRESSION__DYNAMODB__TABLE": "nope",
           "SES_RELAY_SUPPRESSION__DYNAMODB__ENDPOINT_URL": moto.endpoint_url}
    result = run_cli("suppression", "check", "a@example.org", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("ses-relay: error:") and "create-table" in result.stderr
