"""SES outcome -> SMTP reply. The one place that decides what a client retries and what it bounces.

Rule: a 4xx keeps the mail at the client (it retries); a 5xx bounces it. Anything the operator can fix
(credentials, IAM, a missing configuration set) is 4xx so no mail is lost while they fix it.
"""

from __future__ import annotations

from relay.sending import PermanentSendError, SendError, TransientSendError

# Reply lines, named so tests and code never scatter literals.
SENT = "250 2.0.0 Ok {message_id}"
THROTTLED = "451 4.4.5 Amazon SES is throttling this account (send rate or daily quota); try again later"
SENDING_PAUSED = "451 4.3.2 Sending is paused for this account or configuration set; try again later"
SES_UNAVAILABLE = "451 4.4.1 Amazon SES is unavailable (not sent); try again later"
UPLOAD_TOO_SLOW = (
    "451 4.4.1 Upload to Amazon SES timed out before the message was complete (not sent); try again later"
)
RATE_WAIT = "451 4.4.5 Too many messages waiting for the local SES send-rate limit; try again later"
OUTCOME_UNKNOWN = (
    "451 4.4.2 No answer from Amazon SES after sending; the message may be delivered twice on retry"
)
OPERATOR_ERROR = "451 4.3.5 Relay is misconfigured for Amazon SES ({detail}); the operator has been notified"
NO_CREDENTIALS = "451 4.3.5 Relay has no AWS credentials; the operator must configure them"
REJECTED = "554 5.7.1 Amazon SES rejected the message: {detail}"
BAD_CONTENT = "554 5.6.0 Amazon SES rejected the message: {detail}"
ACCOUNT_SUSPENDED = "554 5.7.1 Amazon SES account is suspended: {detail}"

_THROTTLING = {"TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"}
PAUSED_CODES = {
    "SendingPausedException",
    "AccountSendingPausedException",
    "ConfigurationSetSendingPausedException",
}
_OPERATOR = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "NotFoundException",  # configuration set, identity or contact list named in the call does not exist
    "ConfigurationSetDoesNotExistException",
    "UnknownOperationException",  # endpoint is not SESv2 (e.g. wrong endpoint_url)
}
_PERMANENT_CONTENT = {"MailFromDomainNotVerifiedException", "BadRequestException", "InvalidParameterValue"}


OUTCOME_UNKNOWN_CODE = "timeout_after_send"  # SES may have the message: a retry may duplicate it
DAILY_QUOTA_CODE = "LimitExceededException"  # the 24-hour sending quota is used up


def _clean(text: str) -> str:
    """Provider text in a reply: one line, printable ASCII, bounded."""
    text = " ".join(text.split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[:300] or "no reason given"


def classify_http_error(status: int, code: str, message: str) -> SendError:
    """Map an SES error response (HTTP status, error code, message text) to a typed send error."""
    detail = _clean(message)
    if code in _THROTTLING or status == 429:
        return TransientSendError(THROTTLED, code=code or "429", detail=detail)
    if code in PAUSED_CODES:
        return TransientSendError(SENDING_PAUSED, code=code, detail=detail)
    if code == "AccountSuspendedException":
        return PermanentSendError(ACCOUNT_SUSPENDED.format(detail=detail), code=code, detail=detail)
    if code == "MessageRejected":
        return PermanentSendError(REJECTED.format(detail=detail), code=code, detail=detail)
    if code in _PERMANENT_CONTENT:
        return PermanentSendError(BAD_CONTENT.format(detail=detail), code=code, detail=detail)
    if code in _OPERATOR or status in (401, 403):
        return TransientSendError(
            OPERATOR_ERROR.format(detail=_clean(code or str(status))), code=code or str(status), detail=detail
        )
    if status >= 500:
        return TransientSendError(SES_UNAVAILABLE, code=code or f"http_{status}", detail=detail)
    # An unknown 4xx: SES said no, but we cannot tell why. Keep the mail (4xx) rather than bounce it.
    return TransientSendError(
        OPERATOR_ERROR.format(detail=_clean(f"{code or status}: {detail}")),
        code=code or f"http_{status}",
        detail=detail,
    )


def not_sent(reason: str) -> TransientSendError:
    """Failure before the request reached SES: safe to retry."""
    return TransientSendError(SES_UNAVAILABLE, code="connection_error", detail=_clean(reason))


def upload_timeout(reason: str) -> TransientSendError:
    """The upload's time limit expired before the whole request was handed over: SES acts only on a
    complete request, so nothing was sent and a retry is safe."""
    return TransientSendError(UPLOAD_TOO_SLOW, code="upload_timeout", detail=_clean(reason))


def rate_wait(reason: str) -> TransientSendError:
    """Refused before any SES call: the local send-rate limiter's queue is longer than ses.max_rate_wait."""
    return TransientSendError(RATE_WAIT, code="rate_wait", detail=_clean(reason))


def outcome_unknown(reason: str) -> TransientSendError:
    """Failure after the request was sent: SES may have accepted it."""
    return TransientSendError(OUTCOME_UNKNOWN, code=OUTCOME_UNKNOWN_CODE, detail=_clean(reason))


def no_credentials(reason: str) -> TransientSendError:
    return TransientSendError(NO_CREDENTIALS, code="no_credentials", detail=_clean(reason))


# Metric label values for SES error codes come from this closed set; anything else is "other".
KNOWN_CODES = frozenset(
    _THROTTLING
    | PAUSED_CODES
    | _OPERATOR
    | _PERMANENT_CONTENT
    | {
        "AccountSuspendedException",
        "MessageRejected",
        "connection_error",
        "upload_timeout",
        "timeout_after_send",
        "rate_wait",
        "no_credentials",
        "429",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


def is_rate_throttle(error: SendError) -> bool:
    """SES refused for the per-second send rate (not the 24-hour quota): sending slower helps."""
    return error.reply == THROTTLED and error.code != DAILY_QUOTA_CODE


def metric_code(code: str) -> str:
    if code in KNOWN_CODES:
        return code
    if code.startswith("http_") and code[5:].isdigit():
        return code[:6] + "xx"  # http_5xx, http_4xx
    return "other"
