"""SES notification / event JSON -> FeedbackEvent, and the processor's decisions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.feedback.events import FeedbackFormatError, parse_ses_notification
from relay.feedback.processor import FeedbackProcessor
from relay.feedback.sqs import parse_sqs_body
from relay.metrics import RelayMetrics
from relay.suppression.base import Reason
from relay.suppression.memory import MemoryStore

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ses"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_permanent_bounce_notification():
    event = parse_ses_notification(load("bounce_permanent_notification.json"))
    assert event.type == "Bounce"
    assert event.subtype == "Permanent/General"
    assert event.recipients == ("jane@example.org", "richard@example.org")  # display name stripped
    assert event.feedback_id.startswith("0100017a1e0b5e2b-4b1bba3b")
    assert event.message_id.startswith("0100017a1e0b5bb7-1a2b3c4d")
    assert "550 5.1.1" in event.detail
    assert event.suppresses and not event.is_transient_bounce


def test_transient_bounce_event_format():
    event = parse_ses_notification(json.dumps(load("bounce_transient_event.json")))
    assert (event.type, event.subtype, event.recipients) == ("Bounce", "Transient/MailboxFull", ("full@example.org",))
    assert event.is_transient_bounce and not event.suppresses


def test_on_account_suppression_list_subtype_is_kept():
    event = parse_ses_notification(load("bounce_suppressed_event.json"))
    assert event.subtype == "Permanent/OnAccountSuppressionList"
    assert event.metric_subtype == "Permanent/OnAccountSuppressionList"
    assert event.suppresses


def test_complaint():
    event = parse_ses_notification(load("complaint_notification.json"))
    assert (event.type, event.subtype, event.recipients) == ("Complaint", "abuse", ("angry@example.org",))
    assert event.suppresses


@pytest.mark.parametrize("name,kind", [("delivery_notification.json", "Delivery"), ("send_event.json", "Send"),
                                       ("delivery_delay_event.json", "DeliveryDelay")])
def test_counted_only_events(name, kind):
    event = parse_ses_notification(load(name))
    assert event.type == kind
    assert not event.suppresses and not event.is_transient_bounce


@pytest.mark.parametrize("payload", ["", "[]", "{}", '{"notificationType": "Bounce"}', '{"eventType": 5}',
                                     '{"notificationType": "Complaint", "complaint": []}', "not json"])
def test_malformed_payloads_raise_format_error(payload):
    with pytest.raises(FeedbackFormatError):
        parse_ses_notification(payload)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(
                        st.sampled_from(["notificationType", "eventType", "bounce", "complaint", "mail",
                                         "bouncedRecipients", "emailAddress", "bounceType", "delivery",
                                         "recipients", "complainedRecipients"]), children, max_size=5),
                    max_leaves=20))
def test_parser_never_crashes_on_arbitrary_json(value):
    try:
        event = parse_ses_notification(json.dumps(value))
    except FeedbackFormatError:
        return
    assert isinstance(event.type, str) and event.type
    assert all(isinstance(r, str) and "@" in r for r in event.recipients)


def test_sqs_body_accepts_sns_envelope_and_raw():
    raw = json.dumps(load("complaint_notification.json"))
    wrapped = json.dumps({"Type": "Notification", "MessageId": "m", "Message": raw})
    assert parse_sqs_body(raw).recipients == parse_sqs_body(wrapped).recipients == ("angry@example.org",)


def run(coro):
    return asyncio.run(coro)


def test_processor_suppresses_permanent_bounces_and_complaints_only():
    async def scenario():
        store, metrics = MemoryStore(), RelayMetrics()
        await store.open()
        processor = FeedbackProcessor(store, metrics)
        written = 0
        for name in ("bounce_permanent_notification.json", "complaint_notification.json",
                     "bounce_transient_event.json", "delivery_notification.json"):
            written += await processor.apply(parse_ses_notification(load(name)), source="sns")
        entries = {e.address: e async for e in store.iter_entries()}
        return written, entries, metrics

    written, entries, metrics = run(scenario())
    assert written == 3
    assert set(entries) == {"jane@example.org", "richard@example.org", "angry@example.org"}
    assert entries["jane@example.org"].reason is Reason.BOUNCE
    assert entries["jane@example.org"].source == "sns"
    assert entries["jane@example.org"].feedback_id.startswith("0100017a1e0b5e2b-4b1bba3b")
    assert entries["angry@example.org"].reason is Reason.COMPLAINT
    sample = metrics.registry.get_sample_value
    assert sample("ses_relay_feedback_events_total", {"type": "Bounce", "subtype": "Transient/MailboxFull",
                                                      "source": "sns"}) == 1
    assert sample("ses_relay_feedback_events_total", {"type": "Delivery", "subtype": "", "source": "sns"}) == 1


def test_transient_bounces_suppress_after_threshold_within_window():
    now = [1000.0]

    async def scenario():
        store = MemoryStore()
        await store.open()
        processor = FeedbackProcessor(store, RelayMetrics(), transient_suppress_after=3, transient_window=100,
                                      clock=lambda: now[0])
        event = parse_ses_notification(load("bounce_transient_event.json"))
        results = []
        for step in (0, 10, 200, 210):  # the first one falls out of the window before the 3rd
            now[0] = 1000.0 + step
            results.append(await processor.apply(event, source="sqs"))
        results.append(await processor.apply(event, source="sqs"))  # 3 within the window: suppress
        return results, await store.get("full@example.org")

    results, entry = run(scenario())
    assert results == [0, 0, 0, 0, 1]
    assert entry is not None and entry.reason is Reason.BOUNCE
