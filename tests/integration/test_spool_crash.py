"""SIGKILL the relay at random moments while mail flows; every message that got 250 reaches SES (issue #10).

The fake SES is a separate process that outlives every relay: it appends one line per accepted
SendEmail to a file (Message-ID header and sha256 of the bytes), written before its 200. The relay
is `python -m relay serve`, killed with SIGKILL at seeded random moments and restarted on the same
state dir and ports. Client threads act as a real MTA: a message that got no 250 (connection
refused or reset, 4xx) is sent again, with the same Message-ID. Every 25th message is large enough
for a body file of its own, so that path is killed too.

Each attempt carries its own `X-Client-Attempt` header, so the sha256 tells which copy SES got, and
the fake's log, cut after each kill, tells in which relay run. Duplicates split in two:

- the same attempt twice: an SES call in flight at a kill, made again after the restart (at most
  delivery.concurrency per kill; never twice within one run; SES has no idempotency token);
- two attempts of one message: an SMTP transaction in flight at a kill that was on disk (or at
  SES) but whose 250 the client never read, so it sent again (at most one per client per kill).

The spool must end empty (no row stuck, no body file left) and the relay must restart every time.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import random
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testkit.fake_ses import read_accepted_log
from testkit.net import free_port, wait_for_port
from testkit.serve import relay_env, run_cli, serve_config, serving
from testkit.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEADLINE = 90.0  # seconds; a stuck run fails instead of hanging (normally far less)
DRAIN_TIMEOUT = 60.0


@contextmanager
def fake_ses_process(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """`python -m testkit.fake_ses` on a free port: (endpoint_url, accepted-log path)."""
    port, log = free_port(), tmp_path / "accepted.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(tmp_path / "fake_ses.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "testkit.fake_ses", "--port", str(port), "--accepted-log", str(log),
             *args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"http://127.0.0.1:{port}", log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


LARGE_EVERY = 25  # every 25th message is larger than the spool keeps inline: it gets a body file
LARGE_LINES = 4000  # x 80 bytes: 320 KB


def message_bytes(n: int, attempt: int) -> bytes:
    body = f"message {n}\r\n"
    if n % LARGE_EVERY == 0:
        body += ("x" * 78 + "\r\n") * LARGE_LINES
    return (
        f"From: alice@example.com\r\nTo: rcpt{n}@example.org\r\nSubject: crash {n}\r\n"
        f"Message-ID: <crash-{n}@client.test>\r\nX-Client-Attempt: {attempt}\r\n\r\n{body}"
    ).encode()


@dataclass
class Sent:
    """One message as its client saw it."""

    n: int
    attempts: list[str] = field(default_factory=list)  # sha256 of each attempt's bytes
    replies: list[str] = field(default_factory=list)  # what each attempt got
    accepted: bool = False  # some attempt got 250

    @property
    def message_id(self) -> str:
        return f"<crash-{self.n}@client.test>"


class Clients:
    """`threads` senders sharing `count` messages; each retries a message until 250, a 5xx or the deadline."""

    def __init__(self, port: int, count: int, threads: int, seed: int) -> None:
        self.port = port
        self.messages = [Sent(n) for n in range(count)]
        self._next = iter(self.messages)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._deadline = time.monotonic() + CLIENT_DEADLINE
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"client-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(CLIENT_DEADLINE + 30)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread never finished"

    def stop(self) -> None:
        """Give up now (the test failed): no thread outlives it."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(60)

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def accepted(self) -> int:
        return sum(1 for message in self.messages if message.accepted)

    def _take(self) -> Sent | None:
        with self._lock:
            return next(self._next, None)

    def _run(self) -> None:
        while (message := self._take()) is not None:
            while time.monotonic() < self._deadline and not self._stop.is_set():
                data = message_bytes(message.n, len(message.attempts))
                message.attempts.append(hashlib.sha256(data).hexdigest())
                reply = self._send_once(message.n, data)
                message.replies.append(reply)
                if reply.startswith("250"):
                    message.accepted = True
                    break
                if reply.startswith("5"):
                    break  # permanent: a real MTA bounces it; the test fails on it
                with self._lock:
                    pause = self._rng.uniform(0.02, 0.1)
                time.sleep(pause)  # the relay is restarting: try again soon, as an MTA's queue would

    def _send_once(self, n: int, data: bytes) -> str:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as smtp:
                code, text = smtp.ehlo()
                if code == 250:
                    code, text = smtp.mail("alice@example.com")
                if code == 250:
                    code, text = smtp.rcpt(f"rcpt{n}@example.org")
                if code == 250:
                    code, text = smtp.data(data)
                return f"{code} {text.decode(errors='replace')}"
        except (OSError, smtplib.SMTPException) as exc:  # refused, reset, disconnected mid-transaction
            return f"error {type(exc).__name__}"


def spool_rows(state_dir: Path) -> dict[str, int] | None:
    """Messages in the spool by state, read-only (the relay is writing it); None before it exists."""
    path = state_dir / "spool" / "spool.db"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall())
    finally:
        db.close()


@dataclass
class Tally:
    lost: list[str]  # Message-IDs that got 250 and never reached SES
    resent_after_kill: list[int]  # per kill: SES calls in flight at it that were made again after it
    resent_without_kill: list[str]  # sha256 of bytes SES accepted twice within one relay run
    smtp_duplicates: int  # SES got more than one attempt of one message
    arrived_without_250: int  # a message that never got 250 but reached SES (allowed)


def tally(messages: list[Sent], log: Path, marks: list[int]) -> Tally:
    """`marks[k]`: lines in the accepted log once kill k had settled; the lines before it are runs <= k."""
    runs: dict[str, list[int]] = defaultdict(list)  # sha256 -> the relay run of each copy SES accepted
    message_ids: dict[str, str] = {}
    for index, line in enumerate(read_accepted_log(log)):
        runs[line["sha256"]].append(bisect.bisect_right(marks, index))
        message_ids[line["sha256"]] = line["message_id"]
    resent_after_kill = [0] * len(marks)
    resent_without_kill = []
    for sha, seen in runs.items():
        for before, after in itertools.pairwise(seen):
            if before == after:
                resent_without_kill.append(sha)
            else:
                resent_after_kill[before] += 1  # in flight when run `before` was killed
    attempts_arrived = Counter(message_ids.values())
    return Tally(
        lost=[m.message_id for m in messages if m.accepted and not any(h in runs for h in m.attempts)],
        resent_after_kill=resent_after_kill,
        resent_without_kill=resent_without_kill,
        smtp_duplicates=sum(count - 1 for count in attempts_arrived.values()),
        arrived_without_250=sum(1 for m in messages if not m.accepted and any(h in runs for h in m.attempts)),
    )


def settled_length(log: Path, quiet: float) -> int:
    """Lines in the accepted log once it stopped growing for `quiet` seconds: the relay is dead, so
    only the SES calls it had in flight can still land (the fake finishes them)."""
    last, since = len(read_accepted_log(log)), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = len(read_accepted_log(log))
        if now != last:
            last, since = now, time.monotonic()
    return last


def run_with_kills(tmp_path: Path, config: dict, log: Path, *, messages: int, threads: int, kills: int,
                   seed: int, quiet: float) -> tuple[Clients, list[int]]:
    """Send `messages` through `threads` clients while the relay is SIGKILLed `kills` times; restart it
    after each; return once every client is done and the spool is empty (the last relay is stopped),
    with the accepted log's length after each kill."""
    rng = random.Random(seed)
    env = relay_env(tmp_path)
    state_dir = Path(env["SES_RELAY_STATE_DIR"])
    # Kill after this many 250s (anywhere but the very start and end), plus a random few ms, so the
    # kills land in every phase: receiving, committing, delivering the backlog of the last restart.
    thresholds = sorted(rng.sample(range(messages // 10, messages * 8 // 10), kills))
    clients = Clients(config["smtp_port"], messages, threads, seed)
    relay_config = config["relay"]
    marks: list[int] = []
    try:
        for index, threshold in enumerate(thresholds):
            with serving(tmp_path, env, relay_config) as served:
                if index == 0:
                    clients.start()
                wait_until(lambda n=threshold: clients.accepted >= n or clients.done(),
                           timeout=CLIENT_DEADLINE, message=f"clients stalled before {threshold} accepted")
                time.sleep(rng.uniform(0.0, 0.05))
                served.process.send_signal(signal.SIGKILL)
                served.process.wait(timeout=10)
                marks.append(settled_length(log, quiet))
                assert "Traceback" not in served.stderr(), served.stderr()
        with serving(tmp_path, env, relay_config) as served:
            clients.join()
            wait_until(lambda: spool_rows(state_dir) == {}, timeout=DRAIN_TIMEOUT,
                       message=f"the spool never emptied: {spool_rows(state_dir)}\n{served.stderr()[-3000:]}")
            assert served.terminate() == 0, served.stderr()
            assert "Traceback" not in served.stderr(), served.stderr()
    finally:
        clients.stop()
    # The operator's view agrees: nothing queued, deferred, held or dead.
    listed = run_cli(["queue", "list", "--json", "--config", str(tmp_path / "serve.yaml")], env)
    assert (listed.returncode, listed.stdout.strip()) == (0, ""), listed
    # Body files of delivered messages are gone, and so are those a kill left without their row.
    assert sorted(p.name for p in (state_dir / "spool" / "bodies").iterdir()) == []
    return clients, marks


def crash_config(endpoint_url: str, **delivery) -> dict:
    smtp_port, http_port = free_port(), free_port()
    relay = serve_config(smtp_port, http_port, endpoint_url,
                         delivery={"retry_first": 0.2, "retry_max": 1, **delivery},
                         logging={"level": "warning"})
    return {"smtp_port": smtp_port, "relay": relay}


def check(clients: Clients, log: Path, marks: list[int], *, concurrency: int, threads: int) -> Tally:
    refused = [(m.message_id, m.replies) for m in clients.messages if not m.accepted]
    assert refused == [], refused  # every message got its 250 in the end (the relay came back each time)
    result = tally(clients.messages, log, marks)
    print(f"accepted log length after each kill {marks}; {result}")
    assert result.lost == [], result
    assert result.resent_without_kill == [], result
    assert all(count <= concurrency for count in result.resent_after_kill), result
    assert result.smtp_duplicates <= threads * len(marks), result
    return result


def test_sigkill_in_spool_mode_loses_no_accepted_message(tmp_path: Path) -> None:
    concurrency, threads = 8, 8
    with fake_ses_process(tmp_path, "--latency", "0.01") as (endpoint_url, log):
        config = crash_config(endpoint_url, mode="spool", concurrency=concurrency)
        clients, marks = run_with_kills(tmp_path, config, log, messages=300, threads=threads, kills=4,
                                        seed=1010, quiet=0.3)
    check(clients, log, marks, concurrency=concurrency, threads=threads)


def test_sigkill_in_fallback_mode_while_ses_is_slow(tmp_path: Path) -> None:
    # Slow SES: clients wait in DATA for the direct call when the kill comes. The rate limit sends
    # part of the traffic to the spool (429 -> queued), so both kinds of 250 are killed in flight.
    # A direct send SES took whose 250 the kill cut off comes back as an SMTP duplicate.
    concurrency, threads = 4, 6
    with fake_ses_process(tmp_path, "--latency", "0.5", "--max-rate", "6") as (endpoint_url, log):
        config = crash_config(endpoint_url, mode="fallback", concurrency=concurrency)
        clients, marks = run_with_kills(tmp_path, config, log, messages=40, threads=threads, kills=2,
                                        seed=2020, quiet=1.5)
    replies = [reply for m in clients.messages for reply in m.replies]
    assert any("queued as" in reply for reply in replies) and any(
        reply.startswith("250") and "queued as" not in reply for reply in replies
    ), replies  # both kinds of 250 were given
    check(clients, log, marks, concurrency=concurrency, threads=threads)
