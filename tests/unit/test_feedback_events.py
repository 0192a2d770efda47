"""SES notification / event JSON -> FeedbackEvent, and the processor's decisions."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import example, given
from hypothesis import strategies as st

import relay.feedback.webhook as webhook_module
from relay.feedback.events import FeedbackEvent, FeedbackFormatError, parse_ses_notification
from relay.feedback.processor import FeedbackProcessor
from relay.feedback.sns import SnsVerifier
from relay.feedback.sqs import parse_sqs_body
from relay.metrics import RelayMetrics
from relay.suppression.base import Reason
from relay.suppression.memory import MemoryStore
from testkit.sns_signer import TOPIC_ARN, FakeSns

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


@pytest.mark.parametrize("name,kind,detail", [
    ("open_event.json", "Open", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"),
    ("click_event.json", "Click", "https://shop.example.com/orders/42"),
    ("reject_event.json", "Reject", "Bad content"),
])
def test_open_click_and_reject_keep_their_detail_for_the_trace_and_suppress_nothing(name, kind, detail):
    event = parse_ses_notification(load(name))
    assert (event.type, event.detail, event.recipients) == (kind, detail, ())
    assert event.message_id == "0100017a1e0b5bb7-34343434-000000"
    assert "192.0.2.1" not in repr(event)  # the reader's address is not kept
    assert not event.suppresses and not event.is_transient_bounce


@pytest.mark.parametrize("payload", ["", "[]", "{}", '{"notificationType": "Bounce"}', '{"eventType": 5}',
                                     '{"notificationType": "Complaint", "complaint": []}', "not json"])
def test_malformed_payloads_raise_format_error(payload):
    with pytest.raises(FeedbackFormatError):
        parse_ses_notification(payload)


FIELD_NAMES = ["notificationType", "eventType", "bounce", "complaint", "delivery", "deliveryDelay", "mail",
               "bouncedRecipients", "complainedRecipients", "delayedRecipients", "recipients", "emailAddress",
               "diagnosticCode", "bounceType", "bounceSubType", "feedbackId", "complaintFeedbackType",
               "complaintSubType", "delayType", "messageId", "timestamp"]
# Leaves: every JSON scalar, plus strings the parser gives meaning to (event types, addresses, an address
# whose display form strips to nothing, a lone surrogate: valid JSON, not encodable text).
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
                | st.sampled_from(["Bounce", "Complaint", "Delivery", "DeliveryDelay", "Send", "Permanent",
                                   "jane@example.org", "Jane <jane@example.org>", "jane@example.org <>",
                                   "a\ud800@example.org", ""]))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# At a known field, a scalar where SES puts an object or an array is the likeliest mistake: weight them up.
FIELD_VALUES = JSON_SCALARS | JSON_VALUES


def assert_sound(event: FeedbackEvent) -> None:
    """What the processor, the store and the metrics rely on: the right types and encodable text."""
    assert isinstance(event.type, str) and event.type
    assert isinstance(event.subtype, str) and isinstance(event.detail, str)
    assert isinstance(event.recipients, tuple)
    assert all(isinstance(r, str) and "@" in r for r in event.recipients)
    for value in (event.feedback_id, event.message_id, event.timestamp):
        assert value is None or isinstance(value, str)
    for text in (event.type, event.subtype, event.detail, *event.recipients,
                 *(v for v in (event.feedback_id, event.message_id, event.timestamp) if v is not None)):
        text.encode("utf-8")  # a lone surrogate would fail here, as it fails in sqlite and in the logs
    assert event.metric_type and isinstance(event.metric_subtype, str)


@given(JSON_VALUES)
def test_parser_never_crashes_on_arbitrary_json(value):
    try:
        event = parse_ses_notification(json.dumps(value))
    except FeedbackFormatError:
        return
    assert_sound(event)


TEMPLATES = {
    "Bounce": load("bounce_permanent_notification.json"),
    "Complaint": load("complaint_notification.json"),
    "Delivery": load("delivery_notification.json"),
    "DeliveryDelay": load("delivery_delay_event.json"),
    "Send": load("send_event.json"),
    "Open": load("open_event.json"),
    "Click": load("click_event.json"),
    "Reject": load("reject_event.json"),
}
COMMON_PATHS = [("mail",), ("mail", "messageId"), ("mail", "timestamp"), ("notificationType",), ("eventType",)]
FIELD_PATHS = {
    "Bounce": [("bounce",), ("bounce", "bouncedRecipients"), ("bounce", "bouncedRecipients", 0),
               ("bounce", "bouncedRecipients", 1, "emailAddress"), ("bounce", "bouncedRecipients", 0, "diagnosticCode"),
               ("bounce", "bounceType"), ("bounce", "bounceSubType"), ("bounce", "feedbackId")],
    "Complaint": [("complaint",), ("complaint", "complainedRecipients"), ("complaint", "complainedRecipients", 0),
                  ("complaint", "complainedRecipients", 0, "emailAddress"), ("complaint", "complaintFeedbackType"),
                  ("complaint", "complaintSubType"), ("complaint", "feedbackId")],
    "Delivery": [("delivery",), ("delivery", "recipients"), ("delivery", "recipients", 0)],
    "DeliveryDelay": [("deliveryDelay",), ("deliveryDelay", "delayedRecipients"),
                      ("deliveryDelay", "delayedRecipients", 0),
                      ("deliveryDelay", "delayedRecipients", 0, "emailAddress"), ("deliveryDelay", "delayType")],
    "Send": [("send",)],
    "Open": [("open",), ("open", "userAgent")],
    "Click": [("click",), ("click", "link")],
    "Reject": [("reject",), ("reject", "reason")],
}


def put(document, path, value) -> None:
    """Set document[path...] = value where the path still exists (an earlier put may have replaced it)."""
    target = document
    for step in path[:-1]:
        if isinstance(target, dict) and isinstance(step, str) and step in target:
            target = target[step]
        elif isinstance(target, list) and isinstance(step, int) and step < len(target):
            target = target[step]
        else:
            return
    last = path[-1]
    if isinstance(target, dict) and isinstance(last, str):
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value


@st.composite
def mistyped_notifications(draw):
    """A real SES notification of each kind, in either format, with arbitrary JSON at its known fields."""
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    payload = copy.deepcopy(TEMPLATES[kind])
    payload.pop("notificationType", None)
    payload.pop("eventType", None)
    payload[draw(st.sampled_from(["notificationType", "eventType"]))] = kind
    for path in draw(st.lists(st.sampled_from(FIELD_PATHS[kind] + COMMON_PATHS), min_size=1, max_size=3)):
        put(payload, path, draw(FIELD_VALUES))
    return payload


@given(mistyped_notifications(), st.booleans())
@example({"notificationType": "Bounce", "bounce": {"bouncedRecipients": 5}}, True)
@example({"eventType": "Bounce", "bounce": {"bounceType": "Permanent", "bouncedRecipients": 5}}, False)
@example({"notificationType": "Delivery", "delivery": {"recipients": 7}}, True)
@example({"eventType": "Delivery", "delivery": {"recipients": 7.5}}, False)
def test_wrongly_typed_fields_give_an_event_or_a_format_error_nothing_else(payload, as_text):
    try:
        event = parse_ses_notification(json.dumps(payload) if as_text else payload)
    except FeedbackFormatError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) <= 200
        return
    assert_sound(event)


def bounce_with(**fields) -> dict:
    payload = load("bounce_permanent_notification.json")
    payload["bounce"].update(fields)
    return payload


@pytest.mark.parametrize("payload,field", [
    ({"notificationType": "Bounce", "bounce": {"bouncedRecipients": 5}}, "bounce.bouncedRecipients"),
    ({"eventType": "Delivery", "delivery": {"recipients": 5}}, "delivery.recipients"),
    ({"eventType": "Delivery", "delivery": {"recipients": ["bob@example.org", None]}}, "delivery.recipients[1]"),
    ({"notificationType": "Delivery", "delivery": ["bob@example.org"]}, "delivery"),
    ({"notificationType": "Complaint", "complaint": {"complainedRecipients": [{"emailAddress": ["a@b.org"]}]}},
     "complaint.complainedRecipients[0].emailAddress"),
    ({"notificationType": "Complaint", "complaint": {"complaintFeedbackType": {"x": 1}}},
     "complaint.complaintFeedbackType"),
    ({"eventType": "DeliveryDelay", "deliveryDelay": {"delayedRecipients": "slow@example.org"}},
     "deliveryDelay.delayedRecipients"),
    (bounce_with(bouncedRecipients=[7]), "bounce.bouncedRecipients[0]"),
    (bounce_with(feedbackId=12), "bounce.feedbackId"),
    (bounce_with(bounceType=["Permanent"]), "bounce.bounceType"),
    (bounce_with(bouncedRecipients=[{"emailAddress": "jane@example.org", "diagnosticCode": 550}]),
     "bounce.bouncedRecipients[0].diagnosticCode"),
    (bounce_with(bouncedRecipients=[{"emailAddress": "jane\ud800@example.org"}]),
     "bounce.bouncedRecipients[0].emailAddress"),
    ({**load("bounce_permanent_notification.json"), "mail": ["x"]}, "mail"),
    ({**load("bounce_permanent_notification.json"), "mail": {"messageId": 1}}, "mail.messageId"),
    ({"notificationType": ["Bounce"]}, "notificationType"),
    ({"eventType": {"Bounce": 1}}, "eventType"),
])
def test_wrongly_typed_field_is_a_format_error_naming_the_field(payload, field):
    for form in (payload, json.dumps(payload)):
        with pytest.raises(FeedbackFormatError) as failure:
            parse_ses_notification(form)
        reason = str(failure.value)
        assert reason.split(" ")[0] == field, reason
        assert "\n" not in reason


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, '{"notificationType": "Bounce", "bounce": '
                                  + '{"bouncedRecipients": ' + "[" * 100_000])
def test_deeply_nested_json_is_a_format_error(text):
    with pytest.raises(FeedbackFormatError):
        parse_ses_notification(text)
    with pytest.raises(FeedbackFormatError):
        parse_sqs_body(text)
    with pytest.raises(FeedbackFormatError):
        parse_sqs_body(json.dumps({"Type": "Notification", "MessageId": "m", "Message": text}))


def test_an_address_whose_display_form_strips_to_nothing_is_not_a_recipient():
    event = parse_ses_notification(bounce_with(bouncedRecipients=[{"emailAddress": "jane@example.org <>"},
                                                                  {"emailAddress": "Bob <bob@example.org>"}]))
    assert event.recipients == ("bob@example.org",)


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



def transient_bounce(address: str) -> FeedbackEvent:
    event = load("bounce_transient_event.json")
    event["bounce"]["bouncedRecipients"][0]["emailAddress"] = address
    return parse_ses_notification(event)


def test_transient_bounce_tracker_forgets_addresses_once_the_window_has_passed():
    """Before: an address was forgotten only when it reached the threshold, so one bounce each grew it forever."""
    now = [1000.0]

    async def scenario():
        store = MemoryStore()
        await store.open()
        processor = FeedbackProcessor(store, RelayMetrics(), transient_suppress_after=3, transient_window=100,
                                      clock=lambda: now[0])
        for i in range(1000):
            await processor.apply(transient_bounce(f"once{i}@example.org"), source="sqs")
        tracked_within_window = processor.transient_addresses()
        now[0] += 101
        tracked_after_window = processor.transient_addresses()
        await processor.apply(transient_bounce("later@example.org"), source="sqs")
        return tracked_within_window, tracked_after_window, processor.transient_addresses(), await store.count()

    assert run(scenario()) == (1000, 0, 1, 0)


def test_transient_bounce_tracker_is_capped_and_evicts_the_least_recently_bounced():
    now = [1000.0]

    async def scenario():
        store = MemoryStore()
        await store.open()
        processor = FeedbackProcessor(store, RelayMetrics(), transient_suppress_after=2, transient_window=10_000,
                                      transient_max_addresses=50, clock=lambda: now[0])
        for i in range(200):
            now[0] += 1
            await processor.apply(transient_bounce(f"a{i}@example.org"), source="sqs")
        tracked = processor.transient_addresses()
        evicted = await processor.apply(transient_bounce("a0@example.org"), source="sqs")  # its count restarted
        kept = await processor.apply(transient_bounce("a199@example.org"), source="sqs")  # its second: suppress
        return tracked, evicted, kept, processor.transient_addresses()

    # a0 pushed out a150 (the least recently bounced); a199 was suppressed, so no longer counted
    assert run(scenario()) == (50, 0, 1, 49)


# --- the SNS endpoint (relay.feedback.webhook), in-process on 127.0.0.1 ------------------------------------------

def sns_app(fake_sns: FakeSns, store: MemoryStore, metrics: RelayMetrics) -> web.Application:
    verifier = SnsVerifier([TOPIC_ARN], fetch_certificate=fake_sns.http_get)
    app = web.Application()
    app.router.add_post("/sns", webhook_module.sns_handler(verifier, FeedbackProcessor(store, metrics), metrics,
                                                          http_get=fake_sns.http_get))
    return app


async def post_sns(client: TestClient, message: dict | bytes) -> tuple[int, str]:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    headers = {} if isinstance(message, bytes) else {"x-amz-sns-message-type": message["Type"]}
    async with client.post("/sns", data=data, headers=headers) as response:
        return response.status, await response.text()


def rejected(metrics: RelayMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("ses_relay_sns_messages_rejected_total", {"reason": reason}) or 0.0


def test_sns_webhook_ignores_wrongly_typed_notifications_and_still_applies_good_ones():
    fake = FakeSns()
    good = load("bounce_permanent_notification.json")

    async def scenario():
        store, metrics = MemoryStore(), RelayMetrics()
        await store.open()
        async with TestClient(TestServer(sns_app(fake, store, metrics))) as client:
            answers = [
                await post_sns(client, fake.notification({"notificationType": "Bounce",
                                                          "bounce": {"bouncedRecipients": 5}})),
                await post_sns(client, fake.notification({"eventType": "Delivery", "delivery": {"recipients": 7}})),
                await post_sns(client, fake.notification("[" * 100_000)),  # the SES JSON nested too deeply
                await post_sns(client, b"[" * 100_000),  # the SNS body itself
                await post_sns(client, fake.notification(good)),
            ]
        return answers, {e.address async for e in store.iter_entries()}, metrics

    answers, addresses, metrics = run(scenario())
    assert answers == [(200, "ignored\n")] * 3 + [(400, "malformed\n"), (200, "ok\n")]
    assert rejected(metrics, "not_ses_feedback") == 3
    assert rejected(metrics, "malformed") == 1
    assert addresses == {"jane@example.org", "richard@example.org"}


def test_sns_webhook_answers_no_500_for_a_bug_in_parsing_or_applying(monkeypatch, caplog):
    """Defence in depth: an unexpected exception is logged on one line; a parsing bug is counted and the
    message acknowledged (SNS would only send it again), an applying bug answers 503 so SNS retries."""
    real_parse, real_apply = webhook_module.parse_ses_notification, FeedbackProcessor.apply
    attempts: list[tuple[str, ...]] = []

    def buggy_parse(payload):
        if "parser-bug@" in payload:
            raise KeyError("a parser bug")
        return real_parse(payload)

    async def flaky_apply(self, event, *, source):
        attempts.append(event.recipients)
        if event.recipients == ("apply-bug@example.org",) and len(attempts) == 1:
            raise RuntimeError("an applying bug\nsecond line")
        return await real_apply(self, event, source=source)

    monkeypatch.setattr(webhook_module, "parse_ses_notification", buggy_parse)
    monkeypatch.setattr(FeedbackProcessor, "apply", flaky_apply)
    fake = FakeSns()

    def bounce_for(address: str) -> dict:
        return bounce_with(bouncedRecipients=[{"emailAddress": address}])

    async def scenario():
        store, metrics = MemoryStore(), RelayMetrics()
        await store.open()
        async with TestClient(TestServer(sns_app(fake, store, metrics))) as client:
            retried = fake.notification(bounce_for("apply-bug@example.org"))
            answers = [
                await post_sns(client, fake.notification(bounce_for("parser-bug@example.org"))),
                await post_sns(client, retried),
                await post_sns(client, retried),  # SNS retries: same MessageId, applied this time
            ]
        return answers, {e.address async for e in store.iter_entries()}, metrics

    answers, addresses, metrics = run(scenario())
    assert answers == [(200, "ignored\n"), (503, "internal error\n"), (200, "ok\n")]
    assert addresses == {"apply-bug@example.org"}
    assert rejected(metrics, "not_ses_feedback") == 1
    errors = [r for r in caplog.records if r.name == "relay.feedback.sns" and r.levelname == "ERROR"]
    assert len(errors) == 2
    assert "KeyError" in errors[0].getMessage() and "RuntimeError" in errors[1].getMessage()
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in errors)
