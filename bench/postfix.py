"""Baseline: a private Postfix instance that accepts mail into its own queue and never delivers it.

`postfix -c CONFDIR start` with main.cf/master.cf generated here: smtpd on 127.0.0.1:PORT only, queue
and data directories in a temp dir, every chroot off, relayhost a closed port and
`defer_transports = smtp`, so accepted mail stays in the private queue (deferred). This is the
"accept, write to a durable queue, answer 250" cost of a real MTA, as a reference point.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.procs import wait_smtp_banner

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix-bench.local
mydomain = local
myorigin = $myhostname
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{closed_port}
default_transport = smtp
relay_transport = smtp
defer_transports = smtp
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
biff = no
append_dot_mydomain = no
smtpd_banner = $myhostname ESMTP
message_size_limit = 41943040
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_peername_lookup = no
alias_maps =
alias_database =
"""

# name type private unpriv chroot wakeup maxproc command
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
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


class PrivatePostfix:
    def __init__(self, root: Path, port: int, closed_port: int) -> None:
        self.root = root
        self.port = port
        self.conf = root / "etc"
        self.closed_port = closed_port

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), *args], capture_output=True, text=True, check=check, timeout=60
        )

    def start(self) -> None:
        self.conf.mkdir(parents=True, exist_ok=True)
        (self.root / "queue").mkdir(exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        shutil.chown(self.root / "data", "postfix", "postfix")
        (self.conf / "main.cf").write_text(MAIN_CF.format(root=self.root, closed_port=self.closed_port))
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        # Postfix creates the queue subdirectories with the right owners (postfix, postdrop).
        self._postfix("set-permissions", check=False)
        self._postfix("check")
        self._postfix("start")
        wait_smtp_banner(self.port, timeout=30)

    def master_pid(self) -> int | None:
        pid_file = self.root / "queue" / "pid" / "master.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queued(self) -> int:
        """Messages in the private queue (incoming + active + deferred + hold)."""
        total = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = self.root / "queue" / sub
            if d.exists():
                total += sum(1 for p in d.rglob("*") if p.is_file())
        return total

    def stop(self) -> None:
        self._postfix("stop", check=False)
        for _ in range(100):
            if self.master_pid() is None or not Path(f"/proc/{self.master_pid()}").exists():
                break
            time.sleep(0.1)
