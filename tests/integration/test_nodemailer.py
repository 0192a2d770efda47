"""Nodemailer (the SMTP client of most Node apps) -> relay -> moto's SESv2.

An unmodified Nodemailer, installed with `npm install` from the npm registry into a cache directory
keyed by its version (/var/tmp/ses-relay-tests/nodemailer-<version>, outside the checkout, so no
node_modules/ in the tree), sends through tests/clients/nodemailer_send.js. The cache is filled once
per machine; delete the directory to reinstall. With CI=true a missing node or npm fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from relay.ses import errors
from relay.suppression.base import Reason, SuppressionEntry
from testkit.tools import require_tool

pytestmark = pytest.mark.client

# 9.x: the newest line that runs on Debian bookworm's node 18 (10.x needs node >= 20).
NODEMAILER_VERSION = "9.1.1"
CACHE = Path("/var/tmp/ses-relay-tests") / f"nodemailer-{NODEMAILER_VERSION}"
SCRIPT = Path(__file__).resolve().parent.parent / "clients" / "nodemailer_send.js"
INSTALL_TIMEOUT = 300  # seconds; npm downloads one small package with no dependencies
SEND_TIMEOUT = 60
FROM = '"Alice Example" <alice@example.com>'


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The node_modules directory holding Nodemailer, installed on first use."""
    node = require_tool("node")
    npm = require_tool("npm")
    installed = CACHE / "node_modules"
    if (installed / "nodemailer" / "package.json").is_file():
        return installed
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the cache and renamed into place, so an interrupted or concurrent run never
    # leaves a half-installed cache behind.
    staging = Path(tempfile.mkdtemp(prefix=f"{CACHE.name}.", dir=CACHE.parent))
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--no-save",
             "--no-package-lock", "--loglevel=error", f"nodemailer@{NODEMAILER_VERSION}"],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if result.returncode != 0:
            pytest.fail(f"npm install nodemailer@{NODEMAILER_VERSION} failed ({node}):\n{result.stderr}")
        try:
            staging.rename(CACHE)
        except OSError:
            if not (installed / "nodemailer" / "package.json").is_file():
                raise  # not a concurrent run that got there first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return installed


def nodemailer_send(node_modules: Path, port: int, tmp_path: Path, *, to: list[str], bcc: list[str] = (),
                    subject: str = "hello from Nodemailer", body: str = "Nodemailer body text"
                    ) -> tuple[int, dict[str, Any]]:
    """(exit status, what the script printed: sendMail()'s info, or the error)."""
    message = tmp_path / "message.txt"
    message.write_text(f"{subject}\n{body}\n", encoding="utf-8")
    args = [require_tool("node"), str(SCRIPT), "127.0.0.1", str(port), FROM, ",".join(to), str(message)]
    if bcc:
        args.append(",".join(bcc))
    result = subprocess.run(args, capture_output=True, text=True, timeout=SEND_TIMEOUT, check=False,
                            env={**os.environ, "NODE_PATH": str(node_modules)})
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output (exit {result.returncode}):\n{result.stderr}"
    return result.returncode, json.loads(lines[-1])


def headers_of(raw: str) -> str:
    return raw.split("\r\n\r\n", 1)[0]


def test_nodemailer_message_reaches_ses_with_bcc_only_in_the_envelope(moto, relay_factory, node_modules,
                                                                      tmp_path):
    relay = relay_factory(moto.endpoint_url)
    status, info = nodemailer_send(node_modules, relay.smtp_port, tmp_path,
                                   to=["bob@example.org", "carol@example.net"], bcc=["dave@example.com"])
    assert status == 0, info
    assert sorted(info["accepted"]) == ["bob@example.org", "carol@example.net", "dave@example.com"]
    assert info["rejected"] == []
    (stored,) = moto.raw_messages()
    assert info["response"] == errors.SENT.format(message_id=stored["id"])
    for recipient in ("bob@example.org", "carol@example.net", "dave@example.com"):
        assert recipient in stored["destinations"]
    headers = headers_of(stored["raw_data"])
    assert "\r\nBcc:" not in "\r\n" + headers, headers
    assert "dave@example.com" not in headers, headers
    assert "\r\nFrom: Alice Example <alice@example.com>\r\n" in "\r\n" + headers + "\r\n", headers
    assert "Subject: hello from Nodemailer" in headers
    assert "Nodemailer body text" in stored["raw_data"]


def test_nodemailer_reports_a_suppressed_recipient_as_rejected(moto, relay_factory, node_modules, tmp_path):
    relay = relay_factory(moto.endpoint_url)
    relay.call(relay.store.put(SuppressionEntry("gone@example.org", Reason.BOUNCE)))
    status, info = nodemailer_send(node_modules, relay.smtp_port, tmp_path,
                                   to=["bob@example.org", "gone@example.org"])
    # Nodemailer sends to the recipients the relay accepted and lists the refused one in `rejected`.
    assert status == 0, info
    assert info["accepted"] == ["bob@example.org"]
    assert info["rejected"] == ["gone@example.org"]
    (stored,) = moto.raw_messages()
    assert "bob@example.org" in stored["destinations"]
    # moto adds the To: header's addresses to its record of the destinations, so the relay's count
    # says what SendEmail's Destination held.
    assert relay.metric("ses_relay_recipients_sent_total") == 1


def test_nodemailer_fails_when_every_recipient_is_suppressed(moto, relay_factory, node_modules, tmp_path):
    relay = relay_factory(moto.endpoint_url)
    relay.call(relay.store.put(SuppressionEntry("gone@example.org", Reason.COMPLAINT)))
    status, info = nodemailer_send(node_modules, relay.smtp_port, tmp_path, to=["gone@example.org"])
    assert status == 1, info
    assert info["code"] == "EENVELOPE"
    assert info["responseCode"] == 550
    assert info["rejected"] == ["gone@example.org"]
    assert moto.raw_messages() == []
