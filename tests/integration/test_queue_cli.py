"""`ses-relay queue ...` as a subprocess, on the spool of a running relay (in a thread) or a stopped one."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from relay.spool.store import SqliteSpool
from testkit.fake_ses import Fault
from testkit.serve import relay_env, run_cli
from testkit.waiting import wait_until

SUBJECT = "queue admin"
BODY_TEXT = "the body, which queue show never prints"
MESSAGE = (
    f"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: {SUBJECT}\r\n"
    f"Message-ID: <q1@example.com>\r\n\r\n{BODY_TEXT}\r\n"
).encode()
LATER = {"retry_first": 3600, "retry_max": 3600}  # a deferred message waits: only the CLI makes it due


def queue(tmp_path: Path, *args: str):
    env = relay_env(tmp_path, SES_RELAY_DELIVERY__MODE="spool")
    return run_cli(["queue", *args], env)


def listed(tmp_path: Path, *args: str) -> list[dict]:
    result = queue(tmp_path, "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def send(port: int, recipients: list[str], data: bytes = MESSAGE) -> str:
    """Send through the relay; the queue id from `250 ... queued as <id>`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("test")
        assert client.mail("alice@example.com")[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(data)
    assert code == 250 and b"queued as" in text, text
    return text.decode().rsplit(" ", 1)[1]


def delivered(fake) -> list[str]:
    return [address for request in fake.requests if request.outcome == "ok" for address in request.destinations]


def spool_states(relay) -> dict[str, str]:
    return {entry.id: entry.state for entry in relay.call(relay.relay._spool.entries())}


def fill(spool_dir: Path, messages: list[dict]) -> None:
    """Put messages into a stopped relay's spool, each `age` seconds old, as the relay would."""

    async def main() -> None:
        for message in messages:
            created = time.time() - message.get("age", 0)
            spool = SqliteSpool(spool_dir, clock=lambda created=created: created)
            await spool.open()
            try:
                await spool.put(
                    message["id"],
                    message.get("raw", MESSAGE),
                    mail_from=message.get("mail_from", "alice@example.com"),
                    recipients=message.get("recipients", ["bob@example.org"]),
                    params={},
                    message_id=None,
                )
                if message.get("dead"):
                    await spool.kill(message["id"], reason="554 5.7.1 refused")
            finally:
                await spool.close()

    asyncio.run(main())


def test_list_and_show_a_deferred_message_then_retry_sends_only_the_rest(tmp_path, fake_ses, relay_factory):
    relay = relay_factory(
        fake_ses.endpoint_url, smtp={"max_recipients": 60}, delivery={"mode": "spool", **LATER}
    )
    fake_ses.queue(Fault.delay(0), Fault.error("InternalFailure", status=500))  # chunk 0 sent, chunk 1 not
    recipients = [f"user{i:02d}@example.org" for i in range(60)]
    queue_id = send(relay.smtp_port, recipients)
    wait_until(lambda: spool_states(relay) == {queue_id: "deferred"}, message="the message was not deferred")
    (stored,) = relay.call(relay.relay._spool.entries())

    (row,) = listed(tmp_path)
    assert (row["id"], row["state"], row["attempts"], row["recipient_count"]) == (queue_id, "deferred", 1, 60)
    assert row["last_error"] == stored.last_error and row["last_error"]
    assert row["next_attempt"] > time.time() + 600  # backoff with jitter, about an hour
    assert listed(tmp_path, "--state", "held") == []

    table = queue(tmp_path, "list")
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.startswith(queue_id))
    assert "deferred" in line and "user00@example.org +59" in line and "alice@example.com" in line

    shown = queue(tmp_path, "show", queue_id, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert ["Subject", SUBJECT] in data["headers"] and ["Message-ID", "<q1@example.com>"] in data["headers"]
    assert [c["ses_message_id"] for c in data["chunks"]] == [fake_ses.message_ids[0], None]
    assert [(a["chunk"], a["outcome"]) for a in data["attempts"]] == [(0, "sent"), (None, "deferred")]
    assert BODY_TEXT not in shown.stdout

    text = queue(tmp_path, "show", queue_id)
    assert text.returncode == 0, text.stderr
    assert f"Subject: {SUBJECT}" in text.stdout and fake_ses.message_ids[0] in text.stdout
    assert "user59@example.org" in text.stdout
    assert BODY_TEXT not in text.stdout

    retried = queue(tmp_path, "retry", queue_id)
    assert retried.returncode == 0, retried.stderr
    wait_until(lambda: len(delivered(fake_ses)) == 60, message="retry did not send the rest")
    assert sorted(delivered(fake_ses)) == recipients  # chunk 0 was not sent again
    wait_until(lambda: spool_states(relay) == {}, message="the delivered message stayed in the spool")


def test_a_held_message_is_not_delivered_and_a_released_one_is(tmp_path, fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", **LATER})
    fake_ses.queue(*[Fault.error("InternalFailure", status=500) for _ in range(2)])
    held = send(relay.smtp_port, ["held@example.org"])
    wait_until(lambda: len(fake_ses.requests) == 1)
    other = send(relay.smtp_port, ["other@example.org"])
    wait_until(lambda: set(spool_states(relay).values()) == {"deferred"} and len(spool_states(relay)) == 2)

    hold = queue(tmp_path, "hold", held)
    assert (hold.returncode, hold.stdout.split()) == (0, [f"{held}:", "held"]), hold.stderr
    assert queue(tmp_path, "retry", held).returncode == 1  # held: retry does not touch it
    # SES works now; retry --all makes every deferred message due: had the hold not taken, the held
    # one would be due in the same round as the other and sent with it.
    retry = queue(tmp_path, "retry", "--all")
    assert (retry.returncode, retry.stdout.split()) == (0, [f"{other}:", "due", "now"]), retry.stderr
    wait_until(lambda: "other@example.org" in delivered(fake_ses), message="the deferred one was not sent")
    wait_until(lambda: relay.relay._delivery.in_flight == 0 and other not in spool_states(relay))
    assert delivered(fake_ses) == ["other@example.org"]
    assert [row["state"] for row in listed(tmp_path)] == ["held"]

    release = queue(tmp_path, "release", held)
    assert release.returncode == 0, release.stderr
    wait_until(lambda: "held@example.org" in delivered(fake_ses), message="the released message was not sent")
    assert queue(tmp_path, "release", held).returncode == 1  # gone: delivered


def test_delete_dead_removes_only_the_dead_letters_and_prints_them(tmp_path, fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "spool", **LATER})
    fake_ses.queue(
        Fault.error("MessageRejected", "Email address is not verified."),
        Fault.error("MessageRejected", "Email address is not verified."),
        Fault.error("InternalFailure", status=500),
    )
    ids = []
    for n in range(3):
        ids.append(send(relay.smtp_port, [f"r{n}@example.org"]))
        wait_until(lambda n=n: len(fake_ses.requests) == n + 1)
    wait_until(lambda: sorted(spool_states(relay).values()) == ["dead", "dead", "deferred"])

    deleted = queue(tmp_path, "delete", "--dead")
    assert deleted.returncode == 0, deleted.stderr
    assert sorted(line.split(":")[0] for line in deleted.stdout.splitlines()) == sorted(ids[:2])
    assert [(row["id"], row["state"]) for row in listed(tmp_path)] == [(ids[2], "deferred")]
    assert queue(tmp_path, "delete", "--dead").returncode == 1  # nothing matched

    assert queue(tmp_path, "delete", ids[2]).returncode == 0
    assert listed(tmp_path) == [] and spool_states(relay) == {}
    assert delivered(fake_ses) == []


def test_unknown_ids_exit_1_and_a_config_error_exits_2(tmp_path):
    fill(tmp_path / "state" / "spool", [{"id": "aaaaaaaaaaaa"}])
    actions = ("show", "hold", "release", "retry", "delete")
    with ThreadPoolExecutor(len(actions)) as pool:  # independent processes: run them side by side
        results = list(pool.map(lambda action: queue(tmp_path, action, "ffffffffffff"), actions))
    for action, result in zip(actions, results, strict=True):
        assert result.returncode == 1, (action, result.stdout, result.stderr)
        assert "ffffffffffff" in result.stderr
    both = queue(tmp_path, "delete", "aaaaaaaaaaaa", "ffffffffffff")  # one deleted, one unknown
    assert (both.returncode, both.stdout.split()) == (1, ["aaaaaaaaaaaa:", "deleted"])
    assert queue(tmp_path, "hold", "--all").returncode == 1  # nothing matched
    assert queue(tmp_path, "list", "--config", str(tmp_path / "missing.yaml")).returncode == 2


def test_no_spool_yet_is_an_empty_queue_and_nothing_is_created(tmp_path):
    assert (queue(tmp_path, "list").returncode, queue(tmp_path, "summary").returncode) == (0, 0)
    assert queue(tmp_path, "show", "aaaaaaaaaaaa").returncode == 1
    assert not (tmp_path / "state").exists()


def test_summary_counts_sender_domains_by_age(tmp_path):
    fill(tmp_path / "state" / "spool", [
        {"id": "a00000000001", "age": 60},                    # 1 min: 5m
        {"id": "a00000000002", "age": 7 * 60},                # 10m
        {"id": "b00000000001", "age": 30 * 60, "mail_from": "Ops@Other.ORG"},  # 40m
        {"id": "c00000000001", "age": 2 * 86400, "mail_from": ""},            # the null sender: 1280m+
        {"id": "d00000000001", "age": 60, "dead": True},      # a dead letter: by state only
    ])
    result = queue(tmp_path, "summary", "--json")
    assert result.returncode == 0, result.stderr
    shape = json.loads(result.stdout)
    buckets = shape["buckets"]
    assert buckets[0] == "5m" and buckets[-1] == "1280m+"
    rows = {row["domain"]: dict(zip(buckets, row["counts"], strict=True)) for row in shape["domains"]}
    assert {domain: {b: n for b, n in row.items() if n} for domain, row in rows.items()} == {
        "example.com": {"5m": 1, "10m": 1},
        "other.org": {"40m": 1},
        "<>": {"1280m+": 1},
    }
    assert sum(shape["total"]) == 4
    assert shape["by_state"] == {"queued": 4, "deferred": 0, "held": 0, "dead": 1}

    table = queue(tmp_path, "summary")
    assert table.returncode == 0, table.stderr
    header, total, *domains = table.stdout.splitlines()[:5]
    assert header.split() == ["T", *buckets]
    assert total.split() == ["TOTAL", "4", "1", "1", "0", "1", "0", "0", "0", "0", "0", "1"]
    assert domains[0].split()[:2] == ["example.com", "2"]

    dead = json.loads(queue(tmp_path, "summary", "--json", "--state", "dead").stdout)
    assert dead["total"][0] == 1 and sum(dead["total"]) == 1


def test_show_of_a_large_body_prints_its_headers_only_escaped(tmp_path):
    spool_dir = tmp_path / "state" / "spool"
    raw = b"From: alice@example.com\r\nSubject: \x1b[31mred\r\n  folded\r\n\r\n" + b"BODY" * 200_000
    fill(spool_dir, [{"id": "big000000001", "raw": raw}])
    assert (spool_dir / "bodies" / "big000000001").exists()  # a file of its own, not inline
    shown = queue(tmp_path, "show", "big000000001", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["headers"] == [["From", "alice@example.com"], ["Subject", "\x1b[31mred folded"]]
    assert data["headers_truncated"] is False and "BODY" not in shown.stdout
    text = queue(tmp_path, "show", "big000000001")
    assert "\x1b" not in text.stdout and "Subject: \\x1b[31mred" in text.stdout
    assert "BODY" not in text.stdout


def test_the_cli_leaves_a_body_file_without_its_row_alone(tmp_path):
    # On a running relay, a body file whose row is not committed yet is a message about to get 250:
    # the relay's own open() sweeps such files, the CLI must not.
    spool_dir = tmp_path / "state" / "spool"
    fill(spool_dir, [{"id": "aaaaaaaaaaaa"}])
    uncommitted = spool_dir / "bodies" / "bbbbbbbbbbbb"
    uncommitted.write_bytes(b"x" * 300_000)
    for args in (("list",), ("summary",), ("show", "aaaaaaaaaaaa"), ("delete", "--all")):
        assert queue(tmp_path, *args).returncode == 0
    assert uncommitted.exists()


def test_list_pages_through_a_queue_larger_than_one_page(tmp_path):
    async def main() -> None:
        spool = SqliteSpool(tmp_path / "state" / "spool")
        await spool.open()
        try:  # concurrent puts share commits: a quick fill
            await asyncio.gather(*(
                spool.put(f"m{n:011d}", MESSAGE, mail_from="alice@example.com", recipients=["bob@example.org"],
                          params={}, message_id=None)
                for n in range(1200)
            ))
        finally:
            await spool.close()

    asyncio.run(main())
    assert sorted(row["id"] for row in listed(tmp_path)) == [f"m{n:011d}" for n in range(1200)]
