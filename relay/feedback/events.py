"""SES feedback JSON -> `FeedbackEvent`s. Pure: no I/O.

SES publishes two shapes: notifications (identity feedback, key `notificationType`) and event publishing
(configuration-set event destinations, key `eventType`). Both carry the same `bounce` / `complaint` /
`delivery` objects, so one parser serves both.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import Any


class FeedbackFormatError(ValueError):
    """The JSON is not an SES notification we understand."""


# Event types we know, by their SES names; metric labels come only from these (plus "other").
KNOWN_TYPES = {
    "Bounce",
    "Complaint",
    "Delivery",
    "Send",
    "Reject",
    "DeliveryDelay",
    "Open",
    "Click",
    "Rendering Failure",
    "Subscription",
    "AmazonSnsSubscriptionSucceeded",
}
KNOWN_SUBTYPES = {
    # bounce types / subtypes
    "Permanent",
    "Transient",
    "Undetermined",
    "General",
    "NoEmail",
    "Suppressed",
    "OnAccountSuppressionList",
    "MailboxFull",
    "MessageTooLarge",
    "ContentRejected",
    "AttachmentRejected",
    # complaint feedback types (RFC 5965)
    "abuse",
    "auth-failure",
    "fraud",
    "not-spam",
    "other",
    "virus",
}


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    type: str  # Bounce, Complaint, Delivery, ...
    subtype: str = ""  # bounce: "Permanent/General"; complaint: feedback type
    recipients: tuple[str, ...] = ()  # the addresses the event is about
    feedback_id: str | None = None
    message_id: str | None = None  # SES message id of the original send
    timestamp: str | None = None
    detail: str = ""  # e.g. diagnostic code, for operators
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suppresses(self) -> bool:
        """Permanent bounces and complaints mean: never mail these recipients again."""
        return (self.type == "Bounce" and self.subtype.startswith("Permanent")) or self.type == "Complaint"

    @property
    def is_transient_bounce(self) -> bool:
        return self.type == "Bounce" and self.subtype.startswith("Transient")

    @property
    def metric_type(self) -> str:
        return self.type if self.type in KNOWN_TYPES else "other"

    @property
    def metric_subtype(self) -> str:
        parts = [part if part in KNOWN_SUBTYPES else "other" for part in self.subtype.split("/") if part]
        return "/".join(parts)


def describe_error(exc: BaseException, limit: int = 200) -> str:
    """One log line for an unexpected exception met while handling feedback: its class, its message
    (whitespace folded, shortened: it may quote the input) and where it was raised. No traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rpartition('/')[2]}:{frames[-1].lineno}" if frames else ""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{exc.__class__.__name__}{': ' + text if text else ''}{where}"


# --- reading the JSON: every field the parser reads is type-checked, and a wrong type is a
# FeedbackFormatError naming the field (path) and the JSON type found, never the value.


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"  # only from a dict built in Python, not from JSON


def _wrong_type(path: str, value: Any, expected: str) -> FeedbackFormatError:
    return FeedbackFormatError(f"{path} is {_json_type(value)}, expected {expected}")


def _text(value: str, path: str) -> str:
    """JSON strings may hold lone surrogates (\\ud800): not text any store, log or metric can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FeedbackFormatError(f"{path} is not valid Unicode text") from None
    return value


def _object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    """parent[key] as an object; None when absent or null."""
    value = parent.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _wrong_type(path, value, "an object")


def _array(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    """parent[key] as an array; empty when absent or null."""
    value = parent.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise _wrong_type(path, value, "an array")


def _string(parent: dict[str, Any], key: str, path: str) -> str | None:
    """parent[key] as a string; None when absent or null."""
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return _text(value, path)
    raise _wrong_type(path, value, "a string")


def _recipients(
    parent: dict[str, Any], key: str, path: str, diagnostics: list[str] | None = None
) -> tuple[str, ...]:
    """SES recipient objects (``{"emailAddress": ..., "diagnosticCode": ...}``); a bare address string is
    accepted too. Entries without a usable address are skipped; diagnostic codes go to `diagnostics`."""
    found: list[str] = []
    for index, item in enumerate(_array(parent, key, path)):
        item_path = f"{path}[{index}]"
        if isinstance(item, str):
            address: str | None = _text(item, item_path)
        elif isinstance(item, dict):
            address = _string(item, "emailAddress", f"{item_path}.emailAddress")
            if diagnostics is not None:
                code = _string(item, "diagnosticCode", f"{item_path}.diagnosticCode")
                if code:
                    diagnostics.append(code)
        else:
            raise _wrong_type(item_path, item, "an object or an address string")
        if address:
            _keep_address(address, found)
    return tuple(found)


def _address_strings(parent: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    """An array of address strings (delivery.recipients)."""
    found: list[str] = []
    for index, item in enumerate(_array(parent, key, path)):
        if not isinstance(item, str):
            raise _wrong_type(f"{path}[{index}]", item, "a string")
        _keep_address(_text(item, f"{path}[{index}]"), found)
    return tuple(found)


def _keep_address(value: str, found: list[str]) -> None:
    address = _bare_address(value)
    if "@" in address:  # checked after stripping: "a@b <>" holds no address
        found.append(address)


def _bare_address(value: str) -> str:
    """SES sometimes gives 'Name <a@b>' in recipient fields; keep only the address."""
    value = value.strip()
    if value.endswith(">") and "<" in value:
        value = value[value.rindex("<") + 1 : -1]
    return value.strip()


def _event_type(payload: dict[str, Any]) -> str:
    for key in ("notificationType", "eventType"):  # notifications, event publishing
        kind = _string(payload, key, key)
        if kind is not None:
            if not kind:
                raise FeedbackFormatError(f"{key} is empty")
            return kind
    raise FeedbackFormatError("no notificationType or eventType")


def parse_ses_notification(payload: str | bytes | dict[str, Any]) -> FeedbackEvent:
    """Parse one SES notification or event (JSON text or already-decoded dict).

    Anything that is not an SES notification we understand raises FeedbackFormatError with a one-line
    reason, whatever the JSON holds: wrongly typed fields, nesting too deep for the decoder, invalid text.
    """
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:  # includes UnicodeDecodeError
            raise FeedbackFormatError(f"not JSON: {exc}") from None
        except RecursionError:
            raise FeedbackFormatError("not JSON we accept: nested too deeply") from None
    if not isinstance(payload, dict):
        raise FeedbackFormatError("not a JSON object")
    kind = _event_type(payload)
    mail = _object(payload, "mail", "mail") or {}
    # Passed by name, not as **dict: a dict of str | None would hide a wrong field from the type checker.
    message_id = _string(mail, "messageId", "mail.messageId")
    timestamp = _string(mail, "timestamp", "mail.timestamp")

    if kind == "Bounce":
        bounce = _object(payload, "bounce", "bounce")
        if bounce is None:
            raise FeedbackFormatError("Bounce without a bounce object")
        diagnostics: list[str] = []
        recipients = _recipients(bounce, "bouncedRecipients", "bounce.bouncedRecipients", diagnostics)
        bounce_type = _string(bounce, "bounceType", "bounce.bounceType") or ""
        bounce_subtype = _string(bounce, "bounceSubType", "bounce.bounceSubType") or ""
        return FeedbackEvent(
            type="Bounce",
            subtype=f"{bounce_type}/{bounce_subtype}",
            recipients=recipients,
            feedback_id=_string(bounce, "feedbackId", "bounce.feedbackId"),
            detail="; ".join(diagnostics)[:500],
            message_id=message_id,
            timestamp=timestamp,
        )
    if kind == "Complaint":
        complaint = _object(payload, "complaint", "complaint")
        if complaint is None:
            raise FeedbackFormatError("Complaint without a complaint object")
        return FeedbackEvent(
            type="Complaint",
            subtype=_string(complaint, "complaintFeedbackType", "complaint.complaintFeedbackType") or "",
            recipients=_recipients(complaint, "complainedRecipients", "complaint.complainedRecipients"),
            feedback_id=_string(complaint, "feedbackId", "complaint.feedbackId"),
            detail=_string(complaint, "complaintSubType", "complaint.complaintSubType") or "",
            message_id=message_id,
            timestamp=timestamp,
        )
    if kind == "Delivery":
        delivery = _object(payload, "delivery", "delivery") or {}
        return FeedbackEvent(
            type="Delivery",
            recipients=_address_strings(delivery, "recipients", "delivery.recipients"),
            message_id=message_id,
            timestamp=timestamp,
        )
    if kind == "DeliveryDelay":
        delay = _object(payload, "deliveryDelay", "deliveryDelay") or {}
        return FeedbackEvent(
            type="DeliveryDelay",
            subtype=_string(delay, "delayType", "deliveryDelay.delayType") or "",
            recipients=_recipients(delay, "delayedRecipients", "deliveryDelay.delayedRecipients"),
            message_id=message_id,
            timestamp=timestamp,
        )
    if kind in ("Open", "Click", "Reject"):
        # For the trace: what was clicked, with what, or why SES refused the mail. The reader's IP
        # address is left out (personal data the relay has no use for).
        part = _object(payload, kind.lower(), kind.lower()) or {}
        if kind == "Click":
            detail = _string(part, "link", "click.link") or ""
        elif kind == "Open":
            detail = _string(part, "userAgent", "open.userAgent") or ""
        else:
            detail = _string(part, "reason", "reject.reason") or ""
        return FeedbackEvent(type=kind, detail=detail[:500], message_id=message_id, timestamp=timestamp)
    # Send, Rendering Failure, Subscription, ...: counted only.
    return FeedbackEvent(type=kind, message_id=message_id, timestamp=timestamp)
