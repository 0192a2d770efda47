"""Reply lines that only show up when something goes wrong inside the relay."""

from __future__ import annotations

import smtplib
import socket

from relay.sending import OutgoingMessage
from relay.smtp import replies
from relay.suppression.base import Reason, SuppressionEntry
from testkit.messages import plain_message

MESSAGE = plain_message()


def text(reply: str) -> str:
    return reply[4:]


def test_unusable_store_answers_451_at_rcpt(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    relay.call(relay.store.close())  # the store fails under a running relay
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, reply = client.rcpt("bob@example.org")
    assert (code, reply.decode()) == (451, text(replies.STORE_UNAVAILABLE))
    assert relay.metric("ses_relay_recipients_rejected_total", {"reason": "store_error"}) == 1
    assert fake_ses.requests == []


def test_unexpected_sender_failure_is_a_temporary_451(fake_ses, relay_factory):
    class Broken:
        async def send(self, message: OutgoingMessage) -> str:
            raise RuntimeError("bug")

    relay = relay_factory(fake_ses.endpoint_url)
    relay.relay._smtp.handler._sender = Broken()
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        client.rcpt("bob@example.org")
        code, reply = client.data(MESSAGE)
    assert (code, reply.decode()) == (451, text(replies.INTERNAL_ERROR))
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "4xx"}) == 1


def test_manual_suppression_and_overlong_command(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    relay.call(relay.store.put(SuppressionEntry("held@example.org", Reason.MANUAL)))
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, reply = client.rcpt("held@example.org")
        assert (code, reply.decode()) == (550, text(replies.SUPPRESSED_MANUAL.format(address="held@example.org")))
        code, reply = client.docmd("NOOP " + "x" * 2000)
        assert (code, reply.decode()) == (500, text(replies.COMMAND_TOO_LONG))


def test_idle_session_is_told_421_at_shutdown(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=30) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"HELO client.test\r\n")
        assert stream.readline().startswith(b"250 ")
        relay.loop.call_soon_threadsafe(relay.relay.request_stop)
        assert stream.readline().decode().rstrip("\r\n") == replies.SHUTTING_DOWN
        assert stream.readline() == b""  # and the connection is closed
    relay.thread.join(30)
    assert not relay.thread.is_alive()


def test_dry_run_that_cannot_save_answers_451_not_250(relay_factory):
    """In dry-run mode a 250 means "on disk": a failed write must keep the mail at the client."""
    import shutil

    relay = relay_factory(None, ses={"dry_run": True})
    directory = relay.config.dry_run_dir
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        client.rcpt("bob@example.org")
        code, reply = client.data(MESSAGE)
    assert code == 451 and reply.startswith(b"4.3.0 Dry run: cannot save the message")
    assert relay.metric("ses_relay_smtp_transactions_total", {"result": "2xx"}) == 0


def test_a_bug_in_a_hook_other_than_data_is_451_and_logged_with_its_traceback(fake_ses, relay_factory, caplog):
    """aiosmtpd hands an exception in any hook to handle_exception: the traceback is the only trace a
    bug at RCPT leaves, so it must be in the log."""

    async def broken_get(address: str):
        raise ZeroDivisionError("bug in a lookup")

    relay = relay_factory(fake_ses.endpoint_url)
    relay.store.get = broken_get  # the handler holds this very store object
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, reply = client.rcpt("bob@example.org")
        assert (code, reply.decode()) == (451, text(replies.INTERNAL_ERROR))
        assert client.noop()[0] == 250  # the session goes on
    errors = [r for r in caplog.records if r.name == "relay.smtp" and r.levelname == "ERROR"]
    assert errors and errors[-1].exc_info is not None
    assert errors[-1].exc_info[0] is ZeroDivisionError
