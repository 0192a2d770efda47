"""The trace store: what the seams hand it is written off the loop and found by every kind of query;
retention prunes by age and by rows (with an injected clock); private fields can be kept hashed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from relay.feedback.events import FeedbackEvent
from relay.metrics import RelayMetrics
from relay.trace import query
from relay.trace.schema import Hasher, TraceError, connect
from relay.trace.store import TraceStore
from relay.transaction import TransactionRecord


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(queue_id: str, *, at: float, rcpts=("Bob@Example.org",), ses_id: str | None = "ses-1",
           outcome: str = "sent", reply: str = "250 2.0.0 Ok ses-1") -> TransactionRecord:
    rec = TransactionRecord(queue_id, "127.0.0.1", mail_from="alice@example.com", received_at=at)
    rec.rcpt_list = list(rcpts)
    rec.recipients = len(rcpts)
    rec.message_id = f"<{queue_id}@client.test>"
    rec.subject = b"=?utf-8?q?Caf=C3=A9?= order"
    rec.size = 123
    rec.ses_message_id = ses_id
    rec.reply_line = reply
    rec.finish(reply, outcome)
    return rec


def run(coro):
    return asyncio.run(coro)


async def with_store(path: Path, action, **kwargs):
    store = TraceStore(path, retention_days=kwargs.pop("retention_days", 7), max_rows=kwargs.pop("max_rows", 100),
                       **kwargs)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def test_every_kind_of_query_finds_the_message_and_its_timeline(tmp_path):
    clock = Clock()
    metrics = RelayMetrics()

    async def action(store: TraceStore):
        store.record(record("q1", at=clock.now))
        store.record(record("q2", at=clock.now + 1, rcpts=("carol@example.org",), ses_id=None,
                            outcome="queued", reply="250 2.0.0 Ok: queued as q2"))
        store.on_attempt("q2", "deferred", None, None, "throttled")
        store.on_attempt("q2", "sent", 0, "ses-2", None)
        store.on_event(FeedbackEvent("Delivery", recipients=("bob@example.org",), message_id="ses-1"), "sqs")
        store.on_event(FeedbackEvent("Bounce", "Permanent/General", ("carol@example.org",),
                                     message_id="ses-2", detail="smtp; 550 5.1.1"), "sns")
        store.on_event(FeedbackEvent("Complaint", "abuse", ("x@example.net",), message_id="ses-other"), "sns")
        await store.flush()
        return (await store.search("q1"), await store.timeline("q2"), await store.search("ses-other"),
                store.size_bytes)

    by_queue, q2, unknown, size = run(with_store(tmp_path / "trace.db", action, clock=clock, metrics=metrics))
    [q1] = by_queue
    assert q1["subject"] == "Café order" and q1["recipients"] == ["Bob@Example.org"]
    assert [s["step"] for s in q1["steps"]] == ["accepted", "Delivery"]
    assert q1["steps"][0]["smtp_reply"] == "250 2.0.0 Ok ses-1" and q1["state"] == "delivered"
    assert [s["step"] for s in q2["steps"]] == ["accepted", "attempt", "attempt", "Bounce"]
    assert q2["ses_message_ids"] == [{"ses_message_id": "ses-2", "chunk": 0}] and q2["state"] == "bounced"
    assert unknown[0]["known"] is False and unknown[0]["steps"][0]["matched"] is False
    assert size > 0
    assert metrics.registry.get_sample_value("ses_relay_trace_events_unmatched_total") == 1

    # The CLI's own read-only connection sees the same, by every kind of query.
    db = connect(tmp_path / "trace.db", create=False)
    for text in ("q1", "<q1@client.test>", "q1@client.test", "ses-1", "BOB@example.org"):
        assert [m["queue_id"] for m in query.search(db, None, text)] == ["q1"], text
    assert [m["queue_id"] for m in query.search(db, None, "ses-2")] == ["q2"]
    assert query.search(db, None, "nobody@example.org") == []
    with pytest.raises(sqlite3.OperationalError):  # query_only: a reader never writes
        db.execute("DELETE FROM messages")
    db.close()


def test_an_event_recorded_before_its_send_is_joined_when_the_send_arrives(tmp_path):
    async def action(store: TraceStore):
        store.on_event(FeedbackEvent("Delivery", recipients=("bob@example.org",), message_id="ses-1"), "sns")
        await store.flush()
        store.record(record("q1", at=1_700_000_000.0))
        await store.flush()
        return await store.timeline("q1")

    timeline = run(with_store(tmp_path / "trace.db", action))
    assert [s["step"] for s in timeline["steps"]] == ["accepted", "Delivery"]
    assert timeline["steps"][1]["matched"] is True


def test_retention_prunes_by_age_and_by_rows_with_everything_attached(tmp_path):
    clock = Clock()
    metrics = RelayMetrics()
    day = 86400.0

    async def action(store: TraceStore):
        for number in range(5):
            store.record(record(f"q{number}", at=clock.now - (10 - number) * day, ses_id=f"ses-{number}"))
            store.on_event(FeedbackEvent("Delivery", message_id=f"ses-{number}"), "sqs")
        clock.now -= 8 * day  # an event for a message the relay never saw, 8 days ago
        store.on_event(FeedbackEvent("Delivery", message_id="elsewhere"), "sqs")
        clock.now += 8 * day
        for number in range(5, 10):
            store.record(record(f"q{number}", at=clock.now - 0.1 * number, ses_id=f"ses-{number}"))
        await store.flush()
        clock.now += 61  # past PRUNE_SECONDS: the next flush prunes
        await store.flush()

    run(with_store(tmp_path / "trace.db", action, clock=clock, metrics=metrics, retention_days=7, max_rows=3))
    db = connect(tmp_path / "trace.db", create=False)
    kept = [row[0] for row in db.execute("SELECT queue_id FROM messages ORDER BY received_at")]
    assert kept == ["q7", "q6", "q5"]  # the 3 newest; q0-q3 were older than 7 days
    assert db.execute("SELECT count(*) FROM steps").fetchone() == (0,)  # their events went with them
    assert db.execute("SELECT count(*) FROM ses_ids").fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM recipients").fetchone() == (3,)
    db.close()
    sample = metrics.registry.get_sample_value
    assert sample("ses_relay_trace_pruned_total", {"reason": "age"}) == 5  # q0-q3 + the unmatched event
    assert sample("ses_relay_trace_pruned_total", {"reason": "rows"}) == 3  # q4 (6 days old), q9, q8


def test_hashed_recipients_are_unreadable_in_the_file_but_found_by_address(tmp_path):
    hasher = Hasher.from_state_dir(tmp_path, create=True)
    assert (tmp_path / "trace.key").stat().st_mode & 0o777 == 0o600

    async def action(store: TraceStore):
        store.record(record("q1", at=1_700_000_000.0))
        store.on_event(FeedbackEvent("Bounce", "Permanent/General", ("bob@example.org",), message_id="ses-1"),
                       "sqs")
        await store.flush()

    run(with_store(tmp_path / "trace.db", action, hasher=hasher, subject_hasher=hasher, store_subject=False))
    content = b"".join(p.read_bytes() for p in tmp_path.glob("trace.db*"))
    assert b"bob@example.org" not in content.lower() and "Café".encode() not in content
    db = connect(tmp_path / "trace.db", create=False)
    again = Hasher.from_state_dir(tmp_path, create=False)  # the CLI reads the same key
    [found] = query.search(db, again, "Bob@Example.ORG")
    assert found["queue_id"] == "q1" and found["subject"] is None and found["subject_hash"].startswith("hmac:")
    assert found["steps"][1]["recipients"] == [again.address("bob@example.org")]
    assert query.search(db, Hasher(b"another key"), "bob@example.org") == []
    db.close()
    with pytest.raises(TraceError):
        Hasher.from_state_dir(tmp_path / "elsewhere", create=False)


def test_pending_writes_are_flushed_on_close_and_the_reader_needs_the_file(tmp_path):
    with pytest.raises(TraceError):
        connect(tmp_path / "missing.db", create=False)

    async def action(store: TraceStore):
        store.record(record("q1", at=1_700_000_000.0))  # no flush: close must write it

    run(with_store(tmp_path / "trace.db", action))
    db = connect(tmp_path / "trace.db", create=False)
    assert [m["queue_id"] for m in query.search(db, None, "q1")] == ["q1"]
    db.close()


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("7d", 604800.0)])
def test_durations(text, seconds):
    assert query.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "-5m", "0", "nan", "inf"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        query.parse_duration(text)


def test_open_and_click_events_join_the_timeline_with_their_detail(tmp_path):
    from relay.feedback.events import parse_ses_notification

    fixtures = Path(__file__).parent.parent / "fixtures" / "ses"
    clock = Clock()

    async def action(store: TraceStore):
        store.record(record("q1", at=clock.now, ses_id="0100017a1e0b5bb7-34343434-000000"))
        for name in ("open_event.json", "click_event.json"):
            store.on_event(parse_ses_notification((fixtures / name).read_text()), "sqs")
        await store.flush()
        return await store.timeline("q1")

    q1 = run(with_store(tmp_path / "trace.db", action, clock=clock))
    steps = {s["step"]: s for s in q1["steps"]}
    assert steps["Click"]["detail"] == "https://shop.example.com/orders/42" and steps["Click"]["matched"]
    assert steps["Open"]["detail"].startswith("Mozilla/5.0")
    assert q1["state"] == "sent"  # an open or a click says nothing about delivery


def test_an_event_delivered_twice_or_by_both_sns_and_sqs_shows_once(tmp_path):
    clock = Clock()
    bounce = FeedbackEvent("Bounce", "Permanent/General", ("bob@example.org",), feedback_id="fb-1",
                           message_id="ses-1", detail="smtp; 550")

    async def action(store: TraceStore):
        store.record(record("q1", at=clock.now))
        store.on_event(bounce, "sqs")
        await store.flush()
        store.on_event(bounce, "sqs")  # an SQS redelivery
        store.on_event(bounce, "sns")  # the same event through the webhook
        store.on_event(FeedbackEvent("Bounce", "Permanent/General", ("bob@example.org",), feedback_id="fb-2",
                                     message_id="ses-1", detail="smtp; 550"), "sqs")  # a second bounce
        await store.flush()
        return await store.timeline("q1")

    q1 = run(with_store(tmp_path / "trace.db", action, clock=clock))
    assert [(s["step"], s["feedback_id"]) for s in q1["steps"][1:]] == [("Bounce", "fb-1"), ("Bounce", "fb-2")]


@pytest.mark.parametrize("hashed", [False, True])
def test_an_event_for_a_message_the_relay_never_sent_is_found_by_its_recipient(tmp_path, hashed):
    clock = Clock()
    hasher = Hasher(b"k" * 32) if hashed else None

    async def action(store: TraceStore):
        store.on_event(FeedbackEvent("Bounce", "Permanent/General", ("Stranger@Example.net",),
                                     message_id="ses-elsewhere"), "sqs")
        await store.flush()
        return await store.search("stranger@example.net"), await store.search("nobody@example.net")

    found, nothing = run(with_store(tmp_path / "trace.db", action, clock=clock, hasher=hasher))
    assert [(m["known"], m["ses_message_ids"][0]["ses_message_id"]) for m in found] == [(False, "ses-elsewhere")]
    assert nothing == []


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from relay.trace.store import decode_subject  # noqa: E402


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=120), st.sampled_from(["utf-8", "iso-8859-1", "utf-16"]),
       st.sampled_from(["b", "q"]))
def test_decode_subject_reads_back_what_the_email_package_encodes(text, charset, encoding):
    import email.charset
    import email.header

    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return
    cs = email.charset.Charset(charset)
    cs.header_encoding = email.charset.BASE64 if encoding == "b" else email.charset.QP
    encoded = email.header.Header(text, cs, maxlinelen=76).encode()  # folded over several words
    assert decode_subject(encoded.encode()) == str(email.header.make_header(email.header.decode_header(encoded)))


def test_decode_subject_keeps_plain_text_broken_words_and_the_spaces_between_text_and_words():
    assert decode_subject(b"Invoice 42") == "Invoice 42"
    assert decode_subject(b"Re: =?utf-8?q?Caf=C3=A9?= order") == "Re: Café order"
    assert decode_subject(b"=?utf-8?b?Q2Fm?=\r\n =?utf-8?b?w6k=?=") == "Café"  # folded, gap dropped
    assert decode_subject(b"=?x-unknown?q?abc?= tail") == "=?x-unknown?q?abc?= tail"
    assert decode_subject(b"=?utf-8?b?***?=") == "=?utf-8?b?***?="
    assert decode_subject("caf\xe9".encode("latin-1")) == "caf\ufffd"
