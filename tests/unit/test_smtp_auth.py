"""relay.smtp.auth and relay.smtp.authz: the users file, the bcrypt cache, throttling, sender patterns,
and the config combinations around them."""

from __future__ import annotations

import asyncio

import bcrypt
import pytest

from relay.config import ConfigError, load_config
from relay.message import MessageError, prepare
from relay.smtp import authz, replies
from relay.smtp.auth import AuthenticatedUser, Authenticator, FailureThrottle, parse_users
from relay.startup import StartupError

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()


def test_users_file_htpasswd_lines_with_optional_senders():
    users = parse_users(f"# comment\n\nalice:$2y${HASH[4:]}:*@Example.com, <>\nbob:{HASH}\n")
    assert users["alice"].senders == ("*@example.com", "<>")
    assert users["alice"].password_hash.startswith(b"$2y$")
    assert users["bob"].senders == ()


@pytest.mark.parametrize("line", ["alice", "alice:", ":" + HASH, "alice:plaintext", "alice:{SHA}abc"])
def test_users_file_bad_line_is_a_startup_error_naming_the_line(line):
    with pytest.raises(StartupError) as failure:
        parse_users(f"ok:{HASH}\n{line}\n", "users")
    assert "users line 2" in str(failure.value) and HASH not in str(failure.value)


def test_duplicate_user_is_refused():
    with pytest.raises(StartupError, match="given twice"):
        parse_users(f"a:{HASH}\na:{HASH}\n")


def test_authenticator_caches_good_answers_only():
    auth = Authenticator(parse_users(f"alice:$2y${HASH[4:]}:*@example.com\n"))

    async def run():
        assert await auth.check(b"alice", b"pw") == AuthenticatedUser("alice", ("*@example.com",))
        assert await auth.check(b"alice", b"pw") is not None
        assert auth.bcrypt_checks == 1  # the second was a cache hit
        assert await auth.check(b"alice", b"wrong") is None
        assert await auth.check(b"alice", b"wrong") is None
        assert auth.bcrypt_checks == 3  # a wrong password always pays bcrypt
        assert await auth.check(b"nobody", b"pw") is None
        assert await auth.check(b"\xff\xfe", b"pw") is None
        assert auth.bcrypt_checks == 5  # unknown users pay too (no user enumeration by timing)

    asyncio.run(run())


def test_throttle_delay_grows_then_locks_out_and_forgets_after_success():
    throttle = FailureThrottle(max_failures=4, base_delay=0.5, max_delay=1.5)
    assert [throttle.failed("192.0.2.1") for _ in range(4)] == [
        (0.5, False), (1.0, False), (1.5, False), (1.5, True)
    ]
    assert throttle.locked_out("192.0.2.1") and not throttle.locked_out("192.0.2.2")
    throttle.succeeded("192.0.2.2")
    other = FailureThrottle(max_failures=3)
    other.failed("a")
    other.succeeded("a")
    assert other.failed("a") == (other.base_delay, False)


def test_throttle_memory_is_bounded():
    throttle = FailureThrottle(max_clients=3)
    for n in range(10):
        throttle.failed(f"10.0.0.{n}")
    assert len(throttle._failures) == 3


@pytest.mark.parametrize(
    ("patterns", "address", "allowed"),
    [
        (("*@example.com",), "alice@example.com", True),
        (("*@example.com",), "ALICE@EXAMPLE.COM", True),
        (("*@example.com",), "alice@evil.example.com", False),  # * never crosses the @
        (("*@example.com",), "alice@example.com.evil", False),
        (("*@*.example.com",), "a@mail.example.com", True),
        (("alerts@example.org",), "alerts@example.org", True),
        (("alerts@example.org",), "other@example.org", False),
        (("a.b@example.org",), "aXb@example.org", False),  # a dot is a dot
        (("*@example.com",), "", False),
        (("*@example.com", "<>"), "<>", True),
        ((), "anyone@anywhere.example", True),
    ],
)
def test_sender_patterns(patterns, address, allowed):
    assert authz.sender_allowed(patterns, address) is allowed


class _Session:
    def __init__(self, user):
        self.auth_data = user


def test_envelope_and_header_checks_use_the_session_user():
    user = _Session(AuthenticatedUser("alice", ("*@example.com",)))
    assert authz.check_envelope_sender(user, "a@example.com") is None
    assert authz.check_envelope_sender(user, "a@evil.example") == replies.SENDER_NOT_ALLOWED.format(
        user="alice", address="a@evil.example")
    assert authz.check_envelope_sender(_Session(None), "a@evil.example") is None  # not authenticated
    good = prepare(b"From: Alice <a@example.com>\r\nSubject: x\r\n\r\nFrom: body@evil.example\r\n")
    authz.check_from_header(user, good)
    for header in (b"From: Boss <boss@evil.example>", b"From: a@example.com, b@evil.example",
                   b"From: a@example.com\r\nFrom: b@evil.example", b"From:\r\n boss@evil.example",
                   b"From: undisclosed-recipients:;"):
        with pytest.raises(MessageError) as refused:
            authz.check_from_header(user, prepare(header + b"\r\nSubject: x\r\n\r\nbody\r\n"))
        assert refused.value.reply.startswith("554 5.7.1 "), header


def _config(**smtp):
    return load_config(None, environ={}, overrides={"smtp": smtp})


def test_config_accepts_tls_and_auth_and_refuses_unsafe_combinations(tmp_path):
    tls = {"cert": "/x.crt", "key": "/x.key"}
    assert _config(tls=tls, auth={"required": True, "users_file": "/users"}).smtp.auth.required
    cases = [
        ({"tls": {"cert": "/x.crt"}}, "cert and key go together"),
        ({"tls": {"implicit_listen": ["127.0.0.1:465"]}}, "implicit_listen needs cert and key"),
        ({"auth": {"required": True}}, "needs smtp.auth.users_file"),
        ({"auth": {"users_file": "/users"}}, "AUTH is offered only over TLS"),
        ({"listen": ["0.0.0.0:2525"], "tls": {**tls, "require_for_auth": False}}, "in clear on 0.0.0.0:2525"),
        ({"listen": ["relay.example:2525"], "tls": {"require_for_auth": False}}, "in clear"),
    ]
    for smtp, message in cases:
        with pytest.raises(ConfigError, match=message):
            _config(**smtp)
    # loopback only: AUTH without TLS is the operator's call
    config = _config(listen=["127.0.0.1:2525", "[::1]:2525", "localhost:2526"],
                     tls={"require_for_auth": False}, auth={"users_file": "/users"})
    assert config.smtp.tls.require_for_auth is False


def test_hash_password_reads_stdin_and_prints_a_users_file_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "relay", "hash-password", "alice", "--rounds", "4"],
                            input=b"pa ss:word\n", capture_output=True, timeout=60, check=True)
    line = result.stdout.decode().strip()
    users = parse_users(line)
    assert bcrypt.checkpw(b"pa ss:word", users["alice"].password_hash)
    assert b"pa ss" not in result.stderr


def test_aiosmtpd_internals_the_relay_bets_on():
    """relay/smtp/server.py sets `_auth_required` per session, reads `_tls_protocol`, filters the
    empty "250-AUTH " EHLO line and returns AuthResult(handled=False) to get its message pushed."""
    import inspect

    from aiosmtpd.smtp import SMTP, AuthResult

    source = inspect.getsource(SMTP)
    assert "self._auth_required and not self.session.authenticated" in source
    assert '"250-AUTH " + " ".join(sorted(self._auth_methods.keys()))' in source
    assert "self._tls_protocol = sslproto.SSLProtocol(" in source
    assert AuthResult(success=False).handled is True  # hence the explicit handled=False
    assert "elif auth_result.message:" in inspect.getsource(SMTP.smtp_AUTH)
