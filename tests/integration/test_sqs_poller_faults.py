"""The SQS feedback poller under faults: a failing ReceiveMessage is counted and retried after a back-off,
never in a tight loop, and polling recovers on its own; a failing DeleteMessage after the event is stored
loses nothing: the message comes back after its visibility timeout and is deleted then, without being counted again.
A message the poller cannot handle (wrongly typed SES JSON, or a bug met while handling it) is counted,
logged on one line and left for the dead-letter queue, and the poller goes on with the next one.

Faults are real: moto's own QueueDoesNotExist error, or answers injected by a small HTTP proxy on 127.0.0.1
that sits between the relay's boto3 SQS client and moto's server, forwards everything else untouched and
counts every SQS operation it sees.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import smtplib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import boto3
import pytest

import relay.feedback.sqs as sqs_module
from relay.feedback.processor import FeedbackProcessor
from testkit.waiting import wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ses"
RECEIVE_ERRORS = ("ses_relay_sqs_errors_total", {"kind": "receive"})
DELETE_ERRORS = ("ses_relay_sqs_errors_total", {"kind": "delete"})
UNPARSABLE = ("ses_relay_sqs_errors_total", {"kind": "unparsable"})
STORE_ERRORS = ("ses_relay_sqs_errors_total", {"kind": "store"})
INTERNAL_ERRORS = ("ses_relay_sqs_errors_total", {"kind": "internal"})
SQS_BOUNCES = (
    "ses_relay_feedback_events_total",
    {"type": "Bounce", "subtype": "Permanent/General", "source": "sqs"},
)
# With the back-off shortened to this, a poller that backs off makes a handful of receive calls in
# SPIN_WINDOW seconds; one that retries at once makes hundreds against a server on 127.0.0.1.
TEST_BACKOFF_SECONDS = 0.2
SPIN_WINDOW = 1.5
MAX_RECEIVES_IN_WINDOW = 20
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "upgrade",
}


class SqsFaultProxy:
    """Forwards SQS requests to moto; answers chosen operations with an AWS-style error instead.

    The operation comes from ``X-Amz-Target: AmazonSQS.<Operation>`` (JSON protocol, botocore's current
    one) or the ``Action=<Operation>`` form field (query protocol); the error answer uses the same protocol.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, str, str]] = {}
        self._seen: Counter[tuple[str, str]] = Counter()  # (operation, "forwarded" | "failed") -> n
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names it so
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sqs-fault-proxy", daemon=True
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, operation: str, status: int, code: str, message: str) -> None:
        with self._lock:
            self._faults[operation] = (status, code, message)

    def heal(self, operation: str) -> None:
        with self._lock:
            self._faults.pop(operation, None)

    def count(self, operation: str, outcome: str | None = None) -> int:
        with self._lock:
            return sum(n for (op, out), n in self._seen.items() if op == operation and outcome in (None, out))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        target = handler.headers.get("X-Amz-Target")
        if target:
            operation = target.rpartition(".")[2]
        else:
            operation = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        with self._lock:
            fault = self._faults.get(operation)
            self._seen[(operation, "failed" if fault else "forwarded")] += 1
        if fault is not None:
            status, code, message = fault
            if target:
                payload = json.dumps(
                    {"__type": f"com.amazon.coral.service#{code}", "message": message}
                ).encode()
                content_type = "application/x-amz-json-1.0"
            else:
                payload = (
                    f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
                    f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
                ).encode()
                content_type = "text/xml"
            self._reply(handler, status, [("Content-Type", content_type)], payload)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        with contextlib.closing(upstream):
            upstream.request("POST", handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            forwarded = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            self._reply(handler, response.status, forwarded, payload)

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], payload: bytes
    ) -> None:
        handler.send_response(status)
        for key, value in headers:
            if key.lower() not in ("server", "date"):
                handler.send_header(key, value)
        handler.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(payload)

    def __enter__(self) -> SqsFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def sqs_proxy(moto) -> Iterator[SqsFaultProxy]:
    # Requested before relay_factory in each test, so the relay stops before the proxy does.
    with SqsFaultProxy(moto.port) as proxy:
        yield proxy


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the receive back-off so recovery is quick; the poller reads the constant on each failure."""
    monkeypatch.setattr(sqs_module, "ERROR_BACKOFF_SECONDS", TEST_BACKOFF_SECONDS)
    monkeypatch.setattr(sqs_module, "MAX_BACKOFF_SECONDS", 2 * TEST_BACKOFF_SECONDS)


def test_receive_backoff_doubles_up_to_the_cap_with_jitter():
    base, cap = sqs_module.ERROR_BACKOFF_SECONDS, sqs_module.MAX_BACKOFF_SECONDS
    for failures in range(40):
        expected = min(base * 2**failures, cap)
        delays = [sqs_module.receive_backoff(failures) for _ in range(50)]
        assert all(0.8 * expected <= d <= expected for d in delays), (failures, delays)
    assert sqs_module.receive_backoff(0) <= base < cap <= 60


def sqs_client(moto):
    """A client for the test's own calls: straight to moto, not through the proxy."""
    return boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=moto.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def bounce_envelope(address: str) -> str:
    """A permanent bounce as SNS delivers it to SQS (the SNS envelope around the SES JSON)."""
    event = json.loads((FIXTURES / "bounce_permanent_notification.json").read_text())
    event["bounce"]["bouncedRecipients"] = [
        {"emailAddress": address, "action": "failed", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1"}
    ]
    return json.dumps({"Type": "Notification", "MessageId": str(uuid.uuid4()), "Message": json.dumps(event)})


def metric(relay, sample: tuple[str, dict[str, str]]) -> float:
    return relay.metric(*sample)


def poller_alive(relay) -> bool:
    async def alive() -> bool:
        poller = relay.relay._sqs
        return poller is not None and poller._task is not None and not poller._task.done()

    return relay.call(alive())


def messages_in_queue(sqs, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def rcpt_code(relay, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        code = client.rcpt(address)[0]
        client.rset()
        return code


def start_poller_relay(relay_factory, moto, proxy: SqsFaultProxy, queue_url: str):
    return relay_factory(
        moto.endpoint_url,
        feedback={"sqs": {"queue_url": queue_url, "endpoint_url": proxy.endpoint_url, "wait_time": 1}},
    )


def assert_backs_off_then_recovers(relay, sqs, proxy: SqsFaultProxy, recover: Callable[[], str]) -> None:
    """Shared by the receive-fault tests; ``recover`` lifts the fault and returns the working queue URL."""
    # Failing receives are counted, and the poller keeps trying (the count keeps growing).
    wait_until(lambda: metric(relay, RECEIVE_ERRORS) >= 3)
    assert relay.relay._sqs.polls == 0
    assert poller_alive(relay)
    # ... but not in a tight loop: only a handful of attempts reach the server in a fixed window.
    before = proxy.count("ReceiveMessage")
    time.sleep(SPIN_WINDOW)
    attempts = proxy.count("ReceiveMessage") - before
    assert attempts <= MAX_RECEIVES_IN_WINDOW, (
        f"{attempts} receive attempts in {SPIN_WINDOW}s: not backing off"
    )
    counted = metric(relay, RECEIVE_ERRORS)  # read first: every counted error was a request the server saw
    assert proxy.count("ReceiveMessage") >= counted

    queue_url = recover()
    sqs.send_message(QueueUrl=queue_url, MessageBody=bounce_envelope("jane@example.org"))
    wait_until(lambda: relay.call(relay.store.get("jane@example.org")) is not None)
    entry = relay.call(relay.store.get("jane@example.org"))
    assert (entry.reason.value, entry.source) == ("BOUNCE", "sqs")
    assert rcpt_code(relay, "jane@example.org") == 550
    # Really recovered: receives succeed again, the message is deleted, no new receive errors.
    errors_after_recovery = metric(relay, RECEIVE_ERRORS)
    polls = relay.relay._sqs.polls
    wait_until(lambda: relay.relay._sqs.polls >= polls + 2)
    wait_until(lambda: messages_in_queue(sqs, queue_url) == 0)
    assert metric(relay, RECEIVE_ERRORS) == errors_after_recovery
    assert metric(relay, DELETE_ERRORS) == 0
    assert poller_alive(relay)


def test_receive_from_a_missing_queue_backs_off_and_recovers_once_it_exists(
    moto, sqs_proxy, fast_backoff, relay_factory
):
    sqs = sqs_client(moto)
    # Not created yet: moto answers ReceiveMessage with its real QueueDoesNotExist error.
    queue_url = f"{moto.endpoint_url}/123456789012/ses-feedback-late"
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)

    def create_queue() -> str:
        created = sqs.create_queue(QueueName="ses-feedback-late", Attributes={"VisibilityTimeout": "1"})
        assert created["QueueUrl"] == queue_url  # the URL the relay was configured with now resolves
        return queue_url

    assert_backs_off_then_recovers(relay, sqs, sqs_proxy, create_queue)
    assert sqs_proxy.count("ReceiveMessage", "failed") == 0  # every failure above was moto's own answer


def test_receive_answered_500_backs_off_and_recovers(
    moto, sqs_proxy, fast_backoff, relay_factory, monkeypatch
):
    # One HTTP attempt per receive call, so each injected 500 is one poller-level failure (botocore would
    # otherwise retry a 500 up to four times, with its own sleeps, inside a single receive call).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    sqs = sqs_client(moto)
    queue_url = sqs.create_queue(QueueName="ses-feedback", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs_proxy.fail("ReceiveMessage", 500, "InternalFailure", "We encountered an internal error.")
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)

    def heal() -> str:
        sqs_proxy.heal("ReceiveMessage")
        return queue_url

    assert_backs_off_then_recovers(relay, sqs, sqs_proxy, heal)
    assert sqs_proxy.count("ReceiveMessage", "failed") >= 3


def test_failed_delete_keeps_the_event_and_the_redelivery_is_not_counted_again(moto, sqs_proxy, relay_factory):
    sqs = sqs_client(moto)
    queue_url = sqs.create_queue(QueueName="ses-feedback", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    # As an IAM policy without sqs:DeleteMessage answers (not retried by botocore).
    sqs_proxy.fail("DeleteMessage", 403, "AccessDenied", "Access to the resource is denied.")
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)
    sqs.send_message(QueueUrl=queue_url, MessageBody=bounce_envelope("jane@example.org"))

    # The delete failed after the store write: the event is stored, the failure counted.
    wait_until(lambda: metric(relay, DELETE_ERRORS) >= 1)
    entry = relay.call(relay.store.get("jane@example.org"))
    assert entry is not None and (entry.reason.value, entry.source) == ("BOUNCE", "sqs")
    assert rcpt_code(relay, "jane@example.org") == 550
    assert sqs_proxy.count("DeleteMessage", "failed") >= 1
    # Not lost: still in the queue (in flight or visible again), and redelivered after the visibility
    # timeout; the delete is tried again, but the event is not counted again (the guard would see
    # the bounce twice).
    assert messages_in_queue(sqs, queue_url) == 1
    wait_until(lambda: metric(relay, DELETE_ERRORS) >= 3)
    assert metric(relay, SQS_BOUNCES) == 1
    # The store still holds the one entry, unchanged.
    assert relay.call(relay.store.count()) == 1
    again = relay.call(relay.store.get("jane@example.org"))
    assert (again.address, again.reason, again.source, again.feedback_id) == (
        entry.address,
        entry.reason,
        entry.source,
        entry.feedback_id,
    )
    assert poller_alive(relay)

    # Once deletes work again, the next redelivery is deleted for good.
    sqs_proxy.heal("DeleteMessage")
    wait_until(lambda: messages_in_queue(sqs, queue_url) == 0)
    assert sqs_proxy.count("DeleteMessage", "forwarded") >= 1
    assert relay.call(relay.store.count()) == 1
    assert metric(relay, SQS_BOUNCES) == 1
    assert metric(relay, RECEIVE_ERRORS) == 0
    assert poller_alive(relay)


def queue_with_dead_letters(sqs, name: str, max_receive_count: int) -> tuple[str, str]:
    """A feedback queue whose redrive policy moves a message to a dead-letter queue after
    ``max_receive_count`` receives; returns (queue URL, dead-letter queue URL)."""
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    queue_url = sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "1", "RedrivePolicy": policy}
    )["QueueUrl"]
    return queue_url, dlq_url


def dead_letters(sqs, dlq_url: str) -> list[str]:
    """Bodies in the dead-letter queue (peeked: they stay visible again a moment later)."""
    response = sqs.receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0
    )
    return sorted(m["Body"] for m in response.get("Messages", []))


def relay_stops_cleanly(relay) -> bool:
    """The relay thread ends and the poller's stop() returned (app.stop clears _sqs only after it)."""
    relay.stop()
    return not relay.thread.is_alive() and relay.relay._sqs is None


def test_wrongly_typed_notifications_are_counted_and_left_and_the_next_bounce_is_applied(
    moto, sqs_proxy, relay_factory
):
    sqs = sqs_client(moto)
    queue_url, dlq_url = queue_with_dead_letters(sqs, "ses-feedback", max_receive_count=1)
    bounce = json.loads((FIXTURES / "bounce_permanent_notification.json").read_text())
    bounce["bounce"]["bouncedRecipients"] = 5  # well-formed JSON, a number where SES sends a list
    delivery = json.loads((FIXTURES / "delivery_notification.json").read_text())
    delivery["delivery"]["recipients"] = 7
    mistyped = [
        json.dumps({"Type": "Notification", "MessageId": str(uuid.uuid4()), "Message": json.dumps(bounce)}),
        json.dumps(delivery),  # raw message delivery
    ]
    for body in mistyped:  # in the queue before the good bounce, and received in the same batch
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    sqs.send_message(QueueUrl=queue_url, MessageBody=bounce_envelope("jane@example.org"))
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)

    # The good bounce behind them is applied, and the poller is still polling afterwards.
    wait_until(lambda: relay.call(relay.store.get("jane@example.org")) is not None)
    assert rcpt_code(relay, "jane@example.org") == 550
    wait_until(lambda: metric(relay, UNPARSABLE) >= 2)
    polls = relay.relay._sqs.polls
    wait_until(lambda: relay.relay._sqs.polls >= polls + 2)
    assert poller_alive(relay)
    # Never deleted: the one DeleteMessage was the good bounce's, and both went to the dead-letter queue
    # (moto moves them there on the first receive after their visibility timeout).
    wait_until(lambda: dead_letters(sqs, dlq_url) == sorted(mistyped))
    assert sqs_proxy.count("DeleteMessage") == 1
    wait_until(lambda: messages_in_queue(sqs, queue_url) == 0)
    # Each was received once and counted once, as not SES feedback; nothing else went wrong.
    assert metric(relay, UNPARSABLE) == 2
    assert [metric(relay, m) for m in (RECEIVE_ERRORS, STORE_ERRORS, DELETE_ERRORS, INTERNAL_ERRORS)] == [0] * 4
    assert metric(relay, SQS_BOUNCES) == 1
    assert relay_stops_cleanly(relay)


def test_a_bug_met_while_handling_one_message_is_logged_counted_and_survived(
    moto, sqs_proxy, relay_factory, monkeypatch, caplog
):
    """Defence in depth: an exception nobody planned for, raised while parsing one message or applying its
    event, is logged on one line (no body beyond a short prefix), counted, the message left in the queue,
    and the poller goes on with the next."""
    caplog.set_level(logging.WARNING, logger="relay.feedback.sqs")
    real_parse, real_apply = sqs_module.parse_sqs_body, FeedbackProcessor.apply
    applied: list[tuple[str, ...]] = []

    def buggy_parse(body: str):
        if "parser-bug@" in body:
            raise KeyError("a parser bug")
        return real_parse(body)

    async def flaky_apply(self, event, *, source):
        applied.append(event.recipients)
        if event.recipients == ("apply-bug@example.org",) and applied.count(event.recipients) == 1:
            raise RuntimeError("an applying bug\nwith a second line")
        return await real_apply(self, event, source=source)

    monkeypatch.setattr(sqs_module, "parse_sqs_body", buggy_parse)
    monkeypatch.setattr(FeedbackProcessor, "apply", flaky_apply)
    sqs = sqs_client(moto)
    # Two receives before the dead-letter queue: the applying bug strikes once, the redelivery succeeds.
    queue_url, dlq_url = queue_with_dead_letters(sqs, "ses-feedback", max_receive_count=2)
    parser_bug = bounce_envelope("parser-bug@example.org")
    for body in (parser_bug, bounce_envelope("apply-bug@example.org"), bounce_envelope("jane@example.org")):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)

    wait_until(lambda: relay.call(relay.store.get("jane@example.org")) is not None)
    # The redelivery of the message whose first attempt hit the bug is applied and then deleted.
    wait_until(lambda: relay.call(relay.store.get("apply-bug@example.org")) is not None)
    wait_until(lambda: dead_letters(sqs, dlq_url) == [parser_bug])
    wait_until(lambda: messages_in_queue(sqs, queue_url) == 0)
    assert relay.call(relay.store.get("parser-bug@example.org")) is None
    assert poller_alive(relay)
    assert metric(relay, UNPARSABLE) == 2  # received twice before the redrive, counted each time
    assert metric(relay, INTERNAL_ERRORS) == 1
    assert [metric(relay, m) for m in (RECEIVE_ERRORS, STORE_ERRORS, DELETE_ERRORS)] == [0] * 3
    assert sqs_proxy.count("DeleteMessage") == 2  # jane's and apply-bug's redelivery; never the parser bug's

    errors = [r for r in caplog.records if r.name == "relay.feedback.sqs" and r.levelno >= logging.ERROR]
    texts = [r.getMessage() for r in errors]
    assert sum("KeyError" in t for t in texts) == 2 and sum("RuntimeError" in t for t in texts) == 1, texts
    for record, text in zip(errors, texts, strict=True):
        assert "\n" not in text and record.exc_info is None and len(text) < 400, text
        assert "diagnosticCode" not in text  # a short prefix of the body at most, never all of it
    assert relay_stops_cleanly(relay)


def test_if_polling_ever_ends_on_an_error_it_is_logged_at_once_and_shutdown_is_clean(
    moto, sqs_proxy, relay_factory, monkeypatch, caplog
):
    """Beyond the per-message guard (a bug in the loop itself, simulated here): the poller's end is logged
    when it happens, and stopping the relay afterwards does not raise it again."""
    caplog.set_level(logging.WARNING, logger="relay.feedback.sqs")

    async def broken_handle(self, message):
        raise RuntimeError("a bug outside the per-message guard")

    monkeypatch.setattr(sqs_module.SqsPoller, "_handle", broken_handle)
    sqs = sqs_client(moto)
    queue_url = sqs.create_queue(QueueName="ses-feedback", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=bounce_envelope("jane@example.org"))
    relay = start_poller_relay(relay_factory, moto, sqs_proxy, queue_url)

    def ended_and_logged() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "relay.feedback.sqs" and r.levelno == logging.CRITICAL]

    wait_until(lambda: not poller_alive(relay) and ended_and_logged())
    (text,) = ended_and_logged()
    assert "RuntimeError: a bug outside the per-message guard" in text and queue_url in text
    assert relay_stops_cleanly(relay)


# --- shutdown: the 20 s long poll does not hold the process ------------------------------------------

LONG_POLL = 20  # seconds, SQS's maximum and the relay's default wait_time
STOP_BOUND = 10.0  # generous, and well inside LONG_POLL: a stop that waited for the poll cannot meet it

_POLLER_PROCESS = """
import asyncio, sys
from relay.feedback.processor import FeedbackProcessor
from relay.feedback.sqs import SqsPoller
from relay.metrics import RelayMetrics
from relay.suppression.memory import MemoryStore

async def main(queue_url, endpoint_url):
    store = MemoryStore()
    await store.open()
    metrics = RelayMetrics()
    poller = SqsPoller(queue_url, FeedbackProcessor(store, metrics), metrics,
                       region="us-east-1", endpoint_url=endpoint_url, wait_time=int(sys.argv[3]))
    await poller.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop"
    await poller.stop()
    print("stopped", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_the_process_exits_while_a_long_poll_is_in_flight(moto, sqs_proxy):
    """Before: stop() returned, but the pool thread in its 20 s ReceiveMessage kept the process alive."""
    import os
    import subprocess
    import sys

    queue_url = sqs_client(moto).create_queue(QueueName=f"idle-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    process = subprocess.Popen(
        [sys.executable, "-c", _POLLER_PROCESS, queue_url, sqs_proxy.endpoint_url, str(LONG_POLL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    try:
        # the long poll against the empty queue has reached moto (which holds it for LONG_POLL s)
        wait_until(lambda: sqs_proxy.count("ReceiveMessage") >= 1, timeout=STOP_BOUND)
        process.stdin.write("stop\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=STOP_BOUND)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (process.returncode, out.strip()) == (0, "stopped"), err
    assert sqs_proxy.count("ReceiveMessage") == 1  # the exit did not wait for the poll to end


def test_a_message_the_abandoned_poll_receives_after_stop_is_neither_applied_nor_deleted(moto, sqs_proxy):
    import asyncio

    from relay.metrics import RelayMetrics
    from relay.suppression.memory import MemoryStore

    sqs = sqs_client(moto)
    queue_url = sqs.create_queue(QueueName=f"late-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    store, metrics = MemoryStore(), RelayMetrics()
    poller = sqs_module.SqsPoller(
        queue_url,
        FeedbackProcessor(store, metrics),
        metrics,
        region="us-east-1",
        endpoint_url=sqs_proxy.endpoint_url,
        wait_time=LONG_POLL,
    )
    stopped = threading.Event()

    async def run() -> None:
        await store.open()
        await poller.start()
        await asyncio.get_running_loop().run_in_executor(
            None, wait_until, lambda: sqs_proxy.count("ReceiveMessage") >= 1, STOP_BOUND
        )
        await poller.stop()
        stopped.set()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    thread.join(STOP_BOUND)
    assert stopped.is_set() and not thread.is_alive()  # stop() returned long before the poll could end
    # The poll still waiting in moto now takes this message, into a thread nobody listens to any more.
    sqs.send_message(QueueUrl=queue_url, MessageBody=bounce_envelope("late@example.com"))
    # Once that poll has returned the poller's thread ends (a delete would have come before).
    wait_until(lambda: not any(t.name.startswith("sqs-poller") for t in threading.enumerate()), STOP_BOUND)
    assert messages_in_queue(sqs, queue_url) == 1  # received (invisible for a while), not deleted
    assert sqs_proxy.count("DeleteMessage") == 0
    assert metrics.registry.get_sample_value(*SQS_BOUNCES) in (None, 0.0)
    assert asyncio.run(store.get("late@example.com")) is None
