"""A private Postfix instance: config, queue, data and log under one directory, smtpd on 127.0.0.1.

Shared by the client tests (tests/integration/test_real_clients.py: a Postfix whose relayhost is the
relay; tests/integration/test_tls_clients.py: the same over TLS and SASL, through RelayhostPostfix and
the *_settings helpers below) and the benchmark (bench/postfix.py: a Postfix that queues every message
and never delivers), which pass only their own main.cf settings. Standard library only, no pytest: the
benchmark imports it, as it runs testkit/fake_ses.py.

The system instance is neither used nor touched: every command gets `-c` with the private config
directory, and main.cf points the queue, data directory and log below the root. Starting needs root
(master then drops its daemons to the `postfix` user), and every directory above the queue must be
reachable by that user (e.g. mode 0755). Keep the root short: the UNIX sockets under the queue must
stay below the 108-byte path limit.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from testkit.net import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
COMMAND_TIMEOUT = 60  # seconds, for each postfix/postqueue command and for master to exit on stop
START_TIMEOUT = 30  # seconds for smtpd to answer its 220 greeting after start

# name type private unpriv chroot wakeup maxproc command
MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def wait_for_greeting(port: int, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until an SMTP server on 127.0.0.1:port answers 220 (a bare accept is not enough for Postfix).

    Raises RuntimeError if `process` exits first, TimeoutError after `timeout` seconds. Also used by
    the benchmark for every system it starts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no SMTP greeting on 127.0.0.1:{port} after {timeout}s")


class PostfixError(RuntimeError):
    """`postfix check` failed or smtpd did not come up; the message carries the output and the maillog."""


class PostfixInstance:
    """`postfix -c ROOT/etc start-fg`, with smtpd on 127.0.0.1:port and every chroot off.

    `settings` are the caller's main.cf parameters (relayhost, hostnames, transports, limits, ...); they
    are added to, and may override, the ones every private instance needs (`base_settings`).
    """

    def __init__(self, root: Path, port: int, settings: Mapping[str, str]) -> None:
        self.root = root
        self.port = port
        self.settings = dict(settings)
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self.process: subprocess.Popen[bytes] | None = None

    def base_settings(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),  # no syslog needed: postlogd writes here
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
        }

    def configure(self) -> None:
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, user="postfix", group="postfix")
        settings = {**self.base_settings(), **self.settings}
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.config_dir / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + MASTER_SERVICES
        )

    def command(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`program -c CONFIG_DIR args...` (postfix, postqueue, ...); stdout and stderr combined."""
        result = subprocess.run(
            [program, "-c", str(self.config_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode("utf-8", "replace"), ""
        )

    def start(self) -> None:
        self.configure()
        # `postfix check` also creates the queue subdirectories with their owners (postfix, postdrop).
        check = self.command(POSTFIX, "check")
        if check.returncode != 0:
            raise PostfixError(check.stdout + self.log())
        # start-fg keeps master as our descendant: it is stopped with `postfix stop` and reaped by us.
        self.process = subprocess.Popen(
            [POSTFIX, "-c", str(self.config_dir), "start-fg"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # master accepts connections before an smtpd is there to answer: wait for the 220
            wait_for_greeting(self.port, timeout=START_TIMEOUT, process=self.process)
        except (TimeoutError, RuntimeError) as exc:
            log = self.log()
            self.stop()
            raise PostfixError(f"private Postfix did not start:\n{log}") from exc

    def stop(self) -> None:
        if self.process is None:
            return
        self.command(POSTFIX, "stop")
        try:
            self.process.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=COMMAND_TIMEOUT)
        self.process = None

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.maillog.read_text(errors="replace")
        return "(no maillog)"


def tls_client_settings(
    level: str, *, ca_file: Path | None = None, match: str | None = None
) -> dict[str, str]:
    """main.cf for the Postfix SMTP client's TLS: `level` is smtp_tls_security_level (encrypt, verify, ...).

    `ca_file` (smtp_tls_CAfile) must be readable by the `postfix` user: keep it under the instance's
    root (RelayhostPostfix.install). At verify/secure Postfix matches the certificate against the
    relayhost by default (an IP SAN for [127.0.0.1]); `match` replaces that with a literal name.
    Handshakes are logged (loglevel 1: "Untrusted|Verified TLS connection established to ...").
    """
    settings = {"smtp_tls_security_level": level, "smtp_tls_loglevel": "1"}
    if ca_file is not None:
        settings["smtp_tls_CAfile"] = str(ca_file)
    if match is not None:
        settings["smtp_tls_verify_cert_match"] = match
        settings["smtp_tls_secure_cert_match"] = match
    return settings


def sasl_client_settings(nexthop: str, user: str, password: str) -> dict[str, str]:
    """main.cf for SASL AUTH to `nexthop` (as written in relayhost, e.g. "[127.0.0.1]:2525").

    The settings docs/clients.md gives. The password map is inline (no postmap, no file); Debian's
    Cyrus client needs libsasl2-modules for PLAIN and LOGIN. `noanonymous` replaces the default
    `noplaintext, noanonymous`, which refuses both (smtp_sasl_tls_security_options follows it).
    """
    return {
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"inline:{{ {nexthop}={user}:{password} }}",
        "smtp_sasl_security_options": "noanonymous",
    }


class RelayhostPostfix(PostfixInstance):
    """A private Postfix as a client: everything it does not deliver locally goes to relayhost 127.0.0.1:port.

    Its root is made with tempfile under /tmp, not below pytest's tmp_path: Postfix's daemons run as
    the `postfix` user and must reach the queue (pytest's base directory is mode 0700), and a short
    root keeps the UNIX socket paths well below the 108-byte limit. `settings` (TLS, SASL, ...) are
    added to the relayhost ones. stop() removes the root.
    """

    def __init__(self, relay_port: int, settings: Mapping[str, str] | None = None) -> None:
        root = Path(tempfile.mkdtemp(prefix="ses-relay-pf-", dir="/tmp"))
        root.chmod(0o755)
        self.nexthop = f"[127.0.0.1]:{relay_port}"
        super().__init__(root, free_port(), {
            "multi_instance_name": f"postfix-sesrelay-{root.name}",
            "syslog_name": f"postfix-sesrelay-{root.name}",
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "$mydomain",
            "local_transport": "error:local delivery is disabled",
            "relayhost": self.nexthop,
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            **(settings or {}),
        })

    def install(self, name: str, content: bytes) -> Path:
        """A file under the root that the `postfix` user can read (a CA file, say): its path."""
        path = self.root / "files" / name
        path.parent.mkdir(mode=0o755, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
        return path

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def queue_listing(self) -> str:
        """`postqueue -p`: "Mail queue is empty", or each message with the reason it was deferred."""
        result = self.command("postqueue", "-p")
        if result.returncode != 0:
            raise PostfixError(result.stdout)
        return result.stdout

    def flush(self) -> None:
        """`postqueue -f`: retry the deferred mail now instead of at the next retry timer."""
        result = self.command("postqueue", "-f")
        if result.returncode != 0:
            raise PostfixError(result.stdout)

    def submit(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Hand a message to this Postfix's smtpd (it queues it, then relays it on its own)."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as client:
            refused = client.sendmail(sender, recipients, message)
        if refused:
            raise PostfixError(f"Postfix refused {refused}")
