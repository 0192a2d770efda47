"""TLS and AUTH with the real clients README names for it: PHPMailer and Postfix (as relayhost).

The relay gets a self-signed certificate from testkit.tls. Where a test must prove that TLS carried
the send, the relay runs the hardened Docker example of README "Security": `allowed_networks: []`
(nobody sends without AUTH) and AUTH offered only after TLS, so a message that reaches the fake SES
went through TLS and AUTH; the client's own record (PHPMailer's dialogue, Postfix's maillog) shows the
handshake as well. The Postfix tests run a private instance (testkit/postfix.py) and flush its queue
instead of waiting for its retry timers.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from testkit.fake_ses import FakeSES
from testkit.postfix import RelayhostPostfix, sasl_client_settings, tls_client_settings
from testkit.tls import write_certificate
from testkit.tools import require_private_postfix, require_tool
from testkit.waiting import wait_until

pytestmark = pytest.mark.client

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
PHPMAILER_AUTOLOAD = Path("/usr/share/php/libphp-phpmailer/autoload.php")
PROCESS_TIMEOUT = 60  # seconds; every external process gets one
POSTFIX_TIMEOUT = 20  # seconds for Postfix to relay or defer a message

USER = "wordpress"
PASSWORD = "Tls-Client-Pa55word-4k"
SENDER = "alice@example.com"
RECIPIENT = "bob@example.org"


def users_file(directory: Path) -> Path:
    path = directory / "users"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{USER}:{hashed}:*@example.com\n")
    return path


def tls_relay(relay_factory, fake_ses: FakeSES, directory: Path, *, auth: bool):
    """A relay with STARTTLS on its plain port and an implicit-TLS port: (relay, plain, implicit, cert).

    `auth`: the hardened Docker example (nobody sends without AUTH, AUTH only after TLS); else
    loopback clients may send without AUTH, as by default.
    """
    cert, key = write_certificate(directory / "certs", "relay.test")
    smtp: dict = {"listen": ["127.0.0.1:0"],
                  "tls": {"cert": str(cert), "key": str(key), "implicit_listen": ["127.0.0.1:0"]}}
    if auth:
        smtp |= {"allowed_networks": [], "auth": {"required": True, "users_file": str(users_file(directory))}}
    relay = relay_factory(fake_ses.endpoint_url, smtp=smtp)
    plain, implicit = (port for _, port in relay.relay.smtp_addresses)
    return relay, plain, implicit, cert


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a client; stdout and stderr are combined so failures show the whole SMTP dialogue."""
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=PROCESS_TIMEOUT, check=False)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode("utf-8", "replace"), "")


# ------------------------------------------------------------------------------------------ PHPMailer


def phpmailer(port: int, *, secure: str, trust: str | Path = "", user: str = "",
              subject: str = "PHPMailer over TLS") -> subprocess.CompletedProcess[str]:
    """tests/clients/phpmailer_tls_send.php: `secure` auto|tls|ssl, `trust` ''|noverify|CA file."""
    if not PHPMAILER_AUTOLOAD.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("libphp-phpmailer is not installed (CI must install it: see .ci/run)")
        pytest.skip("libphp-phpmailer is not installed")
    return run([require_tool("php"), str(CLIENTS / "phpmailer_tls_send.php"), str(port), secure, str(trust),
                user, PASSWORD if user else "", SENDER, RECIPIENT, subject, "sent by PHPMailer"])


def assert_sent(fake_ses: FakeSES, subject: str) -> None:
    (request,) = fake_ses.requests
    assert request.outcome == "ok"
    assert request.destinations == [RECIPIENT]
    assert request.raw_message is not None
    assert f"Subject: {subject}\r\n".encode() in request.raw_message


def test_phpmailer_defaults_upgrade_to_starttls_and_refuse_the_self_signed_certificate(
    fake_ses, relay_factory, tmp_path
):
    """README: PHPMailer STARTTLSes whenever it is offered and then rejects a self-signed certificate."""
    relay, plain, _, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=False)
    result = phpmailer(plain, secure="auto")  # no SMTPSecure, no SMTPAutoTLS, no SMTPOptions: the defaults
    assert result.returncode == 1, result.stdout
    assert "CLIENT -> SERVER: STARTTLS" in result.stdout  # chosen by PHPMailer, not asked for
    assert "certificate verify failed" in result.stdout, result.stdout
    assert fake_ses.requests == []


def test_phpmailer_defaults_send_in_clear_when_no_starttls_is_offered(fake_ses, relay_factory):
    """The contrast: the same defaults against a relay without TLS send (SMTPAutoTLS only follows EHLO)."""
    relay = relay_factory(fake_ses.endpoint_url)
    result = phpmailer(relay.smtp_port, secure="auto", subject="no TLS offered")
    assert result.returncode == 0, result.stdout
    assert "STARTTLS" not in result.stdout
    assert_sent(fake_ses, "no TLS offered")


def test_phpmailer_with_auth_and_defaults_refuses_the_certificate_and_never_authenticates(
    fake_ses, relay_factory, tmp_path
):
    relay, plain, _, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    result = phpmailer(plain, secure="auto", user=USER)
    assert result.returncode == 1, result.stdout
    assert "certificate verify failed" in result.stdout, result.stdout
    _, starttls, after_tls = result.stdout.partition("CLIENT -> SERVER: STARTTLS")
    assert starttls and "AUTH" not in after_tls, result.stdout
    assert fake_ses.requests == []
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "ok"}) == 0


@pytest.mark.parametrize("secure", ["auto", "tls"])
def test_phpmailer_trusting_the_certificate_sends_over_starttls_with_auth(
    fake_ses, relay_factory, tmp_path, secure
):
    relay, plain, _, cert = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    result = phpmailer(plain, secure=secure, trust=cert, user=USER, subject=f"STARTTLS {secure}")
    assert result.returncode == 0, result.stdout
    before_tls, _, after_tls = result.stdout.partition("CLIENT -> SERVER: STARTTLS")
    # AUTH is offered only after the handshake, and PHPMailer used it there
    assert "250-STARTTLS" in before_tls and "AUTH" not in before_tls, result.stdout
    assert "250-AUTH LOGIN PLAIN" in after_tls
    assert "SERVER -> CLIENT: 235" in after_tls
    assert_sent(fake_ses, f"STARTTLS {secure}")
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "ok"}) == 1


def test_phpmailer_implicit_tls_ssl_with_auth(fake_ses, relay_factory, tmp_path):
    relay, _, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    result = phpmailer(implicit, secure="ssl", trust=cert, user=USER, subject="implicit TLS")
    assert result.returncode == 0, result.stdout
    assert "STARTTLS" not in result.stdout  # TLS from the first byte
    assert "SERVER -> CLIENT: 235" in result.stdout
    assert_sent(fake_ses, "implicit TLS")
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "ok"}) == 1


def test_phpmailer_implicit_tls_refuses_the_self_signed_certificate_without_options(
    fake_ses, relay_factory, tmp_path
):
    relay, _, implicit, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    result = phpmailer(implicit, secure="ssl", user=USER)
    assert result.returncode == 1, result.stdout
    assert "certificate verify failed" in result.stdout, result.stdout
    assert fake_ses.requests == []


def test_phpmailer_with_verification_off_sends(fake_ses, relay_factory, tmp_path):
    """README's other way out: verify_peer and verify_peer_name false (works, but trusts anyone)."""
    relay, plain, _, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    result = phpmailer(plain, secure="auto", trust="noverify", user=USER, subject="no verify")
    assert result.returncode == 0, result.stdout
    assert_sent(fake_ses, "no verify")


# -------------------------------------------------------------------------------------------- Postfix

POSTFIX_MESSAGE = (b"From: Alice Example <alice@example.com>\r\nTo: bob@example.org\r\n"
                   b"Subject: Postfix over TLS\r\n\r\nrelayed by Postfix\r\n")


@pytest.fixture
def postfix_client() -> Iterator[Callable[..., RelayhostPostfix]]:
    """`postfix_client(relay_port, level=..., ...)` starts a private Postfix relaying to the relay.

    `level` is smtp_tls_security_level; `trust` (a certificate) is copied where Postfix's daemons can
    read it and becomes smtp_tls_CAfile; at verify the certificate must name the relayhost (the test
    certificate has an IP SAN 127.0.0.1), or `match` when given; `sasl`: AUTH as USER.
    """
    require_private_postfix()
    started: list[RelayhostPostfix] = []

    def start(relay_port: int, *, level: str, trust: Path | None = None, match: str | None = None,
              sasl: bool = False) -> RelayhostPostfix:
        instance = RelayhostPostfix(relay_port)
        started.append(instance)
        ca_file = instance.install("relay-ca.crt", trust.read_bytes()) if trust is not None else None
        instance.settings |= tls_client_settings(level, ca_file=ca_file, match=match)
        if sasl:
            instance.settings |= sasl_client_settings(instance.nexthop, USER, PASSWORD)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()


def wait_for(condition: Callable[[], object], postfix: RelayhostPostfix, what: str) -> None:
    try:
        wait_until(condition, POSTFIX_TIMEOUT, f"timed out waiting for {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{postfix.queue_listing()}\n{postfix.log()}") from None


def assert_relayed(fake_ses: FakeSES, postfix: RelayhostPostfix, handshake: str) -> None:
    """The message reached the fake SES, Postfix logged the TLS handshake `handshake`, its queue is empty."""
    wait_for(lambda: fake_ses.requests, postfix, "the message relayed by Postfix")
    assert_sent(fake_ses, "Postfix over TLS")
    # postlogd writes the log asynchronously: the line may land a moment after the delivery
    wait_for(lambda: re.search(rf"{handshake} TLS connection established to 127\.0\.0\.1", postfix.log()),
             postfix, f"Postfix's '{handshake} TLS connection established' log line")
    wait_for(lambda: "Mail queue is empty" in postfix.queue_listing(), postfix, "an empty Postfix queue")


def assert_deferred(fake_ses: FakeSES, postfix: RelayhostPostfix, reason: str) -> None:
    """Postfix keeps the message, deferred for `reason`, also after a flush; nothing reached SES."""
    wait_for(lambda: reason in postfix.queue_listing(), postfix, f"the message deferred: {reason}")
    postfix.flush()  # a retry now, not at the next timer: still refused
    wait_for(lambda: postfix.log().count("status=deferred") >= 2, postfix, "the retry deferred as well")
    assert reason in postfix.queue_listing()
    assert "status=bounced" not in postfix.log()
    assert fake_ses.requests == []


def test_postfix_encrypt_relays_over_starttls(fake_ses, relay_factory, tmp_path, postfix_client):
    relay, plain, _, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=False)
    postfix = postfix_client(plain, level="encrypt")
    postfix.submit(SENDER, [RECIPIENT], POSTFIX_MESSAGE)
    assert_relayed(fake_ses, postfix, "Untrusted")  # encrypted, certificate not checked (as README says)


def test_postfix_encrypt_defers_when_the_relay_offers_no_tls(fake_ses, relay_factory, postfix_client):
    relay = relay_factory(fake_ses.endpoint_url)  # no smtp.tls: no STARTTLS in EHLO
    postfix = postfix_client(relay.smtp_port, level="encrypt")
    postfix.submit(SENDER, [RECIPIENT], POSTFIX_MESSAGE)
    assert_deferred(fake_ses, postfix, "TLS is required, but was not offered")


def test_postfix_verify_with_the_relay_certificate_as_ca_file_relays(
    fake_ses, relay_factory, tmp_path, postfix_client
):
    relay, plain, _, cert = tls_relay(relay_factory, fake_ses, tmp_path, auth=False)
    postfix = postfix_client(plain, level="verify", trust=cert)
    postfix.submit(SENDER, [RECIPIENT], POSTFIX_MESSAGE)
    assert_relayed(fake_ses, postfix, "Verified")


@pytest.mark.parametrize("wrong", ["another certificate", "another name"])
def test_postfix_verify_defers_when_the_certificate_does_not_match(
    fake_ses, relay_factory, tmp_path, postfix_client, wrong
):
    relay, plain, _, cert = tls_relay(relay_factory, fake_ses, tmp_path, auth=False)
    if wrong == "another certificate":  # same name, another key: not the relay's
        trust, _ = write_certificate(tmp_path / "other", "relay.test")
        postfix = postfix_client(plain, level="verify", trust=trust)
    else:  # the relay's own certificate, but Postfix expects a name it does not carry
        postfix = postfix_client(plain, level="verify", trust=cert, match="mail.example.net")
    postfix.submit(SENDER, [RECIPIENT], POSTFIX_MESSAGE)
    assert_deferred(fake_ses, postfix, "Server certificate not verified")


def test_postfix_sasl_auth_over_encrypt_relays(fake_ses, relay_factory, tmp_path, postfix_client):
    """The hardened Docker example: the relay admits nobody without AUTH, and AUTH only after TLS."""
    if not any(Path("/usr/lib").glob("*/sasl2/libplain.so*")):  # else: "No worthy mechs found"
        if os.environ.get("CI") == "true":
            pytest.fail("libsasl2-modules is not installed (CI must install it: see .ci/run)")
        pytest.skip("libsasl2-modules is not installed (Postfix's SASL client has no PLAIN/LOGIN)")
    relay, plain, _, _ = tls_relay(relay_factory, fake_ses, tmp_path, auth=True)
    postfix = postfix_client(plain, level="encrypt", sasl=True)
    postfix.submit(SENDER, [RECIPIENT], POSTFIX_MESSAGE)
    assert_relayed(fake_ses, postfix, "Untrusted")
    assert relay.metric("ses_relay_smtp_auth_total", {"result": "ok"}) == 1
