"""TLS over real sockets: STARTTLS and implicit TLS (smtplib, swaks, msmtp), TLS >= 1.2, certificate reload."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest

from relay.startup import StartupError
from testkit.tls import client_context, peer_common_name, write_certificate
from testkit.tools import require_tool
from testkit.waiting import wait_until

SENDER = "alice@example.com"
RECIPIENT = "bob@example.org"
MESSAGE = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: tls\r\n\r\nover TLS\r\n"


def tls_relay(relay_factory, fake_ses, tmp_path: Path, **smtp):
    cert, key = write_certificate(tmp_path / "certs", "first.test")
    tls = {"cert": str(cert), "key": str(key), "implicit_listen": ["127.0.0.1:0"], **smtp.pop("tls", {})}
    relay = relay_factory(fake_ses.endpoint_url, smtp={"listen": ["127.0.0.1:0"], "tls": tls, **smtp})
    plain, implicit = (port for _, port in relay.relay.smtp_addresses)
    return relay, plain, implicit, cert


def send(client: smtplib.SMTP) -> None:
    client.sendmail(SENDER, [RECIPIENT], MESSAGE)


def test_starttls_offered_and_mail_goes_through_encrypted(fake_ses, relay_factory, tmp_path):
    relay, plain, _, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    with smtplib.SMTP("127.0.0.1", plain, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=client_context(cert))  # verifies the chain
        assert code == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert peer_common_name(client.sock) == "first.test"
        client.ehlo()
        assert not client.has_extn("starttls")  # once only
        send(client)
    assert len(fake_ses.requests) == 1 and fake_ses.requests[0].outcome == "ok"


def test_implicit_tls_listener_smtp_ssl(fake_ses, relay_factory, tmp_path):
    relay, _, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    with smtplib.SMTP_SSL("127.0.0.1", implicit, local_hostname="client.test", timeout=30,
                          context=client_context(cert)) as client:
        client.ehlo()
        assert not client.has_extn("starttls")  # already encrypted
        assert peer_common_name(client.sock) == "first.test"
        send(client)
    assert len(fake_ses.requests) == 1 and fake_ses.requests[0].outcome == "ok"


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_below_1_2_is_refused(fake_ses, relay_factory, tmp_path, version):
    relay, _, implicit, _ = tls_relay(relay_factory, fake_ses, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client side of an old protocol
        context = client_context()
        try:
            context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
            context.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pytest.skip(f"this OpenSSL cannot offer {version}")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=context)
    # and the listener still serves a modern client
    with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=client_context()) as client:
        send(client)


@pytest.mark.parametrize("problem", ["missing", "garbage", "mismatched"])
def test_unusable_certificate_or_key_is_a_one_line_startup_error(fake_ses, relay_factory, tmp_path, problem):
    cert, key = write_certificate(tmp_path / "a", "a.test")
    if problem == "missing":
        cert = tmp_path / "nowhere.crt"
    elif problem == "garbage":
        cert.write_text("not a certificate\n")
    else:
        _, key = write_certificate(tmp_path / "b", "b.test")
    with pytest.raises(StartupError) as failure:
        relay_factory(fake_ses.endpoint_url, smtp={"tls": {"cert": str(cert), "key": str(key)}})
    message = str(failure.value)
    assert message.startswith("smtp.tls: ") and "\n" not in message, message


def test_reload_serves_new_certificate_to_new_connections_and_keeps_open_sessions(
    fake_ses, relay_factory, tmp_path
):
    relay, plain, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    store = relay.relay._tls
    open_session = smtplib.SMTP("127.0.0.1", plain, local_hostname="client.test", timeout=30)
    open_implicit = smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=client_context())
    try:
        open_session.starttls(context=client_context())
        assert peer_common_name(open_session.sock) == "first.test"
        # replace the files in place, as certbot's deploy hook or a secret mount would
        write_certificate(tmp_path / "certs", "second.test")
        assert relay.call(store.reload_if_changed()) is True  # what the watcher does every few seconds
        for port, wrap in ((plain, "starttls"), (implicit, "implicit")):
            if wrap == "starttls":
                client = smtplib.SMTP("127.0.0.1", port, timeout=30)
                client.starttls(context=client_context())
            else:
                client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=client_context())
            with client:
                assert peer_common_name(client.sock) == "second.test", wrap
                send(client)
        # sessions opened before the reload keep working on the certificate they negotiated
        send(open_session)
        send(open_implicit)
        assert peer_common_name(open_implicit.sock) == "first.test"
    finally:
        open_session.close()
        open_implicit.close()
    assert [r.outcome for r in fake_ses.requests] == ["ok"] * 4


def test_sighup_style_request_reloads_and_a_broken_file_keeps_the_old_certificate(
    fake_ses, relay_factory, tmp_path
):
    relay, _, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    store = relay.relay._tls
    cert.write_text("half-written\n")
    relay.loop.call_soon_threadsafe(store.request_reload)  # what SIGHUP calls
    wait_until(lambda: store.reloads == 0 and store._stamp[0][1] == len("half-written\n"),
               message="the reload attempt did not run")
    with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=client_context()) as client:
        assert peer_common_name(client.sock) == "first.test"  # still the old one
    write_certificate(tmp_path / "certs", "third.test")
    relay.loop.call_soon_threadsafe(store.request_reload)
    wait_until(lambda: store.reloads == 1, message="SIGHUP-style reload did not happen")
    with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=client_context()) as client:
        assert peer_common_name(client.sock) == "third.test"


def run(args: list[str], input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=60, check=False)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode("utf-8", "replace"))


@pytest.mark.client
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks_tls(fake_ses, relay_factory, tmp_path, mode):
    relay, plain, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    port = plain if mode == "--tls" else implicit
    result = run([require_tool("swaks"), "--server", f"127.0.0.1:{port}", mode, "--helo", "swaks.test",
                  "--from", SENDER, "--to", RECIPIENT, "--timeout", "30",
                  "--header", "From: alice@example.com", "--body", "swaks over tls"])
    assert result.returncode == 0, result.stdout
    assert len(fake_ses.requests) == 1 and fake_ses.requests[0].outcome == "ok"


@pytest.mark.client
@pytest.mark.parametrize("starttls", ["on", "off"])
def test_msmtp_tls_verifying_the_test_certificate(fake_ses, relay_factory, tmp_path, starttls):
    relay, plain, implicit, cert = tls_relay(relay_factory, fake_ses, tmp_path)
    config = tmp_path / "msmtprc"
    config.write_text("\n".join([
        "account default",
        "host 127.0.0.1",
        f"port {plain if starttls == 'on' else implicit}",
        "auth off",
        "tls on",
        f"tls_starttls {starttls}",
        f"tls_trust_file {cert}",
        "tls_host_override first.test",
        "domain msmtp.test",
        "timeout 30",
        f"from {SENDER}",
    ]) + "\n")
    config.chmod(0o600)
    result = run([require_tool("msmtp"), "-C", str(config), RECIPIENT],
                 input=b"From: alice@example.com\nSubject: msmtp tls\n\nhello\n")
    assert result.returncode == 0, result.stdout
    assert len(fake_ses.requests) == 1 and fake_ses.requests[0].outcome == "ok"
