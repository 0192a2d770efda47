"""Long-poll an SQS queue subscribed to the SES feedback topic.

A message is deleted only after its event is applied to the store: a crash or a store failure leaves
it in the queue, and SQS delivers it again after the visibility timeout. Bodies may be SNS-wrapped
(the usual SNS -> SQS subscription) or raw (raw message delivery). The queue's access policy is the
trust boundary here, so SNS signatures are not checked on this path.

boto3 does the SQS calls in one dedicated daemon thread: a long poll blocks for up to `wait_time`
seconds and cannot be interrupted, so stop() does not wait for it (see SqsPoller.stop).

One message never stops the poller: whatever goes wrong while handling it (not SES feedback, a store
failure, even a bug) is logged on one line and counted in ses_relay_sqs_errors_total, the message is left
in the queue (redelivered, then dead-lettered by the queue's redrive policy), and polling goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import boto3

from relay.aws import DEFAULT_REGION
from relay.backoff import Backoff
from relay.feedback.events import FeedbackEvent, FeedbackFormatError, describe_error, parse_ses_notification
from relay.feedback.processor import FeedbackProcessor, RecentIds
from relay.metrics import RelayMetrics
from relay.suppression.base import StoreError

log = logging.getLogger("relay.feedback.sqs")
ERROR_BACKOFF_SECONDS = 5.0  # after a failed receive; doubled on each failure in a row, up to:
MAX_BACKOFF_SECONDS = 60.0  # a queue that stays broken is retried (and logged) once a minute
RECEIVE_JITTER = 0.2  # a retry waits 80-100 % of its delay: relays on one queue do not retry in step
BODY_PREFIX_CHARS = 60  # of a message body that could not be handled, in its log line
STOP_GRACE_SECONDS = 1.0  # how long stop() lets a call in flight (a delete) finish

T = TypeVar("T")


def parse_sqs_body(body: str) -> FeedbackEvent:
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise FeedbackFormatError(f"not JSON: {exc}") from None
    except RecursionError:
        raise FeedbackFormatError("not JSON we accept: nested too deeply") from None
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        data = data["Message"]  # SNS envelope around the SES JSON
    return parse_ses_notification(data)


class _DaemonWorker:
    """One daemon thread running calls in order. Unlike a ThreadPoolExecutor's worker, which the
    interpreter joins at exit, a daemon thread blocked in a 20 s long poll does not keep the process
    alive after the relay has stopped."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the SQS worker is stopped")
        if not self._thread.is_alive():
            self._thread.start()
        future: Future[T] = Future()
        self._calls.put((future, fn))
        return asyncio.wrap_future(future)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn = call
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: never started
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                future.set_exception(exc)

    def close(self, timeout: float) -> bool:
        """Run nothing more; wait up to `timeout` for the call in flight. True if the thread ended."""
        self._closed = True
        self._calls.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()


class SqsPoller:
    def __init__(
        self,
        queue_url: str,
        processor: FeedbackProcessor,
        metrics: RelayMetrics,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        wait_time: int = 20,
    ) -> None:
        self.queue_url = queue_url
        self._processor = processor
        self._metrics = metrics
        self._region = region
        self._endpoint_url = endpoint_url
        self._wait_time = wait_time
        self._worker = _DaemonWorker("sqs-poller")
        self._client: Any = None
        self._task: asyncio.Task | None = None
        self._applied = RecentIds()  # MessageIds applied, in case their delete failed
        self.polls = 0  # completed receive calls, for tests and /readyz-style checks

    async def start(self) -> None:
        self._client = await self._worker.submit(self._make_client)
        self._task = asyncio.create_task(self._run(), name="sqs-poller")
        self._task.add_done_callback(self._stopped)
        log.info("polling %s for SES feedback", self.queue_url)

    def _stopped(self, task: asyncio.Task) -> None:
        # _run handles every failure it knows of; should it end anyway, say so at once, not at shutdown.
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.critical(
                "SQS polling of %s stopped on an error: %s; SES feedback is no longer read",
                self.queue_url,
                describe_error(error),
            )

    def _make_client(self) -> Any:
        session = boto3.Session(region_name=self._region)
        region = self._region or session.region_name or _region_from_url(self.queue_url) or DEFAULT_REGION
        return session.client("sqs", region_name=region, endpoint_url=self._endpoint_url)

    async def stop(self) -> None:
        """Returns within about STOP_GRACE_SECONDS whatever the poll is doing.

        A long poll in flight is abandoned, not awaited (it cannot be interrupted): the poll task is
        cancelled, so messages it receives after this are neither applied nor deleted. Nothing is
        lost: SQS delivers them again once their visibility timeout expires. The daemon thread then
        ends with the process.
        """
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - already logged by _stopped; shut down all the same
                pass
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        # Bounded: lets a delete in flight finish, gives up on a long poll (whose thread keeps the client).
        if self._worker.close(STOP_GRACE_SECONDS) and self._client is not None:
            self._client.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                messages = await self._worker.submit(self._receive)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network/credentials trouble: log, back off, retry
                self._metrics.sqs_errors.labels("receive").inc()
                delay = receive_backoff(failures)
                failures += 1
                log.error(
                    "SQS receive failed (%d in a row; next try in %.0f s): %s: %s",
                    failures,
                    delay,
                    exc.__class__.__name__,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.polls += 1
            for message in messages:
                await self._handle(message)

    def _receive(self) -> list[dict[str, Any]]:
        response = self._client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self._wait_time
        )
        return response.get("Messages", [])

    async def _handle(self, message: dict[str, Any]) -> None:
        """Apply one message's event, then delete the message. On any failure the message stays in the
        queue. A message whose event was applied but whose delete failed comes back: it is then only
        deleted (as SNS redeliveries are deduplicated by MessageId on /sns)."""
        message_id = message.get("MessageId")
        body = message.get("Body", "")
        try:
            event = parse_sqs_body(body)
        except FeedbackFormatError as exc:
            # Left in the queue: a redrive policy moves it to a dead-letter queue; nothing is lost silently.
            self._metrics.sqs_errors.labels("unparsable").inc()
            log.warning("SQS message %s is not SES feedback (%s); left in the queue", message_id, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the poller
            self._metrics.sqs_errors.labels("unparsable").inc()
            log.error(
                "SQS message %s could not be parsed (%s); left in the queue; body starts %s",
                message_id,
                describe_error(exc),
                _prefix(body),
            )
            return
        if message_id and message_id in self._applied:
            # Applied before and then its delete failed: delete it now, but count it once (the
            # feedback metrics and the reputation guard would otherwise see the bounce twice).
            await self._delete(message)
            return
        try:
            await self._processor.apply(event, source="sqs")
        except StoreError as exc:
            self._metrics.sqs_errors.labels("store").inc()
            log.error("could not record SES feedback from SQS (will be redelivered): %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - nor may a bug met while applying the event
            self._metrics.sqs_errors.labels("internal").inc()
            log.error(
                "could not apply SES feedback from SQS message %s (%s); left in the queue",
                message_id,
                describe_error(exc),
            )
            return
        if message_id:
            self._applied.add(message_id)
        await self._delete(message)

    async def _delete(self, message: dict[str, Any]) -> None:
        try:
            await self._worker.submit(
                lambda: self._client.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            )
        except Exception as exc:  # noqa: BLE001 - the message comes back; it is not applied twice
            self._metrics.sqs_errors.labels("delete").inc()
            log.warning("SQS delete failed (the message will come back and be deleted then): %s", exc)


def receive_backoff(failures: int) -> float:
    """Seconds to wait after a failed receive that followed `failures` failed ones."""
    # Built per call from the module's numbers, so tests can shorten them.
    policy = Backoff(ERROR_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, jitter=RECEIVE_JITTER)
    return policy.delay(failures + 1)


def _prefix(body: Any) -> str:
    """The start of a message body for a log line: short, with newlines and other controls escaped."""
    text = body if isinstance(body, str) else repr(body)
    shown = repr(text[:BODY_PREFIX_CHARS])
    return shown + ("..." if len(text) > BODY_PREFIX_CHARS else "")


def _region_from_url(queue_url: str) -> str | None:
    # https://sqs.eu-west-1.amazonaws.com/123456789012/name
    host = queue_url.split("/")[2] if queue_url.count("/") >= 2 else ""
    parts = host.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "sqs" else None
