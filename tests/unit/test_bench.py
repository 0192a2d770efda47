"""The benchmark's own logic: bench.load's reply counting, start line and recipients, the fake SES's
recipient-counting throttle, and the measures and verdicts bench.run draws.

bench.load runs against a scripted SMTP server on a loopback socket, so each session's replies and the
order in which the server sees commands are known exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import botocore.exceptions
import pytest

from bench import load
from bench import run as bench_run
from bench.systems import MAX_CONNECTIONS
from testkit.boto import sesv2_client
from testkit.fake_ses import FakeSES
from testkit.net import free_port, wait_for_port

OK = b"250 2.0.0 Ok queued\r\n"
NO_ROOM = b"452 4.3.1 Insufficient system storage\r\n"


class ScriptedSmtp:
    """Connection i answers its DATA as `data_replies[i]`: "ok", "refuse_after_body" or "refuse_at_data";
    connection `slow_rcpt` answers RCPT only after `delay` seconds. `events` records (command, i)."""

    def __init__(self, data_replies: list[str], slow_rcpt: int | None = None, delay: float = 0.0) -> None:
        self.data_replies = data_replies
        self.slow_rcpt, self.delay = slow_rcpt, delay
        self.events: list[tuple[str, int]] = []
        self.recipients: list[list[str]] = []  # per transaction that reached DATA, its RCPT addresses
        self.message_ids: list[str] = []
        self._ids = itertools.count()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = next(self._ids)
        rcpts: list[str] = []
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-scripted\r\n250 SIZE 50000000\r\n")
                elif verb in (b"MAIL", b"RSET"):
                    rcpts = []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    if i == self.slow_rcpt:
                        await asyncio.sleep(self.delay)
                    self.events.append(("rcpt", i))
                    rcpts.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    self.events.append(("data", i))
                    if self.data_replies[i] == "refuse_at_data":
                        writer.write(NO_ROOM)
                        continue
                    self.recipients.append(rcpts)
                    writer.write(b"354 go ahead\r\n")
                    while (data := await reader.readline()) not in (b".\r\n", b""):
                        if data.lower().startswith(b"message-id:"):
                            self.message_ids.append(data.split(b":", 1)[1].strip().decode())
                    writer.write(OK if self.data_replies[i] == "ok" else NO_ROOM)
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                await writer.drain()
        finally:
            writer.close()


async def run_load(server: ScriptedSmtp, sessions: int, count: int = 1, **kwargs) -> dict:
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(
            load.run("127.0.0.1", port, sessions, count, 4096, "a@example.com", "b@example.org", **kwargs),
            30,
        )
    finally:
        listener.close()
        await listener.wait_closed()


def test_final_replies_are_counted_by_code_including_a_refused_data_command() -> None:
    server = ScriptedSmtp(["ok", "refuse_after_body", "refuse_at_data"])
    result = asyncio.run(run_load(server, 3))
    assert result["errors"] == []
    assert result["codes"] == {"250 2.0.0": 1, "452 4.3.1": 2}
    assert result["replies"] == {"2xx": 1, "4xx": 2}


def test_together_holds_every_data_until_all_sessions_have_their_recipient_accepted() -> None:
    # the last connection's RCPT is slow: without a start line the others send DATA before it is accepted
    server = ScriptedSmtp(["ok"] * 4, slow_rcpt=3, delay=0.3)
    result = asyncio.run(run_load(server, 4, together=True))
    assert result["codes"] == {"250 2.0.0": 4}
    first_data = min(n for n, (command, _) in enumerate(server.events) if command == "data")
    assert sorted(i for command, i in server.events[:first_data] if command == "rcpt") == [0, 1, 2, 3]


def test_together_does_not_wait_for_a_session_refused_before_data() -> None:
    server = ScriptedSmtp(["ok", "refuse_at_data"])
    result = asyncio.run(run_load(server, 2, together=True))
    assert result["codes"] == {"250 2.0.0": 1, "452 4.3.1": 1}


def point(system: str, sessions: int, repeat: int, rate: float) -> dict:
    return {
        "system": system,
        "concurrency": sessions,
        "keepalive": False,
        "messages": 100,
        "seconds": 100 / rate,
        "msgs_per_s": rate,
        "rc": 0,
        "repeat": repeat,
    }


def test_latency_target_is_judged_with_enough_sessions_and_the_burst_against_the_budget() -> None:
    c = bench_run.LATENCY_SESSIONS
    points = []
    for r in range(3):
        # at c50 the 30 ms side is capped by its sessions (0.6); with LATENCY_SESSIONS it keeps up (0.95)
        points += [point("relay-0ms", 50, r, 1000), point("relay-30ms", 50, r, 600)]
        points += [point("relay-0ms", c, r, 1000), point("relay-30ms", c, r, 950)]
    burst = {"peak_vs_budget": 1.02, "bad_replies": 0, "after_not_250": 0}
    data = {"mode": "default", "points": points, "rss": {}, "big_message": [], "burst": [burst]}
    verdicts = bench_run.summarise(data)["verdicts"]
    assert verdicts["ratio_c90_30ms_vs_0ms"]["stats"]["median"] == 0.95
    assert verdicts["ratio_c90_30ms_vs_0ms"]["verdict"] == "pass"
    assert verdicts["burst_peak_vs_budget"]["verdict"] == "miss"
    assert verdicts["burst_bad_replies"]["verdict"] == "pass"
    assert verdicts["after_burst_not_250"]["verdict"] == "pass"
    # every bench relay must take that many sessions without answering 421 (new connections past the limit)
    assert c < MAX_CONNECTIONS


def test_load_sends_every_recipient_and_a_message_id_per_message() -> None:
    server = ScriptedSmtp(["ok"] * 2)
    result = asyncio.run(run_load(server, 2, count=3, recipients=3))
    assert result["codes"] == {"250 2.0.0": 6}
    assert server.recipients == [["b+1@example.org", "b+2@example.org", "b+3@example.org"]] * 6
    # the throttling scenario tells messages apart (lost? sent twice?) by their Message-ID
    assert len(server.message_ids) == 6 and len(set(server.message_ids)) == 6


def send(client, recipients: int) -> str:
    try:
        client.send_email(
            Destination={"ToAddresses": [f"r{i}@example.org" for i in range(recipients)]},
            Content={"Raw": {"Data": b"From: a@example.com\r\nSubject: t\r\n\r\nbody\r\n"}},
        )
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"]
    return "ok"


@pytest.mark.parametrize(
    ("counts", "expected"),
    [("recipients", ["ok", "ok", "TooManyRequestsException"]), ("messages", ["ok", "ok", "ok"])],
)
def test_fake_ses_throttle_can_count_recipients_as_ses_does(counts: str, expected: list[str]) -> None:
    # 10/s with one second of burst: two 5-recipient sends spend it when recipients are counted
    with FakeSES(max_rate=10, rate_counts=counts) as fake:
        client = sesv2_client(fake)
        assert [send(client, 5) for _ in range(3)] == expected
        assert fake.throttled == expected.count("TooManyRequestsException")


def test_fake_ses_cli_counts_recipients_sets_the_account_rate_and_reports_throttled() -> None:
    # the benchmark runs the fake as a process: the options must reach it, and its exit line count 429s
    port = free_port()
    args = ["--port", str(port), "--max-rate", "10", "--rate-counts", "recipients"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_ses", *args, "--account-max-send-rate", "7"],
        cwd=bench_run.procs.REPO,
        env=bench_run.procs.python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for_port(port)
        client = sesv2_client(types.SimpleNamespace(endpoint_url=f"http://127.0.0.1:{port}"))
        assert client.get_account()["SendQuota"]["MaxSendRate"] == 7.0
        assert [send(client, 5) for _ in range(3)] == ["ok", "ok", "TooManyRequestsException"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    counts = json.loads(out.strip().splitlines()[-1])
    assert (counts["sent"], counts["throttled"]) == (2, 1)  # "received" also counts the GetAccount call


def test_delivered_rate_is_the_rate_for_a_perfect_pacer_and_less_when_a_retry_stretches_it() -> None:
    rate, burst = 100.0, 100.0
    # 20 messages of 5 at once (the burst), then one every 0.05 s: 1,000 recipients
    paced = [(0.0, 5)] * 20 + [(0.05 * k, 5) for k in range(1, 181)]
    assert bench_run.delivered_rate(paced, burst) == pytest.approx(rate)
    # the same, but one message throttled and retried 60 s later
    retried = paced[:-1] + [(69.0, 5)]
    assert bench_run.delivered_rate(retried, burst) < 0.95 * rate
    assert bench_run.delivered_rate([(0.0, 5)], burst) is None


def test_accepted_log_keeps_a_line_still_being_written_for_the_next_poll(tmp_path: Path) -> None:
    path = tmp_path / "accepted.jsonl"
    follow = bench_run.AcceptedLog(path)
    follow.poll()  # not created yet
    line = json.dumps({"message_id": "<a@x>", "destinations": ["r1@example.org", "r2@example.org"]})
    path.write_text(line + "\n" + line[:10])
    follow.poll()
    assert follow.recipients() == 2
    with path.open("a") as file:
        file.write(line[10:] + "\n")
    follow.poll()
    follow.close()
    assert [e["message_id"] for _, e in follow.entries] == ["<a@x>", "<a@x>"] and follow.recipients() == 4


def test_batch_stats_is_messages_per_group_commit_over_the_point() -> None:
    before, after = {"commits": 10, "committed": 30}, {"commits": 60, "committed": 430}
    assert bench_run.batch_stats(before, after) == {
        "spool_commits": 50,
        "spool_committed": 400,
        "group_commit_batch": 8.0,
    }
    assert bench_run.batch_stats(None, after) == {}


def test_mode_and_throttle_targets_are_judged_on_same_run_pairs() -> None:
    points = []
    for r in range(3):
        points += [point("postfix", 10, r, 300), point("relay-spool", 10, r, 480)]
        points += [point("relay-0ms", 10, r, 400), point("relay-fallback", 10, r, 380)]
    throttle = {"delivered_vs_rate": 0.11, "client_not_250": 0, "lost": 0}
    unfinished = {"delivered_vs_rate": None, "client_not_250": 0, "lost": 3}
    spool_big = {"multiple": 1.1, "replies": {"2xx": 1}, "delivered_after_s": 0.5}
    data = {
        "mode": "default",
        "points": points,
        "rss": {},
        "big_message": [],
        "big_message_spool": [spool_big],
        "throttle": [throttle, unfinished],
        "burst": [],
    }
    verdicts = bench_run.summarise(data)["verdicts"]
    assert verdicts["ratio_spool_c10_vs_postfix"]["stats"]["median"] == 1.6
    assert verdicts["ratio_spool_c10_vs_postfix"]["verdict"] == "pass"
    assert verdicts["ratio_fallback_c10_vs_direct"]["stats"]["median"] == 0.95
    assert verdicts["ratio_fallback_c10_vs_direct"]["verdict"] == "pass"
    # a run that never delivered everything has no rate: it counts as 0, not as "not measured"
    assert verdicts["throttle_delivered_vs_rate"]["stats"]["min"] == 0.0
    assert verdicts["throttle_delivered_vs_rate"]["verdict"] == "miss"
    assert verdicts["throttle_lost"]["verdict"] == "miss"
    assert verdicts["throttle_client_not_250"]["verdict"] == "pass"
    assert verdicts["rss_40mb_spool_multiple"]["verdict"] == "pass"
    assert re.search(r"N = \d+", verdicts["throttle_delivered_vs_rate"]["text"])
