"""The console's pages and the trace queries behind them, without a server: hourly counts (what
counts as sent, bounced and complained), rates against SES's levels, escaping, the SVG bars."""

from __future__ import annotations

import asyncio
import re

from relay.console import pages
from relay.console.charts import hourly_bars
from relay.feedback.events import FeedbackEvent
from relay.spool.store import Chunk, SpoolEntry
from relay.suppression.base import Reason, SuppressionEntry
from relay.trace.store import TraceStore
from tests.unit.test_trace_store import Clock, record

HOUR = 3600.0


def test_hourly_counts_sent_recipients_permanent_bounces_and_complaints_by_hour(tmp_path):
    clock = Clock(1_700_000_000.0 - 1_700_000_000.0 % HOUR + 1800)  # half past an hour

    async def action(store: TraceStore):
        # Two hours ago: a direct send to two recipients; a refused one (not sent).
        store.record(record("d1", at=clock.now - 2 * HOUR, rcpts=("a@example.org", "b@example.org")))
        store.record(record("r1", at=clock.now - 2 * HOUR, outcome="refused", ses_id=None,
                            reply="554 5.7.1 refused"))
        # A spooled message, received an hour ago; its first successful attempt now (counts now, once).
        store.record(record("s1", at=clock.now - HOUR, ses_id=None, outcome="queued",
                            reply="250 2.0.0 Ok: queued as s1"))
        await store.flush()
        store.on_attempt("s1", "deferred", None, None, "throttled")
        store.on_attempt("s1", "sent", 0, "ses-s1", None)
        store.on_attempt("s1", "sent", 1, "ses-s1b", None)  # a second chunk: not a second message
        store.on_event(FeedbackEvent("Bounce", "Permanent/General", ("a@example.org",), message_id="ses-1"), "sqs")
        store.on_event(FeedbackEvent("Bounce", "Transient/MailboxFull", ("b@example.org",),
                                     message_id="ses-1"), "sqs")
        store.on_event(FeedbackEvent("Complaint", "abuse", ("bob@example.org",), message_id="ses-s1"), "sns")
        await store.flush()
        return await store.hourly(3)

    hours = asyncio.run(_with_store(tmp_path, clock, action))
    assert [h["sent"] for h in hours] == [2, 0, 1]
    assert [h["bounced"] for h in hours] == [0, 0, 1]  # the transient bounce is not counted
    assert [h["complained"] for h in hours] == [0, 0, 1]
    assert hours[-1]["hour"].endswith(":00:00.000+00:00")
    totals = pages.rates(hours)
    assert totals["bounce_rate"] == 1 / 3 and totals["complaint_rate"] == 1 / 3


async def _with_store(tmp_path, clock, action):
    store = TraceStore(tmp_path / "trace.db", retention_days=7, max_rows=100, clock=clock)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def _hours(sent: int, bounced: int, complained: int) -> list[dict]:
    return [{"hour": "2026-12-01T10:00:00.000+00:00", "sent": sent, "bounced": bounced, "complained": complained}]


def _card_class(html: str, rate: str) -> str:
    match = re.search(r'<div class="card (\w+)" data-rate="' + rate + '"', html)
    assert match, html
    return match.group(1)


def test_rate_cards_judge_against_ses_review_and_pause_levels():
    assert _card_class(pages.overview(_hours(1000, 10, 0), None, 24), "bounce") == "good"  # 1 %
    assert _card_class(pages.overview(_hours(1000, 60, 0), None, 24), "bounce") == "wait"  # 6 %: review
    assert _card_class(pages.overview(_hours(1000, 120, 0), None, 24), "bounce") == "bad"  # 12 %: pause
    assert _card_class(pages.overview(_hours(10000, 0, 5), None, 24), "complaint") == "good"  # 0.05 %
    assert _card_class(pages.overview(_hours(10000, 0, 20), None, 24), "complaint") == "wait"  # 0.2 %
    assert _card_class(pages.overview(_hours(10000, 0, 60), None, 24), "complaint") == "bad"  # 0.6 %
    assert "-" in pages.overview(_hours(0, 0, 0), None, 24)  # nothing sent: no rate, not a division error


def test_bars_are_proportional_and_carry_their_numbers():
    hours = [{"hour": f"2026-12-01T{h:02d}:00:00.000+00:00", "sent": n, "bounced": 0, "complained": 0}
             for h, n in enumerate([0, 5, 10])]
    svg = hourly_bars(hours, ["sent"], "sent per hour")
    heights = [float(h) for h in re.findall(r'<rect class="sent" [^>]*height="([\d.]+)"', svg)]
    assert heights[0] == 0 and heights[2] > 0 and abs(heights[1] * 2 - heights[2]) < 0.2
    assert "02:00 UTC sent: 10" in svg


def test_everything_a_client_or_ses_sent_is_escaped():
    hostile = '<script>alert("x")</script>'
    message = {
        "queue_id": 'q"1', "known": True, "received_at": "2026-12-01T10:00:00.000+00:00",
        "mail_from": hostile, "recipients": [hostile + "@example.org"], "subject": hostile,
        "message_id": hostile, "state": "bounced", "smtp_reply": "250 ok", "size": 5,
        "ses_message_ids": [{"ses_message_id": hostile, "chunk": 0}],
        "steps": [{"at": "2026-12-01T10:00:00.000+00:00", "step": "Bounce", "detail": hostile,
                   "recipients": [hostile], "source": "sqs", "matched": True}],
    }
    entry = SpoolEntry(id="q1", created=0, mail_from=hostile, params={}, message_id=hostile, size=1, state="held",
                       attempts=0, next_attempt=0, last_error=hostile, possible_duplicate=False,
                       chunks=[Chunk(index=0, recipients=[hostile], ses_message_id=None)])
    suppressed = SuppressionEntry(hostile, Reason.BOUNCE, source=hostile, detail=hostile)
    for html in (
        pages.message_list([message], hostile),
        pages.message_page(message),
        pages.queue_page({"held": 1}, [entry], None, 10.0, 200),
        pages.suppression_page([suppressed], hostile, 1, None, 200),
    ):
        assert "<script" not in html and "&lt;script&gt;" in html
    assert 'href="/console/messages/q%221"' in pages.message_list([message], "")


def test_queue_page_in_direct_mode_says_there_is_no_spool():
    html = pages.queue_page(None, [], None, 0.0, 200)
    assert "delivery.mode is direct" in html and "<table" not in html
