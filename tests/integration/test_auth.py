"""AUTH PLAIN/LOGIN and sender authorisation over real sockets (smtplib, msmtp), with TLS from testkit.tls.

The client is 127.0.0.1; `allowed_networks: [10.0.0.0/8]` makes it a client from outside, which may
send only after AUTH (smtp.auth.required).
"""

from __future__ import annotations

import base64
import logging
import smtplib
import subprocess
from pathlib import Path

import bcrypt
import pytest

from relay.smtp import replies
from relay.smtp.auth import FailureThrottle
from testkit.tls import client_context, write_certificate
from testkit.tools import require_tool

PASSWORD = "S3cret-Pa55word-9q"
OTHER_PASSWORD = "Wrong-Pa55word-7z"
MESSAGE = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: auth\r\n\r\nhello\r\n"


def text(reply: str) -> bytes:
    return reply[4:].encode()


def users_file(tmp_path: Path, lines: list[str] | None = None) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "users"
    # alice: $2y$ as htpasswd -B writes it, restricted to example.com; ops: any sender
    path.write_text("\n".join(lines or [
        "# user:hash[:senders]",
        f"alice:$2y${hashed[4:]}:*@example.com,<>",
        f"ops:{hashed}",
    ]) + "\n")
    return path


def auth_relay(relay_factory, fake_ses, tmp_path, *, required=True, networks=("10.0.0.0/8",), **tls):
    cert, key = write_certificate(tmp_path / "certs")
    smtp = {
        "allowed_networks": list(networks),
        "auth": {"required": required, "users_file": str(users_file(tmp_path))},
        "tls": {"cert": str(cert), "key": str(key), **tls},
    }
    return relay_factory(fake_ses.endpoint_url, smtp=smtp)


def tls_client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    client.starttls(context=client_context())
    client.ehlo()
    return client


def plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login() would try every mechanism in turn)."""
    client.user, client.password = user, password
    return client.auth("PLAIN", client.auth_plain)


def test_auth_not_offered_in_clear_only_after_starttls(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 538
        client.starttls(context=client_context())
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]


def test_outside_client_must_authenticate_then_sends(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    with tls_client(relay.smtp_port) as client:
        assert client.mail("alice@example.com") == (530, text(replies.AUTH_REQUIRED))
        assert client.login("alice", PASSWORD)[0] == 235  # smtplib picks PLAIN
        client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
    with tls_client(relay.smtp_port) as client:
        client.user, client.password = "ops", PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("anyone@example.net", ["bob@example.org"],
                        MESSAGE.replace(b"alice@example.com", b"anyone@example.net"))
    assert [r.outcome for r in fake_ses.requests] == ["ok", "ok"]
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "ok"}) == 2


def test_a_cancelled_auth_is_501_and_the_session_goes_on(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    with tls_client(relay.smtp_port) as client:
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd("*") == (501, b"5.7.0 Auth aborted")  # RFC 4954 4: "*" cancels
        assert client.login("alice", PASSWORD)[0] == 235
        client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
    assert len(fake_ses.message_ids) == 1


def test_without_auth_required_an_outside_client_is_refused_at_connect(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path, required=False)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    assert refused.value.smtp_code == 554


def test_wrong_password_is_throttled_then_421_and_locked_out(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    relay.relay._smtp.auth_throttle = FailureThrottle(max_failures=3, base_delay=0.01, max_delay=0.05)
    with tls_client(relay.smtp_port) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                plain(client, "alice", OTHER_PASSWORD)
            assert failed.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:  # third failure
            plain(client, "alice", OTHER_PASSWORD)
        assert (failed.value.smtp_code, failed.value.smtp_error) == (421, text(replies.AUTH_LOCKED_OUT))
        with pytest.raises(smtplib.SMTPServerDisconnected):  # and hung up
            client.noop()
    with tls_client(relay.smtp_port) as client:  # locked out even with the right password
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            plain(client, "alice", PASSWORD)
        assert failed.value.smtp_code == 421
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "failed"}) == 3
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "locked_out"}) == 1
    assert fake_ses.requests == []


def test_reconnecting_client_pays_bcrypt_once(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    for _ in range(3):
        with tls_client(relay.smtp_port) as client:
            client.login("ops", PASSWORD)
    assert relay.relay._smtp.authenticator.bcrypt_checks == 1


def test_no_password_or_auth_blob_in_any_log(fake_ses, relay_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("mail.log", "relay", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    with tls_client(relay.smtp_port) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            plain(client, "alice", OTHER_PASSWORD)
        plain(client, "alice", PASSWORD)
    with tls_client(relay.smtp_port) as client:
        client.user, client.password = "alice", PASSWORD
        client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    secrets = []
    for password in (PASSWORD, OTHER_PASSWORD):
        secrets += [password, base64.b64encode(password.encode()).decode(),
                    base64.b64encode(f"\0alice\0{password}".encode()).decode()]
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert any("alice" in r.getMessage() for r in caplog.records)  # the logs were captured at all
    for secret in secrets:
        assert secret not in logged


def test_user_may_send_only_as_its_senders(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    with tls_client(relay.smtp_port) as client:
        client.login("alice", PASSWORD)
        code, reply = client.mail("mallory@evil.example")
        assert (code, reply) == (550, text(replies.SENDER_NOT_ALLOWED.format(
            user="alice", address="mallory@evil.example")))
        assert client.mail("Alice@Example.com")[0] == 250  # case-insensitive
        client.rcpt("bob@example.org")
        code, reply = client.data(MESSAGE.replace(b"From: Alice <alice@example.com>",
                                                  b"From: Boss <boss@evil.example>"))
        assert code == 554 and reply.startswith(b"5.7.1 ")
        client.rset()
        client.sendmail("<>", ["bob@example.org"], MESSAGE)  # <> is in alice's patterns
    assert [r.outcome for r in fake_ses.requests] == ["ok"]


def test_allowed_network_client_needs_no_auth_and_is_not_restricted(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path, networks=("127.0.0.0/8",))
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("anyone@example.net", ["bob@example.org"], MESSAGE)
    assert [r.outcome for r in fake_ses.requests] == ["ok"]


def test_require_for_auth_false_on_loopback_offers_auth_in_clear(fake_ses, relay_factory, tmp_path):
    relay = relay_factory(fake_ses.endpoint_url, smtp={
        "allowed_networks": ["10.0.0.0/8"],
        "auth": {"required": True, "users_file": str(users_file(tmp_path))},
        "tls": {"require_for_auth": False},
    })
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.login("ops", PASSWORD)
        client.sendmail("ops@example.com", ["bob@example.org"], MESSAGE)
    assert [r.outcome for r in fake_ses.requests] == ["ok"]


@pytest.mark.client
def test_msmtp_auth_over_starttls(fake_ses, relay_factory, tmp_path):
    relay = auth_relay(relay_factory, fake_ses, tmp_path)
    config = tmp_path / "msmtprc"
    config.write_text("\n".join([
        "account default", "host 127.0.0.1", f"port {relay.smtp_port}", "tls on", "tls_starttls on",
        "tls_certcheck off", "auth on", "user alice", f"password {PASSWORD}", "domain msmtp.test",
        "timeout 30", "from alice@example.com",
    ]) + "\n")
    config.chmod(0o600)
    result = subprocess.run([require_tool("msmtp"), "-C", str(config), "bob@example.org"],
                            input=b"From: alice@example.com\nSubject: msmtp auth\n\nhi\n",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
    assert result.returncode == 0, result.stdout
    assert [r.outcome for r in fake_ses.requests] == ["ok"]
