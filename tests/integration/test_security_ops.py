"""`ses-relay serve` as a subprocess: what a client types never reaches the logs, and SIGHUP re-reads
smtp.auth.users_file (new users may AUTH, removed ones may not, a broken file changes nothing)."""

from __future__ import annotations

import base64
import signal
import smtplib

import bcrypt

from relay.smtp import replies
from testkit.net import free_port
from testkit.serve import relay_env, serve_config, serving

SECRET = "Tr0ub4dor-and-3"
AUTH_OK, AUTH_FAILED = int(replies.AUTH_OK[:3]), int(replies.AUTH_FAILED[:3])


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def auth_config(fake_ses, users_path) -> dict:
    # 127.0.0.1 is outside allowed_networks: it may send only after AUTH, offered in clear on loopback.
    return serve_config(free_port(), free_port(), fake_ses.endpoint_url, smtp={
        "allowed_networks": ["10.0.0.0/8"],
        "auth": {"required": True, "users_file": str(users_path)},
        "tls": {"require_for_auth": False},
    }, logging={"level": "debug", "format": "json"})


def auth_plain(port: int, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {blob}")
        return code


def test_a_base64_password_sent_as_a_command_never_reaches_the_logs(fake_ses, tmp_path):
    users = tmp_path / "users"
    users.write_text(f"ops:{hashed(SECRET)}\n")
    blob = base64.b64encode(f"\0ops\0{SECRET}".encode()).decode()
    login_blob = base64.b64encode(SECRET.encode()).decode()
    with serving(tmp_path, relay_env(tmp_path), auth_config(fake_ses, users)) as served:
        with smtplib.SMTP("127.0.0.1", served.smtp_port, local_hostname="client.test", timeout=30) as client:
            client.ehlo()
            # A client out of step: its AUTH answers arrive as commands (aiosmtpd: "unrecognised").
            assert client.docmd(blob)[0] == 500
            assert client.docmd(login_blob)[0] == 500
            code, _ = client.docmd("AUTH", "LOGIN")
            assert code == 334
            assert client.docmd("*")[0] == 501  # aborted; then the password comes anyway
            assert client.docmd(login_blob)[0] == 500
        served.wait_for_log(lambda entry: "unrecognised" in entry.get("msg", ""))
        served.terminate()
    logs = served.stderr()
    for secret in (SECRET, blob, login_blob):
        assert secret not in logs and secret.upper() not in logs
    assert "characters, not logged" in logs


def test_sighup_reloads_the_users_file(fake_ses, tmp_path):
    users = tmp_path / "users"
    users.write_text(f"ops:{hashed(SECRET)}\n")
    with serving(tmp_path, relay_env(tmp_path), auth_config(fake_ses, users)) as served:
        assert auth_plain(served.smtp_port, "ops", SECRET) == AUTH_OK
        assert auth_plain(served.smtp_port, "newbie", "n3w-pass-word") == AUTH_FAILED
        users.write_text(f"newbie:{hashed('n3w-pass-word')}\n")  # ops removed, newbie added
        served.process.send_signal(signal.SIGHUP)
        served.wait_for_log(lambda entry: entry.get("event") == "users_reloaded")
        assert auth_plain(served.smtp_port, "newbie", "n3w-pass-word") == AUTH_OK
        assert auth_plain(served.smtp_port, "ops", SECRET) == AUTH_FAILED  # even with its answer cached
        users.write_text("newbie:not-a-bcrypt-hash\n")  # a broken file keeps the users in force
        served.process.send_signal(signal.SIGHUP)
        served.wait_for_log(lambda entry: entry.get("event") == "users_reload_failed")
        assert auth_plain(served.smtp_port, "newbie", "n3w-pass-word") == AUTH_OK
        assert served.terminate() == 0
