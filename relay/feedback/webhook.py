"""POST /sns: SNS HTTP subscription endpoint for SES feedback.

Answers fast (SNS retries an HTTP endpoint only a few times): verify, apply, 200. A store failure
answers 503 so SNS retries later; a forged or foreign message answers 403 and changes nothing. An
authentic message that is not SES feedback we understand (including wrongly typed SES JSON) is counted
as not_ses_feedback and acknowledged with 200 "ignored": sending it again could not help. No message,
however malformed, is answered with an unhandled exception (a 500 and a traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.feedback.events import FeedbackFormatError, describe_error, parse_ses_notification
from relay.feedback.processor import FeedbackProcessor, RecentIds
from relay.feedback.sns import HttpGet, SnsVerificationError, SnsVerifier, https_get
from relay.metrics import RelayMetrics
from relay.suppression.base import StoreError

log = logging.getLogger("relay.feedback.sns")

MAX_BODY = 256 * 1024 + 16 * 1024  # SNS messages are at most 256 KiB, plus the envelope


def sns_handler(
    verifier: SnsVerifier,
    processor: FeedbackProcessor,
    metrics: RelayMetrics,
    *,
    http_get: HttpGet = https_get,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    recent = RecentIds()
    in_flight: dict[str, asyncio.Future[bool]] = {}  # MessageId being applied -> applied for good?

    def refuse(status: int, reason: str, text: str) -> web.Response:
        metrics.sns_rejected.labels(reason).inc()
        log.warning("SNS message refused (%s): %s", reason, text)
        return web.Response(status=status, text=f"{reason}\n")

    async def handle(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return refuse(413, "too_large", f"{request.content_length} bytes")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return refuse(413, "too_large", "body over the SNS size limit")
        try:
            message = json.loads(body)
        except ValueError:
            return refuse(400, "malformed", "body is not JSON")
        except RecursionError:
            return refuse(400, "malformed", "body is JSON nested too deeply")
        header_type = request.headers.get("x-amz-sns-message-type")
        if isinstance(message, dict) and header_type and header_type != message.get("Type"):
            return refuse(400, "malformed", "x-amz-sns-message-type does not match Type")
        try:
            await verifier.verify(message)
        except SnsVerificationError as exc:
            return refuse(403, exc.reason, str(exc))

        message_id = message["MessageId"]
        # Claimed before the first await, so a copy arriving while this one is applied is not applied
        # again; given back unless the answer is final, so that SNS's retry is applied.
        if not recent.claim(message_id):
            first = in_flight.get(message_id)
            if first is not None and not await asyncio.shield(first):
                # The copy being applied failed: this one must not be acknowledged, or SNS stops trying.
                return web.Response(status=503, text="retry\n")
            return web.Response(text="duplicate\n")
        outcome = in_flight[message_id] = asyncio.get_running_loop().create_future()
        done = False
        try:
            response = await handle_verified(message)
            done = response.status < 500
            return response
        finally:
            del in_flight[message_id]
            outcome.set_result(done)
            if not done:
                recent.release(message_id)

    async def handle_verified(message: dict) -> web.Response:
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            try:
                await http_get(message["SubscribeURL"])
            except Exception as exc:  # noqa: BLE001 - any failure: let SNS send the confirmation again
                log.error("could not confirm the SNS subscription to %s: %s", message["TopicArn"], exc)
                return web.Response(status=502, text="confirmation failed\n")
            log.info("confirmed SNS subscription to %s", message["TopicArn"])
        elif kind == "UnsubscribeConfirmation":
            log.warning("SNS says the relay was unsubscribed from %s", message["TopicArn"])
        else:
            try:
                event = parse_ses_notification(message["Message"])
            except Exception as exc:  # noqa: BLE001 - FeedbackFormatError, or a parser bug: the same answer
                # Authentic but not SES feedback (e.g. a test message from the console): nothing to do.
                if isinstance(exc, FeedbackFormatError):
                    log.warning("SNS notification on %s is not SES feedback: %s", message["TopicArn"], exc)
                else:
                    log.error(
                        "SNS notification on %s could not be parsed: %s",
                        message["TopicArn"],
                        describe_error(exc),
                    )
                metrics.sns_rejected.labels("not_ses_feedback").inc()
                return web.Response(text="ignored\n")
            try:
                await processor.apply(event, source="sns")
            except StoreError as exc:
                log.error("could not record SES feedback: %s", exc)
                return web.Response(status=503, text="store unavailable\n")
            except Exception as exc:  # noqa: BLE001 - a bug: answer so that SNS retries, without a traceback
                log.error("could not apply SES feedback from SNS: %s", describe_error(exc))
                return web.Response(status=503, text="internal error\n")
        return web.Response(text="ok\n")

    return handle
