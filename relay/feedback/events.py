"""SES feedback JSON -> `FeedbackEvent`s. Pure: no I/O.

SES publishes two shapes: notifications (identity feedback, key `notificationType`) and event publishing
(configuration-set event destinations, key `eventType`). Both carry the same `bounce` / `complaint` /
`delivery` objects, so one parser serves both.
"""

from __future__ import annotations

import json
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


def _addresses(items: Any, key: str = "emailAddress") -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    found = []
    for item in items:
        value = item.get(key) if isinstance(item, dict) else item
        if isinstance(value, str) and "@" in value:
            found.append(_bare_address(value))
    return tuple(found)


def _bare_address(value: str) -> str:
    """SES sometimes gives 'Name <a@b>' in recipient fields; keep only the address."""
    value = value.strip()
    if value.endswith(">") and "<" in value:
        value = value[value.rindex("<") + 1 : -1]
    return value.strip()


def parse_ses_notification(payload: str | bytes | dict[str, Any]) -> FeedbackEvent:
    """Parse one SES notification or event (JSON text or already-decoded dict)."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise FeedbackFormatError(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise FeedbackFormatError("not a JSON object")
    kind = payload.get("notificationType") or payload.get("eventType")
    if not isinstance(kind, str) or not kind:
        raise FeedbackFormatError("no notificationType or eventType")
    mail = payload.get("mail") if isinstance(payload.get("mail"), dict) else {}
    common = {"message_id": mail.get("messageId"), "timestamp": mail.get("timestamp")}

    if kind == "Bounce":
        bounce = payload.get("bounce")
        if not isinstance(bounce, dict):
            raise FeedbackFormatError("Bounce without a bounce object")
        recipients = bounce.get("bouncedRecipients")
        diagnostics = [r.get("diagnosticCode") for r in recipients or [] if isinstance(r, dict)]
        return FeedbackEvent(
            type="Bounce",
            subtype=f"{bounce.get('bounceType', '')}/{bounce.get('bounceSubType', '')}",
            recipients=_addresses(recipients),
            feedback_id=bounce.get("feedbackId"),
            detail="; ".join(str(d) for d in diagnostics if d)[:500],
            **common,
        )
    if kind == "Complaint":
        complaint = payload.get("complaint")
        if not isinstance(complaint, dict):
            raise FeedbackFormatError("Complaint without a complaint object")
        return FeedbackEvent(
            type="Complaint",
            subtype=str(complaint.get("complaintFeedbackType") or ""),
            recipients=_addresses(complaint.get("complainedRecipients")),
            feedback_id=complaint.get("feedbackId"),
            detail=str(complaint.get("complaintSubType") or ""),
            **common,
        )
    if kind == "Delivery":
        delivery = payload.get("delivery") if isinstance(payload.get("delivery"), dict) else {}
        return FeedbackEvent(
            type="Delivery",
            recipients=tuple(_bare_address(r) for r in delivery.get("recipients", []) if isinstance(r, str)),
            **common,
        )
    if kind == "DeliveryDelay":
        delay = payload.get("deliveryDelay") if isinstance(payload.get("deliveryDelay"), dict) else {}
        return FeedbackEvent(
            type="DeliveryDelay",
            subtype=str(delay.get("delayType") or ""),
            recipients=_addresses(delay.get("delayedRecipients")),
            **common,
        )
    # Send, Reject, Open, Click, ...: counted only.
    return FeedbackEvent(type=kind, **common)
