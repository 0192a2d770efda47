"""A small, fast fake of the Amazon SESv2 ``SendEmail`` HTTP API with fault injection.

It speaks the real restJson1 wire format, so an unmodified botocore ``sesv2`` client pointed at
:attr:`FakeSES.endpoint_url` sends to it and parses its errors exactly as it parses real SES errors:

* request: ``POST /v2/email/outbound-emails`` with a JSON body, SigV4 ``Authorization`` header
  (presence and scheme are checked, the signature is not);
* success: ``200``, ``Content-Type: application/json``, ``{"MessageId": "..."}``;
* error: HTTP status + ``x-amzn-ErrorType: <Code>:http://internal.amazon.com/coral/...`` +
  ``{"message": "<text>"}``.  botocore's ``RestJSONParser`` takes ``Error.Code`` from the part of
  the header before the first ``:`` and ``Error.Message`` from the body's ``message``.

The server runs in its own thread with its own event loop, so synchronous tests and a relay running
in another thread (or process) can use it alike::

    with FakeSES() as fake:
        fake.queue(Fault.error("TooManyRequestsException"), Fault.reset())
        client = boto3.client("sesv2", endpoint_url=fake.endpoint_url, ...)

Order of checks for each request (every request is counted in ``received`` and, unless
``record=False``, recorded in ``requests``):

0. a :meth:`Fault.slow_read` at the head of the queue is consumed by a signed SendEmail request
   before its body is read: the body is read at that rate, then the request goes on from step 1
   (each request consumes at most one fault);
1. unknown path/method -> 404 ``UnknownOperationException`` (does not consume a fault);
2. missing/non-SigV4 ``Authorization`` (when ``require_auth``) -> 403 ``UnrecognizedClientException``
   (does not consume a fault);
3. the next queued :class:`Fault`, if any, is consumed and applied (``Fault.delay`` then continues);
4. request validation -> 400 ``BadRequestException``;
5. ``max_rate`` token bucket -> 429 ``TooManyRequestsException`` (one token per request, or with
   ``rate_counts="recipients"`` one per recipient, as SES counts MaxSendRate; a 429 adds 1 to
   ``throttled``);
6. with ``count_quota``: the 24-hour quota -> 400 ``LimitExceededException`` when the request's
   recipients would take ``SentLast24Hours`` past ``Max24HourSend`` (-1: unlimited);
7. success after ``latency`` seconds (or the ``Fault.delay`` seconds instead); with ``count_quota``
   its recipients are added to ``SentLast24Hours``, as SES counts them.

Suppression-list routes (the account-level list, ``fake.suppressed``: address -> (reason, unix time)):

* ``GET /v2/email/suppression/addresses`` (ListSuppressedDestinations: ``PageSize`` 1-1000,
  ``NextToken``, ``Reason`` (repeatable), ``StartDate``/``EndDate``; addresses in sorted order;
  ``LastUpdateTime`` as epoch seconds, as restJson returns it);
* ``PUT /v2/email/suppression/addresses`` (PutSuppressedDestination, JSON ``EmailAddress``/``Reason``);
* ``GET``/``DELETE /v2/email/suppression/addresses/{EmailAddress}``.

They go through the same checks as SendEmail (queued faults apply to them too), but their throttle
is a separate token bucket: ``suppression_rate`` requests/second (default 1, as in SES; ``None``
disables it). ``RecordedRequest.query`` keeps their query parameters.

Account and setup routes (what ``ses-relay doctor`` reads; authenticated, but no faults, no latency):

* ``GET /v2/email/account`` (GetAccount): ``fake.account`` (SendingEnabled, ProductionAccessEnabled,
  EnforcementStatus, SendQuota) with ``SendQuota.MaxSendRate`` = ``fake.account_max_send_rate``
  (``None``: 403 AccessDeniedException); ``fake.set_send_quota(...)`` changes Max24HourSend and
  SentLast24Hours (e.g. the day rolled on);
* ``GET /v2/email/identities/{EmailIdentity}`` (GetEmailIdentity): ``fake.add_identity(name, ...)``;
* ``GET /v2/email/configuration-sets/{Name}`` (GetConfigurationSet) and
  ``GET /v2/email/configuration-sets/{Name}/event-destinations``
  (GetConfigurationSetEventDestinations): ``fake.add_configuration_set(name, ...)``.

An unknown identity or configuration set is 404 ``NotFoundException``, as in SES.

CLI (for the benchmark)::

    python -m testkit.fake_ses --port 8025 --latency 0.05 [--max-rate 200 [--rate-counts recipients]]
        [--account-max-send-rate 200] [--account-max-24-hour-send -1]

serves in the foreground (``record=False``) until SIGTERM/SIGINT and prints one JSON line
``{"received": n, "sent": n}`` on stdout when it exits (with ``--max-rate``, also ``"throttled": n``).
With ``--accepted-log PATH`` (or
``FakeSES(accepted_log=PATH)``) every accepted SendEmail also appends one JSON line to PATH,
``{"ses_message_id": ..., "message_id": <the raw message's Message-ID header or null>,
"sha256": <hex digest of the raw message>, "destinations": [...]}``, flushed before the 200 is
written: a test reads it while the fake runs (e.g. to check which messages arrived while it killed
and restarted the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import email.parser
import email.policy
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from aiohttp import ClientPayloadError, web

SEND_EMAIL_PATH = "/v2/email/outbound-emails"
SUPPRESSION_PATH = "/v2/email/suppression/addresses"
ACCOUNT_PATH = "/v2/email/account"  # GetAccount
IDENTITY_PATH = "/v2/email/identities/"  # + {EmailIdentity}: GetEmailIdentity
CONFIGURATION_SET_PATH = "/v2/email/configuration-sets/"  # + {Name}[/event-destinations]
SUPPRESSION_REASONS = ("BOUNCE", "COMPLAINT")
MAX_SUPPRESSION_PAGE = 1000
SUPPRESSION_THROTTLED = "Too Many Requests."
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.services.email.v2/"
MAX_RECIPIENTS = 50

#: Default HTTP status for each error code (codes not listed default to 400).
ERROR_STATUS: dict[str, int] = {
    "TooManyRequestsException": 429,
    "LimitExceededException": 400,
    "SendingPausedException": 400,
    "AccountSuspendedException": 400,
    "MessageRejected": 400,
    "MailFromDomainNotVerifiedException": 400,
    "NotFoundException": 404,
    "BadRequestException": 400,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
    "UnknownOperationException": 404,
}

#: Message used by :meth:`Fault.error` when no message is given.
DEFAULT_MESSAGES: dict[str, str] = {
    "TooManyRequestsException": "Maximum sending rate exceeded.",
    "LimitExceededException": "Daily message quota exceeded.",
    "SendingPausedException": "Sending is paused for this account.",
    "AccountSuspendedException": "Your account has been suspended.",
    "MessageRejected": "Email address is not verified.",
    "MailFromDomainNotVerifiedException": "The MAIL FROM domain is not verified.",
    "NotFoundException": "Configuration set does not exist.",
    "BadRequestException": "Bad request.",
    "AccessDeniedException": "User is not authorized to perform ses:SendEmail.",
    "UnrecognizedClientException": "The security token included in the request is invalid.",
    "InternalFailure": "An internal error occurred.",
    "ServiceUnavailable": "Service unavailable.",
}

_JSON = "application/json"
_SLOW_READ_TICK = 0.02  # seconds between reads of a slow_read body
_SLOW_READ_BUFFER = 64 * 1024  # bytes; SO_RCVBUF of a slow_read connection


@dataclass
class Fault:
    """One scripted behaviour for one request; build with the classmethods below."""

    kind: str  # "error" | "delay" | "reset" | "hang" | "http" | "slow_read"
    code: str = ""
    message: str = ""
    status: int = 200
    seconds: float = 0.0
    rate: float = 0.0  # bytes/second (slow_read)
    reset_after: int = 0  # bytes (slow_read): abort the connection once this many are read; 0: never
    body: bytes = b""
    content_type: str = "text/html"

    @classmethod
    def error(cls, code: str, message: str = "", status: int | None = None) -> Fault:
        """A real-looking SES error: botocore raises ClientError with this Code/Message/status."""
        return cls(
            kind="error",
            code=code,
            message=message or DEFAULT_MESSAGES.get(code, code),
            status=status if status is not None else ERROR_STATUS.get(code, 400),
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` (instead of ``latency``), then handle the request normally."""
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Read the request, then abort the TCP connection (RST) without any response."""
        return cls(kind="reset")

    @classmethod
    def hang(cls) -> Fault:
        """Read the request and never answer (until the server stops; then the connection is aborted)."""
        return cls(kind="hang")

    @classmethod
    def slow_read(cls, bytes_per_second: float, *, reset_after: int = 0) -> Fault:
        """A slow uplink: read a SendEmail request's body at ``bytes_per_second``, then handle the
        request normally; with ``reset_after``, abort the connection (RST) once that many bytes are
        read. A request cut short either way (or by the client) stays recorded as ``"incomplete"``,
        with the bytes that did arrive in ``raw_body``. (``hang``/``delay`` stall the answer instead.)"""
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        return cls(kind="slow_read", rate=bytes_per_second, reset_after=reset_after)

    @classmethod
    def http_status(
        cls,
        status: int,
        body: bytes = b"<html><body>Bad Gateway</body></html>",
        content_type: str = "text/html",
    ) -> Fault:
        """A raw non-JSON answer without ``x-amzn-ErrorType``, e.g. a load balancer's 502 page."""
        return cls(kind="http", status=status, body=body, content_type=content_type)

    @property
    def outcome(self) -> str:
        if self.kind == "error":
            return self.code
        if self.kind == "http":
            return f"http_{self.status}"
        return self.kind


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # parsed JSON (None when it was not a JSON object)
    raw_message: bytes | None  # base64-decoded Content.Raw.Data
    outcome: str = "pending"  # "ok", an error code, "reset", "hang" or "http_<status>"
    message_id: str | None = None
    query: dict[str, list[str]] | None = None  # query parameters (suppression-list routes)
    raw_body: bytes = b""  # the request body exactly as received (what SigV4 signed)

    @property
    def destinations(self) -> list[str]:
        """To + Cc + Bcc addresses of the request, in that order."""
        dest = (self.body or {}).get("Destination") or {}
        if not isinstance(dest, dict):
            return []
        return [a for key in ("ToAddresses", "CcAddresses", "BccAddresses") for a in (dest.get(key) or [])]


def new_message_id() -> str:
    return f"0100018f-{uuid.uuid4()}-000000"


def _error_response(code: str, message: str, status: int | None = None) -> web.Response:
    return web.Response(
        status=status if status is not None else ERROR_STATUS.get(code, 400),
        body=json.dumps({"message": message}).encode(),
        content_type=_JSON,
        headers={"x-amzn-ErrorType": code + ERROR_TYPE_SUFFIX, "x-amzn-RequestId": str(uuid.uuid4())},
    )


class _Invalid(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _parse_json(raw: bytes, rec: RecordedRequest | None) -> tuple[Any, str | None]:
    """(body, None), or (None, SES's complaint) for a body that is not JSON; records a JSON object."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None, "Could not parse request body into json."
    if rec is not None and isinstance(body, dict):
        rec.body = body
    return body, None


def _header_message_id(raw: bytes) -> str | None:
    """The Message-ID header of a raw message (only the header block is parsed), or None."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 4]
    value = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head).get("Message-ID")
    return None if value is None else str(value).strip()


def read_accepted_log(path: str | Path) -> list[dict[str, Any]]:
    """The lines an ``accepted_log`` holds so far, in order (a line still being written is left out)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def _count_destinations(dest: Any) -> int:
    if dest is None:
        return 0
    if not isinstance(dest, dict):
        raise _Invalid("Destination must be an object.")
    n = 0
    for key in ("ToAddresses", "CcAddresses", "BccAddresses"):
        addrs = dest.get(key)
        if addrs is None:
            continue
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise _Invalid(f"Destination.{key} must be a list of strings.")
        n += len(addrs)
    return n


class _TokenBucket:
    """`rate` requests/second with a burst of max(1, rate); the rate is read on each take."""

    def __init__(self, rate: Callable[[], float | None]) -> None:
        self._rate = rate
        self._tokens: float | None = None
        self._last = time.monotonic()

    def take(self) -> bool:
        rate = self._rate()
        if rate is None:
            return True
        burst = max(1.0, rate)
        now = time.monotonic()
        tokens = burst if self._tokens is None else min(burst, self._tokens + (now - self._last) * rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class _Listing(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _query_time(query: dict[str, list[str]], name: str) -> float | None:
    values = query.get(name)
    if not values:
        return None
    text = values[-1]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise _Listing(f"Invalid {name}.") from None


class FakeSES:
    """Fake SESv2 SendEmail endpoint served from a background thread (see module docstring)."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        max_rate: float | None = None,
        require_auth: bool = True,
        record: bool = True,
        suppression_rate: float | None = 1.0,
        accepted_log: str | Path | None = None,
        rate_counts: str = "messages",
    ) -> None:
        self.latency = latency
        if rate_counts not in ("messages", "recipients"):
            raise ValueError("rate_counts must be 'messages' or 'recipients'")
        #: What one ``max_rate`` token pays for: a SendEmail request, or one of its recipients (SES).
        self.rate_counts = rate_counts
        self.throttled = 0  # SendEmail requests answered 429 by the max_rate bucket
        #: File that gets one JSON line per accepted SendEmail (see the module docstring); None: none.
        self.accepted_log = None if accepted_log is None else Path(accepted_log)
        self._accepted_file: IO[str] | None = None
        self.suppression_rate = suppression_rate
        #: The account-level suppression list: address -> (reason, unix time of the last update).
        self.suppressed: dict[str, tuple[str, float]] = {}
        self._suppression_bucket = _TokenBucket(lambda: self.suppression_rate)
        self.max_rate = max_rate
        #: GetAccount's SendQuota.MaxSendRate; None: GetAccount answers 403 AccessDeniedException.
        self.account_max_send_rate: float | None = 14.0
        #: The rest of GetAccount's answer: a healthy production account unless a test changes it.
        self.account: dict[str, Any] = {
            "SendingEnabled": True,
            "ProductionAccessEnabled": True,
            "EnforcementStatus": "HEALTHY",
            "DedicatedIpAutoWarmupEnabled": False,
            "SendQuota": {"Max24HourSend": 50000.0, "SentLast24Hours": 0.0},
        }
        #: True: accepted SendEmails count their recipients into SentLast24Hours, and one that would
        #: pass Max24HourSend is refused with LimitExceededException, as SES does.
        self.count_quota = False
        #: GetEmailIdentity answers by lower-cased identity (see add_identity).
        self.identities: dict[str, dict[str, Any]] = {}
        #: Configuration sets by name: (GetConfigurationSet answer, event destinations).
        self.configuration_sets: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self.require_auth = require_auth
        self.record = record
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._message_ids: list[str] = []
        self._burst = max(1.0, max_rate) if max_rate else 1.0
        self._tokens = self._burst
        self._last_refill = time.monotonic()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSES is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the requests recorded so far (empty when ``record=False``)."""
        with self._lock:
            return list(self._requests)

    @property
    def message_ids(self) -> list[str]:
        """MessageIds returned so far, in order (empty when ``record=False``)."""
        with self._lock:
            return list(self._message_ids)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def queue(self, *faults: Fault) -> None:
        """Script faults; each request consumes the next one, in order."""
        for f in faults:
            if not isinstance(f, Fault):
                raise TypeError(f"expected Fault, got {f!r}")
        with self._lock:
            self._faults.extend(faults)

    def set_send_quota(
        self, *, max_24_hour_send: float | None = None, sent_last_24_hours: float | None = None
    ) -> None:
        """Change GetAccount's SendQuota numbers (None: keep that one); -1 Max24HourSend: unlimited."""
        with self._lock:
            quota = self.account.setdefault("SendQuota", {})
            if max_24_hour_send is not None:
                quota["Max24HourSend"] = float(max_24_hour_send)
            if sent_last_24_hours is not None:
                quota["SentLast24Hours"] = float(sent_last_24_hours)

    def _take_quota(self, recipients: int) -> bool:
        """count_quota: charge `recipients` to the 24-hour quota, or False when it has no room."""
        with self._lock:
            quota = self.account.setdefault("SendQuota", {})
            limit = float(quota.get("Max24HourSend", -1))
            sent = float(quota.get("SentLast24Hours", 0))
            if 0 <= limit < sent + recipients:
                return False
            quota["SentLast24Hours"] = sent + recipients
            return True

    def add_identity(self, name: str, *, verified: bool = True, dkim: str = "SUCCESS") -> None:
        """An email identity (a domain, or an address with "@"), as GetEmailIdentity returns it. ``dkim``
        is the domain's DkimAttributes.Status (SUCCESS, PENDING, FAILED, TEMPORARY_FAILURE, NOT_STARTED)."""
        domain = "@" not in name
        self.identities[name.lower()] = {
            "IdentityType": "DOMAIN" if domain else "EMAIL_ADDRESS",
            "FeedbackForwardingStatus": True,
            "VerifiedForSendingStatus": verified,
            "VerificationStatus": "SUCCESS" if verified else "PENDING",
            "DkimAttributes": {
                "SigningEnabled": domain and dkim == "SUCCESS",
                "Status": dkim if domain else "NOT_STARTED",
                "Tokens": [f"token{i}" for i in range(3)] if domain else [],
                "SigningAttributesOrigin": "AWS_SES",
            },
            "MailFromAttributes": {
                "MailFromDomain": "",
                "MailFromDomainStatus": "PENDING",
                "BehaviorOnMxFailure": "USE_DEFAULT_VALUE",
            },
            "Policies": {},
            "Tags": [],
        }

    def add_configuration_set(
        self,
        name: str,
        *,
        sending_enabled: bool = True,
        event_destinations: list[dict[str, Any]] | None = None,
    ) -> None:
        """A configuration set; ``event_destinations`` as SES lists them (Name, Enabled,
        MatchingEventTypes, SnsDestination: {TopicArn}, ...). Adding a name again replaces it."""
        answer = {
            "ConfigurationSetName": name,
            "SendingOptions": {"SendingEnabled": sending_enabled},
            "ReputationOptions": {"ReputationMetricsEnabled": False},
            "DeliveryOptions": {"TlsPolicy": "OPTIONAL"},
            "Tags": [],
        }
        self.configuration_sets[name] = (answer, [dict(d) for d in event_destinations or []])

    def start(self, port: int = 0) -> int:
        """Bind 127.0.0.1:``port`` (0 = a free port), serve in a background thread; return the port."""
        if self._thread is not None:
            raise RuntimeError("FakeSES already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, args=(port,), name="FakeSES", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        assert self._port is not None
        return self._port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: wake hung requests (their connections are aborted), close the runner, join."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FakeSES thread did not stop")
        self._thread = None
        self._loop = None
        self._stopping = None

    def __enter__(self) -> FakeSES:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ server thread

    def _thread_main(self, port: int) -> None:
        try:
            if self.accepted_log is not None:
                self._accepted_file = open(self.accepted_log, "a", encoding="utf-8")  # closed below
            asyncio.run(self._serve(port))
        except BaseException as exc:  # reported to start() if startup failed
            if not self._ready.is_set():
                self._startup_error = exc
        finally:
            if self._accepted_file is not None:
                self._accepted_file.close()
                self._accepted_file = None
            self._ready.set()

    async def _serve(self, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self._port = runner.addresses[0][1]
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _wait_or_stop(self, seconds: float) -> bool:
        """Sleep ``seconds`` but wake early when stopping; True if the server is stopping."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # SO_LINGER 0 -> close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _next_fault(self) -> Fault | None:
        if not self._faults:  # cheap unlocked check for the common path
            return None
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _take_slow_read(self, request: web.Request) -> Fault | None:
        """The queued slow_read fault, consumed by a SendEmail request before its body is read."""
        if not self._faults or request.path != SEND_EMAIL_PATH or request.method != "POST":
            return None
        if self.require_auth and not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return None  # answered 403 without consuming a fault, as for the other faults
        with self._lock:
            if not self._faults or self._faults[0].kind != "slow_read":
                return None
            fault = self._faults.popleft()
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            # A small receive buffer, as on a slow path: loopback would otherwise buffer megabytes
            # the fake has not read yet.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SLOW_READ_BUFFER)
        return fault

    async def _read_slowly(
        self, request: web.Request, fault: Fault, rec: RecordedRequest | None
    ) -> bytes | None:
        """The body, read at ``fault.rate`` bytes/s; None when the request was cut short (by the client,
        by ``fault.reset_after`` or by the fake stopping): it stays recorded as "incomplete"."""
        parts: list[bytes] = []
        read = 0
        step = max(1, int(fault.rate * _SLOW_READ_TICK))
        if rec is not None:
            rec.outcome = "incomplete"  # until the whole body is in
        try:
            while chunk := await request.content.read(step):
                parts.append(chunk)
                read += len(chunk)
                if 0 < fault.reset_after <= read or await self._wait_or_stop(len(chunk) / fault.rate):
                    self._abort(request)
                    return None
        except (ConnectionError, ClientPayloadError):
            return None  # the client closed the connection mid-body
        finally:
            if rec is not None:
                rec.raw_body = b"".join(parts)
        raw = b"".join(parts)
        if request.content_length is not None and len(raw) < request.content_length:
            return None
        if rec is not None:
            rec.outcome = "pending"
        return raw

    def _take_token(self, cost: float = 1.0) -> bool:
        assert self.max_rate is not None
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last_refill) * self.max_rate)
        self._last_refill = now
        # a cost above the burst can never be met whole: let it through on a full bucket, in debt
        if self._tokens >= min(cost, self._burst):
            self._tokens -= cost
            return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        rec: RecordedRequest | None = None
        slow = self._take_slow_read(request)
        if slow is None:
            raw = await request.read()
        else:
            if self.record:  # recorded while it is read, so a test sees an upload that never ended
                rec = RecordedRequest(request.method, request.path, dict(request.headers), None, None)
                with self._lock:
                    self._requests.append(rec)
            raw = await self._read_slowly(request, slow, rec)
            if raw is None:
                return web.Response()  # nobody is left to answer
        if self.record and rec is None:
            rec = RecordedRequest(
                request.method, request.path, dict(request.headers), None, None, raw_body=raw
            )
            with self._lock:
                self._requests.append(rec)

        def answer(outcome: str, resp: web.StreamResponse) -> web.StreamResponse:
            if rec is not None:
                rec.outcome = outcome  # set before the response is written
            return resp

        def error(code: str, message: str, status: int | None = None) -> web.StreamResponse:
            return answer(code, _error_response(code, message, status))

        suppression = self._suppression_route(request)
        setup = self._setup_route(request)
        send = request.path == SEND_EMAIL_PATH and request.method == "POST"
        if suppression is None and setup is None and not send:
            return error("UnknownOperationException", "")
        if self.require_auth and not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return error("UnrecognizedClientException", DEFAULT_MESSAGES["UnrecognizedClientException"])
        if setup is not None:  # read once at the relay's start, or by doctor: no faults, no latency
            return self._handle_setup(*setup, answer, error)
        if suppression is not None:
            return await self._handle_suppression(request, suppression, raw, rec, answer, error)

        # Parse before applying faults so the request is recorded in full whatever happens to it.
        body, invalid = _parse_json(raw, rec)
        if invalid is None:
            invalid = self._validate(body, rec)

        wait = self.latency
        fault = None if slow is not None else self._next_fault()  # one fault per request
        if fault is not None:
            response = await self._apply_fault(fault, request, rec, answer, error)
            if response is not None:
                return response
            if fault.kind == "delay":
                wait = 0.0  # the delay replaced the configured latency

        if invalid is not None:
            return error("BadRequestException", invalid)
        cost = _count_destinations(body.get("Destination")) if self.rate_counts == "recipients" else 1
        if self.max_rate is not None and not self._take_token(cost):
            self.throttled += 1
            return error("TooManyRequestsException", DEFAULT_MESSAGES["TooManyRequestsException"])
        if self.count_quota and not self._take_quota(_count_destinations(body.get("Destination"))):
            return error("LimitExceededException", DEFAULT_MESSAGES["LimitExceededException"])
        if wait > 0:
            await asyncio.sleep(wait)

        message_id = new_message_id()
        self.sent += 1
        if rec is not None:
            rec.message_id = message_id
            with self._lock:
                self._message_ids.append(message_id)
        if self._accepted_file is not None:
            self._log_accepted(message_id, body)
        return answer(
            "ok",
            web.Response(
                body=b'{"MessageId":"' + message_id.encode() + b'"}',
                content_type=_JSON,
                headers={"x-amzn-RequestId": str(uuid.uuid4())},
            ),
        )

    def _log_accepted(self, message_id: str, body: dict[str, Any]) -> None:
        # Written before the 200, so a sender that saw the 200 always finds its line (a small
        # unsynced append: the file outlives a killed client, not a killed fake).
        raw = base64.b64decode(body["Content"]["Raw"]["Data"])
        dest = body.get("Destination") or {}
        line = {
            "ses_message_id": message_id,
            "message_id": _header_message_id(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "destinations": [a for key in ("ToAddresses", "CcAddresses", "BccAddresses")
                             for a in (dest.get(key) or [])],
        }
        assert self._accepted_file is not None
        with self._lock:
            self._accepted_file.write(json.dumps(line) + "\n")
            self._accepted_file.flush()

    # ------------------------------------------------------------------ account and setup reads

    @staticmethod
    def _setup_route(request: web.Request) -> tuple[str, str] | None:
        """(operation, name) for GetAccount, GetEmailIdentity and the configuration-set reads."""
        if request.method != "GET":
            return None
        raw_path = request.rel_url.raw_path
        if raw_path == ACCOUNT_PATH:
            return "account", ""
        for prefix, suffix, op in (
            (IDENTITY_PATH, "", "identity"),
            (CONFIGURATION_SET_PATH, "/event-destinations", "event_destinations"),
            (CONFIGURATION_SET_PATH, "", "configuration_set"),
        ):
            if raw_path.startswith(prefix) and raw_path.endswith(suffix):
                name = raw_path[len(prefix) : len(raw_path) - len(suffix)]
                if name and "/" not in name:
                    return op, unquote(name)
        return None

    def _handle_setup(
        self,
        op: str,
        name: str,
        answer: Callable[[str, web.StreamResponse], web.StreamResponse],
        error: Callable[..., web.StreamResponse],
    ) -> web.StreamResponse:
        def ok(payload: dict[str, Any]) -> web.StreamResponse:
            return answer("ok", web.json_response(payload, headers={"x-amzn-RequestId": str(uuid.uuid4())}))

        with self._lock:
            if op == "account":
                if self.account_max_send_rate is None:
                    return error("AccessDeniedException", "not authorized to perform: ses:GetAccount")
                account = json.loads(json.dumps(self.account))  # a copy a test cannot change mid-answer
                quota = {**account.get("SendQuota", {}), "MaxSendRate": self.account_max_send_rate}
                account["SendQuota"] = quota
                return ok(account)
            if op == "identity":
                identity = self.identities.get(name.lower())
                if identity is None:
                    return error("NotFoundException", f"Email identity {name} does not exist.")
                return ok(json.loads(json.dumps(identity)))
            found = self.configuration_sets.get(name)
            if found is None:
                return error("NotFoundException", f"Configuration set <{name}> does not exist.")
            if op == "configuration_set":
                return ok(json.loads(json.dumps(found[0])))
            return ok({"EventDestinations": json.loads(json.dumps(found[1]))})

    # ------------------------------------------------------------------ suppression list

    @staticmethod
    def _suppression_route(request: web.Request) -> tuple[str, str | None] | None:
        """(operation, address) for a suppression-list request, else None."""
        raw_path = request.rel_url.raw_path
        if raw_path == SUPPRESSION_PATH:
            op = {"GET": "list", "PUT": "put"}.get(request.method)
            return None if op is None else (op, None)
        prefix = SUPPRESSION_PATH + "/"
        if raw_path.startswith(prefix) and len(raw_path) > len(prefix) and "/" not in raw_path[len(prefix) :]:
            op = {"GET": "get", "DELETE": "delete"}.get(request.method)
            return None if op is None else (op, unquote(raw_path[len(prefix) :]))
        return None

    async def _apply_fault(
        self,
        fault: Fault,
        request: web.Request,
        rec: RecordedRequest | None,
        answer: Callable[[str, web.StreamResponse], web.StreamResponse],
        error: Callable[..., web.StreamResponse],
    ) -> web.StreamResponse | None:
        """The response a scripted fault gives, or None when the request should go on (a delay)."""
        if fault.kind == "error":
            return error(fault.code, fault.message, fault.status)
        if fault.kind == "http":
            headers = {"Content-Type": fault.content_type}
            return answer(fault.outcome, web.Response(status=fault.status, body=fault.body, headers=headers))
        if fault.kind == "reset":
            self._abort(request)
            # aiohttp silently drops the write of this response to the aborted transport.
            return answer("reset", web.Response())
        if fault.kind == "hang":
            if rec is not None:
                rec.outcome = "hang"
            assert self._stopping is not None
            await self._stopping.wait()
            self._abort(request)
            return web.Response()
        if fault.kind == "delay":
            if await self._wait_or_stop(fault.seconds):
                self._abort(request)
                return answer("aborted", web.Response())
            return None
        raise ValueError(f"unknown fault kind {fault.kind!r}")  # pragma: no cover

    async def _handle_suppression(
        self,
        request: web.Request,
        route: tuple[str, str | None],
        raw: bytes,
        rec: RecordedRequest | None,
        answer: Callable[[str, web.StreamResponse], web.StreamResponse],
        error: Callable[..., web.StreamResponse],
    ) -> web.StreamResponse:
        op, address = route
        query: dict[str, list[str]] = {}
        for key, value in request.rel_url.query.items():
            query.setdefault(key, []).append(value)
        if rec is not None:
            rec.query = query
        body: Any = None
        invalid: str | None = None
        if op == "put":
            body, invalid = _parse_json(raw, rec)
            if invalid is None:
                invalid = self._validate_put(body)

        fault = self._next_fault()
        if fault is not None:
            response = await self._apply_fault(fault, request, rec, answer, error)
            if response is not None:
                return response

        if invalid is not None:
            return error("BadRequestException", invalid)
        if not self._suppression_bucket.take():
            return error("TooManyRequestsException", SUPPRESSION_THROTTLED)

        def ok(payload: dict[str, Any]) -> web.StreamResponse:
            return answer(
                "ok",
                web.Response(
                    body=json.dumps(payload).encode(),
                    content_type=_JSON,
                    headers={"x-amzn-RequestId": str(uuid.uuid4())},
                ),
            )

        if op == "put":
            with self._lock:
                self.suppressed[body["EmailAddress"]] = (body["Reason"], time.time())
            return ok({})
        if op in ("get", "delete"):
            assert address is not None
            with self._lock:
                found = self.suppressed.get(address)
                if found is not None and op == "delete":
                    del self.suppressed[address]
            if found is None:
                return error(
                    "NotFoundException", f"Email address {address} does not exist on your suppression list."
                )
            if op == "delete":
                return ok({})
            reason, stamp = found
            return ok(
                {
                    "SuppressedDestination": {
                        "EmailAddress": address,
                        "Reason": reason,
                        "LastUpdateTime": stamp,
                        "Attributes": {},
                    }
                }
            )
        try:
            return ok(self._list_page(query))
        except _Listing as exc:
            return error("BadRequestException", exc.message)

    @staticmethod
    def _validate_put(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body must be a JSON object."
        address = body.get("EmailAddress")
        if not isinstance(address, str) or not address:
            return "EmailAddress is required."
        if body.get("Reason") not in SUPPRESSION_REASONS:
            return "Reason must be BOUNCE or COMPLAINT."
        return None

    def _list_page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            size = int(query.get("PageSize", [str(MAX_SUPPRESSION_PAGE)])[-1])
        except ValueError:
            raise _Listing("PageSize must be a number.") from None
        if not 1 <= size <= MAX_SUPPRESSION_PAGE:
            raise _Listing(f"PageSize must be between 1 and {MAX_SUPPRESSION_PAGE}.")
        reasons = query.get("Reason") or list(SUPPRESSION_REASONS)
        if any(r not in SUPPRESSION_REASONS for r in reasons):
            raise _Listing("Reason must be BOUNCE or COMPLAINT.")
        start, end = _query_time(query, "StartDate"), _query_time(query, "EndDate")
        offset = 0
        token = query.get("NextToken", [None])[-1]
        if token is not None:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise _Listing("Invalid NextToken.") from None
            if offset < 0:
                raise _Listing("Invalid NextToken.")
        with self._lock:
            matching = [
                (address, reason, stamp)
                for address, (reason, stamp) in sorted(self.suppressed.items())
                if reason in reasons and (start is None or stamp >= start) and (end is None or stamp <= end)
            ]
        page = matching[offset : offset + size]
        payload: dict[str, Any] = {
            "SuppressedDestinationSummaries": [
                {"EmailAddress": address, "Reason": reason, "LastUpdateTime": stamp}
                for address, reason, stamp in page
            ]
        }
        if offset + size < len(matching):
            payload["NextToken"] = base64.urlsafe_b64encode(f"offset:{offset + size}".encode()).decode()
        return payload

    def _validate(self, body: Any, rec: RecordedRequest | None) -> str | None:
        """Return a BadRequestException message, or None. Decodes Raw.Data only when recording."""
        if not isinstance(body, dict):
            return "Request body must be a JSON object."
        content = body.get("Content")
        raw = content.get("Raw") if isinstance(content, dict) else None
        data = raw.get("Data") if isinstance(raw, dict) else None
        if not isinstance(data, str) or not data:
            return "Content.Raw.Data is required."
        if rec is not None:
            try:
                rec.raw_message = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return "Content.Raw.Data is not valid base64."
        try:
            n = _count_destinations(body.get("Destination"))
        except _Invalid as exc:
            return exc.message
        if n == 0:
            return "Missing required recipients: Destination has no To, Cc or Bcc addresses."
        if n > MAX_RECIPIENTS:
            return f"Recipient count exceeds {MAX_RECIPIENTS}."
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.fake_ses", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each successful answer")
    parser.add_argument("--max-rate", type=float, default=None, help="sends/second before 429 throttling")
    parser.add_argument(
        "--rate-counts", choices=("messages", "recipients"), default="messages",
        help="what --max-rate counts: SendEmail requests (default) or their recipients, as SES does",
    )
    parser.add_argument(
        "--account-max-send-rate", type=float, default=None,
        help="GetAccount's SendQuota.MaxSendRate (what max_send_rate: auto reads; default 14)",
    )
    parser.add_argument(
        "--account-max-24-hour-send", type=float, default=-1.0,
        help="GetAccount's SendQuota.Max24HourSend (default -1, unlimited: a benchmark run is never held "
        "by ses.quota_reserve)",
    )
    parser.add_argument("--no-auth", action="store_true", help="do not require a SigV4 Authorization header")
    parser.add_argument(
        "--suppression-rate", type=float, default=1.0, help="suppression-list requests/second before 429"
    )
    parser.add_argument(
        "--accepted-log", type=Path, default=None,
        help="append one JSON line per accepted SendEmail (SES id, Message-ID, sha256, destinations)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeSES(
        latency=args.latency,
        max_rate=args.max_rate,
        require_auth=not args.no_auth,
        record=False,
        suppression_rate=args.suppression_rate if args.suppression_rate > 0 else None,
        accepted_log=args.accepted_log,
        rate_counts=args.rate_counts,
    )
    if args.account_max_send_rate is not None:
        fake.account_max_send_rate = args.account_max_send_rate
    fake.set_send_quota(max_24_hour_send=args.account_max_24_hour_send)
    port = fake.start(args.port)
    print(f"fake_ses listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
        counts = {"received": fake.received, "sent": fake.sent}
        if fake.max_rate is not None:
            counts["throttled"] = fake.throttled
        print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
