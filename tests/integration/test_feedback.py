"""The promise of the feedback loop: once SES reports a hard bounce or complaint, no further mail to
that address leaves the relay, and nothing forged, altered, foreign or replayed changes the store."""

from __future__ import annotations

import datetime
import json
import smtplib
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from relay.smtp import replies
from testkit.messages import plain_message
from testkit.sns_signer import TOPIC_ARN, FakeSns
from testkit.waiting import wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ses"
MESSAGE = plain_message(to="jane@example.org", subject="hi", body=b"hello\r\n")


def bounce_for(address: str) -> dict:
    event = json.loads((FIXTURES / "bounce_permanent_notification.json").read_text())
    event["bounce"]["bouncedRecipients"] = [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                             "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
    return event


def post_sns(relay, message: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        relay.http_url + "/sns", data=json.dumps(message).encode(), method="POST",
        headers={"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message.get("Type", "")},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def rcpt_reply(relay, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        reply = client.rcpt(address)
        client.rset()
        return reply


def send(relay, recipients: list[str]) -> int:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        return client.data(MESSAGE)[0]


@pytest.fixture
def fake_sns() -> FakeSns:
    return FakeSns()


@pytest.fixture
def sns_relay(moto, relay_factory, fake_sns):
    return relay_factory(moto.endpoint_url, relay_kwargs={"sns_http_get": fake_sns.http_get},
                         feedback={"sns": {"enabled": True, "topic_arns": [TOPIC_ARN]}})


def store_count(relay) -> int:
    return relay.call(relay.store.count())


def test_signed_bounce_via_sns_blocks_the_next_rcpt(sns_relay, fake_sns, moto):
    assert send(sns_relay, ["jane@example.org", "bob@example.org"]) == 250
    status, _ = post_sns(sns_relay, fake_sns.notification(bounce_for("jane@example.org")))
    assert status == 200
    code, reply = rcpt_reply(sns_relay, "Jane@Example.org")
    assert code == 550 and reply.startswith(b"5.1.1")
    assert rcpt_reply(sns_relay, "bob@example.org")[0] == 250
    entry = sns_relay.call(sns_relay.store.get("jane@example.org"))
    assert (entry.source, entry.reason.value) == ("sns", "BOUNCE")
    assert sns_relay.metric("ses_relay_feedback_events_total",
                            {"type": "Bounce", "subtype": "Permanent/General", "source": "sns"}) == 1


def test_complaint_via_sns_suppresses_with_5_7_1(sns_relay, fake_sns):
    event = json.loads((FIXTURES / "complaint_notification.json").read_text())
    assert post_sns(sns_relay, fake_sns.notification(event, version="2"))[0] == 200
    code, reply = rcpt_reply(sns_relay, "angry@example.org")
    assert (code, reply.decode()) == (550, replies.SUPPRESSED_COMPLAINT.format(address="angry@example.org")[4:])


def test_forged_altered_foreign_and_replayed_messages_change_nothing(sns_relay, fake_sns):
    bounce = bounce_for("jane@example.org")
    altered = fake_sns.notification(bounce_for("someone-else@example.org"))
    altered["Message"] = json.dumps(bounce)  # signature was for another recipient
    foreign = fake_sns.notification(bounce, topic_arn="arn:aws:sns:us-east-1:999999999999:other")
    old = fake_sns.notification(bounce, timestamp=datetime.datetime.now(datetime.UTC)
                                - datetime.timedelta(days=1))
    unsigned = {k: v for k, v in fake_sns.notification(bounce).items() if k != "Signature"}
    bad_cert = fake_sns.notification(bounce)
    bad_cert["SigningCertURL"] = "https://attacker.example/cert.pem"
    expectations = [(altered, "bad_signature"), (foreign, "unknown_topic"), (old, "stale"),
                    (unsigned, "malformed"), (bad_cert, "cert_url")]
    for message, reason in expectations:
        status, body = post_sns(sns_relay, message)
        assert (status, body.strip()) == (403, reason)
    assert post_sns(sns_relay, {"not": "sns"})[0] == 403
    request_body_not_json = urllib.request.Request(sns_relay.http_url + "/sns", data=b"{{{", method="POST")
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request_body_not_json, timeout=10)
    assert failure.value.code == 400
    failure.value.close()
    assert store_count(sns_relay) == 0
    assert rcpt_reply(sns_relay, "jane@example.org")[0] == 250
    assert sns_relay.metric("ses_relay_sns_messages_rejected_total", {"reason": "unknown_topic"}) == 1
    # Nothing was fetched for the foreign topic or the attacker's certificate URL.
    assert all("attacker" not in url for url in fake_sns.fetched)


def test_duplicate_delivery_is_acknowledged_once(sns_relay, fake_sns):
    message = fake_sns.notification(bounce_for("jane@example.org"))
    assert post_sns(sns_relay, message) == (200, "ok\n")
    assert post_sns(sns_relay, message) == (200, "duplicate\n")
    assert sns_relay.metric("ses_relay_feedback_events_total",
                            {"type": "Bounce", "subtype": "Permanent/General", "source": "sns"}) == 1


def test_subscription_confirmation_fetches_subscribe_url(sns_relay, fake_sns):
    message = fake_sns.subscription_confirmation()
    assert post_sns(sns_relay, message)[0] == 200
    assert message["SubscribeURL"] in fake_sns.fetched
    foreign = fake_sns.subscription_confirmation(topic_arn="arn:aws:sns:us-east-1:999999999999:other")
    fetched_before = list(fake_sns.fetched)
    assert post_sns(sns_relay, foreign)[0] == 403
    assert fake_sns.fetched == fetched_before  # no outbound request for a topic we do not serve


def test_sns_route_is_absent_when_disabled(moto, relay_factory, fake_sns):
    relay = relay_factory(moto.endpoint_url)
    status, _ = post_sns(relay, fake_sns.notification(bounce_for("jane@example.org")))
    assert status in (404, 405)


def sqs_client(moto):
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_bounce_via_sqs_blocks_the_next_rcpt_and_is_deleted(moto, relay_factory, fake_sns):
    sqs = sqs_client(moto)
    queue_url = sqs.create_queue(QueueName="ses-feedback", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    relay = relay_factory(moto.endpoint_url, feedback={"sqs": {"queue_url": queue_url, "endpoint_url": moto.endpoint_url,
                                                               "wait_time": 1}})
    # As SNS delivers to SQS: the SNS envelope around the SES JSON.
    envelope = fake_sns.notification(bounce_for("jane@example.org"))
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(envelope))
    # And a raw-delivery message, plus one that is not SES feedback at all.
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(
        json.loads((FIXTURES / "complaint_notification.json").read_text())))
    sqs.send_message(QueueUrl=queue_url, MessageBody="this is not feedback")
    wait_until(lambda: store_count(relay) == 2, timeout=15.0)
    assert rcpt_reply(relay, "jane@example.org")[0] == 550
    assert rcpt_reply(relay, "angry@example.org")[0] == 550
    # Applied messages are deleted; the unparsable one stays for the dead-letter queue.
    wait_until(lambda: relay.metric("ses_relay_sqs_errors_total", {"kind": "unparsable"}) >= 1, timeout=15.0)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    remaining = int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])
    assert remaining == 1


def test_reputation_guard_pauses_new_mail_after_bounces(moto, relay_factory, fake_sns):
    relay = relay_factory(moto.endpoint_url, relay_kwargs={"sns_http_get": fake_sns.http_get},
                          feedback={"sns": {"enabled": True, "topic_arns": [TOPIC_ARN]}},
                          guard={"enabled": True, "min_sends": 2, "max_bounce_rate": 0.25})
    assert send(relay, ["jane@example.org"]) == 250
    assert send(relay, ["bob@example.org"]) == 250
    assert post_sns(relay, fake_sns.notification(bounce_for("jane@example.org")))[0] == 200
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        code, reply = client.mail("alice@example.com")
    assert code == 451
    assert reply.decode().startswith(replies.GUARD_PAUSED.split("(")[0][4:])
    assert b"bounce rate 50.00%" in reply
    assert relay.metric("ses_relay_guard_refusals_total") == 1
    assert relay.metric("ses_relay_reputation_bounce_rate") == 0.5


def test_all_metrics_with_feedback_and_guard_pass_promtool(moto, relay_factory, fake_sns):
    """Every metric family, including the feedback, guard and sync ones, with samples in it."""
    import subprocess

    from testkit.tools import require_tool

    promtool = require_tool("promtool")
    relay = relay_factory(moto.endpoint_url, relay_kwargs={"sns_http_get": fake_sns.http_get},
                          feedback={"sns": {"enabled": True, "topic_arns": [TOPIC_ARN]}},
                          guard={"enabled": True, "min_sends": 1})
    assert send(relay, ["bob@example.org"]) == 250
    assert post_sns(relay, fake_sns.notification(bounce_for("jane@example.org")))[0] == 200
    assert post_sns(relay, {"Type": "Notification"})[0] == 403
    with urllib.request.urlopen(relay.http_url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    for family in ("ses_relay_feedback_events_total", "ses_relay_sns_messages_rejected_total",
                   "ses_relay_reputation_bounce_rate", "ses_relay_guard_paused", "ses_relay_suppression_entries",
                   "ses_relay_ses_request_duration_seconds_bucket"):
        assert family in exposition
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# --- two copies of one SNS message at once ---------------------------------------------------------


class CountingVerifier:
    """The real SnsVerifier; `both_verified` is set once two copies have passed it. The handler goes on
    without yielding from there to its dedupe decision, so when the test wakes up both have decided."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.verified = 0
        self.both_verified = None

    async def verify(self, message):
        result = await self.inner.verify(message)
        self.verified += 1
        if self.verified == 2:
            self.both_verified.set()
        return result


class SlowStore:
    """A real MemoryStore whose writes wait for `release` (so two requests overlap) and are counted."""

    def __init__(self) -> None:
        from relay.suppression.memory import MemoryStore

        self.inner = MemoryStore()
        self.release = None  # asyncio.Events, made on the test's loop
        self.writing = None
        self.writes_started = 0
        self.fail_next = False

    async def put_many(self, entries):
        from relay.suppression.base import StoreError

        self.writes_started += 1
        self.writing.set()
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreError("store unavailable (test)")
        return await self.inner.put_many(entries)


async def post_twice_at_once(fake_sns, message: dict, *, fail_first: bool = False):
    """POST the same signed message twice, concurrently, to a real aiohttp app on 127.0.0.1."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from relay.feedback.processor import FeedbackProcessor
    from relay.feedback.sns import SnsVerifier
    from relay.feedback.webhook import sns_handler
    from relay.metrics import RelayMetrics

    store, metrics = SlowStore(), RelayMetrics()
    store.release, store.writing = asyncio.Event(), asyncio.Event()
    store.fail_next = fail_first
    await store.inner.open()
    verifier = CountingVerifier(SnsVerifier([TOPIC_ARN], fetch_certificate=fake_sns.http_get))
    verifier.both_verified = asyncio.Event()
    app = web.Application()
    app.router.add_post("/sns", sns_handler(verifier, FeedbackProcessor(store, metrics), metrics,
                                            http_get=fake_sns.http_get))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/sns"
    body = json.dumps(message).encode()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async def post() -> tuple[int, str]:
                async with session.post(url, data=body, headers={"x-amz-sns-message-type": "Notification"}) as r:
                    return r.status, (await r.text()).strip()

            first = asyncio.create_task(post())
            await store.writing.wait()  # the first copy is inside the store write
            second = asyncio.create_task(post())
            await verifier.both_verified.wait()  # the second copy is past its dedupe check too
            store.release.set()
            answers = sorted(await asyncio.gather(first, second))
            retry = await post()  # SNS's later retry of the same message
    finally:
        await runner.cleanup()
    bounces = metrics.registry.get_sample_value(
        "ses_relay_feedback_events_total", {"type": "Bounce", "subtype": "Permanent/General", "source": "sns"}
    )
    return answers, retry, store.writes_started, bounces, await store.inner.count()


def test_two_concurrent_copies_of_one_sns_message_are_applied_once(fake_sns):
    import asyncio

    message = fake_sns.notification(bounce_for("twice@example.org"))
    answers, retry, writes, bounces, entries = asyncio.run(post_twice_at_once(fake_sns, message))
    assert answers == [(200, "duplicate"), (200, "ok")]
    assert retry == (200, "duplicate")
    assert (writes, bounces, entries) == (1, 1.0, 1)


def test_when_the_first_copy_fails_the_concurrent_one_is_not_acknowledged_and_the_retry_applies(fake_sns):
    import asyncio

    message = fake_sns.notification(bounce_for("retry@example.org"))
    answers, retry, writes, bounces, entries = asyncio.run(post_twice_at_once(fake_sns, message, fail_first=True))
    assert answers == [(503, "retry"), (503, "store unavailable")]  # SNS keeps trying
    assert retry == (200, "ok")  # the id was released: the retry is applied
    assert (writes, entries) == (2, 1)
