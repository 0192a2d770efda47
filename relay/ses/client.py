"""SESv2 SendEmail over a keep-alive aiohttp session, signed by botocore.

Why not boto3 in a thread pool: a pool caps sends in flight at its size, so throughput is capped at
threads / SES latency (measured ~530 msgs/s at 30 ms with 16 threads), and every call pays boto3's
serialisation machinery. Here boto3/botocore still do everything that is AWS's business — the
credentials chain, region and endpoint resolution, SigV4 signing — and the relay does only the part
that is ours: build one JSON body and POST it. Sends in flight are bounded by the HTTP pool size.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions
import botocore.session
from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth

from relay.aws import DEFAULT_REGION
from relay.metrics import RelayMetrics
from relay.sending import Accepted, OutgoingMessage, SendError
from relay.ses import errors
from relay.ses.endpoint import resolve as resolve_endpoint
from relay.ses.rate import RateLimiter, Unlimited, WaitTooLong
from relay.startup import StartupError

log = logging.getLogger("relay.ses")

SEND_EMAIL_PATH = "/v2/email/outbound-emails"
ACCOUNT_PATH = "/v2/email/account"  # GetAccount: the account's send quota, read at start
ACCOUNT_TIMEOUT = 15.0  # seconds; an unreachable endpoint must not stall start-up
# GetAccount is re-read this often (max_send_rate: auto, and the 24-hour quota for ses.quota_reserve).
# SES allows non-send calls at 1/s: one read in 10 minutes is nothing.
ACCOUNT_REFRESH_SECONDS = 600.0
# A hold for the quota ends this long after the next read is due, so that the read has had time to
# answer; when it has not, the next check holds one more grace.
QUOTA_READ_GRACE = 1.0
CREDENTIALS_RETRY_SECONDS = 30.0
# Request bodies larger than this are streamed, and hashed for SigV4 in a thread. It is aiohttp's
# TOO_LARGE_BYTES_BODY: above it aiohttp warns that one bytes write may stall the event loop.
_STREAM_BYTES = 1 << 20
MIN_UPLOAD_RATE = 262144.0  # bytes/s; the default of ses.min_upload_rate (see relay/config.py)
CREDENTIALS_HELP = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "or run with an instance/task role; mail is answered 451 until then (or use --dry-run to try without AWS)"
)


class RequestBody:
    """The SendEmail JSON body as prefix + base64(raw) + suffix.

    Small messages are joined into one bytes object. Large ones are never base64-encoded or joined
    whole: the body is produced chunk by chunk, once to hash it for SigV4 and once while sending, so
    a 40 MB message costs no 53 MB base64 copy and no second copy of that.
    """

    CHUNK = 3 * 256 * 1024  # a multiple of 3: base64 of consecutive chunks is base64 of the whole

    def __init__(self, raw: bytes | bytearray, fields_json: bytes) -> None:
        self.raw = raw
        self.prefix = b'{"Content":{"Raw":{"Data":"'
        self.suffix = b'"}},' + fields_json[1:]

    def __len__(self) -> int:
        return len(self.prefix) + 4 * ((len(self.raw) + 2) // 3) + len(self.suffix)

    def to_bytes(self) -> bytes:
        return b"".join((self.prefix, base64.b64encode(self.raw), self.suffix))

    def chunks(self) -> Iterator[bytes]:
        yield self.prefix
        view = memoryview(self.raw)
        for start in range(0, len(view), self.CHUNK):
            yield base64.b64encode(view[start : start + self.CHUNK])
        yield self.suffix

    def sha256_hex(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


def request_body(
    message: OutgoingMessage, default_configuration_set: str | None, default_tags: dict[str, str]
) -> RequestBody:
    fields: dict[str, Any] = {"Destination": {"ToAddresses": message.recipients}}
    configuration_set = message.configuration_set or default_configuration_set
    if configuration_set:
        fields["ConfigurationSetName"] = configuration_set
    tags = {**default_tags, **message.tags}
    if tags:
        fields["EmailTags"] = [{"Name": name, "Value": value} for name, value in tags.items()]
    if message.from_identity_arn:
        fields["FromEmailAddressIdentityArn"] = message.from_identity_arn
    if message.feedback_identity_arn:
        fields["FeedbackForwardingEmailAddressIdentityArn"] = message.feedback_identity_arn
    if message.list_management:
        options = {"ContactListName": message.list_management.contact_list}
        if message.list_management.topic:
            options["TopicName"] = message.list_management.topic
        fields["ListManagementOptions"] = options
    return RequestBody(message.raw, json.dumps(fields, separators=(",", ":")).encode("ascii"))


def build_request_body(
    message: OutgoingMessage, default_configuration_set: str | None, default_tags: dict[str, str]
) -> bytes:
    """The whole SendEmail JSON body as bytes."""
    return request_body(message, default_configuration_set, default_tags).to_bytes()


def upload_time_limit(body_size: int, min_upload_rate: float, floor: float) -> float:
    """Seconds writing a request body of `body_size` bytes may take: the body at the slowest accepted
    throughput, plus `floor` (the connect limit: a dead path stalls a small write as it stalls a
    connect). A small message keeps a short limit; a big one gets the time its size needs."""
    return floor + body_size / min_upload_rate


class _CallPhases:
    """Which part of one SendEmail call is under way, each with its own time limit.

    connect -> upload (aiohttp asked for the body, so it is connected) -> answer (aiohttp has been
    given the last chunk). One `asyncio.timeout` bounds the call; each phase moves its deadline.

    How the end of the upload is known: the body is an async generator that aiohttp drains into the
    connection, so the generator sees each chunk being taken. Taken is not written (aiohttp hands a
    chunk to the transport after taking it; the kernel sends it later still), so only the safe side
    is claimed: until the last chunk is taken, SES cannot have the whole request and acts only on a
    whole one (a timeout is "not sent", 4.4.1: the client resends); once it is taken SES may get it
    all, even while bytes still sit in buffers ("outcome unknown", 4.4.2). aiohttp's TraceConfig
    (on_request_chunk_sent) would say no more: it too fires before the write, and it is set per
    session rather than per request.

    Only streamed (large) bodies are tracked. A small body is one bytes object that aiohttp writes in
    one go as soon as it is connected, so it has no upload phase worth a limit of its own, and
    sending it through the generator cost ~20 us of CPU a send (measured: +7% on the HTTP side of a
    send), on the path every message takes. It gets connect + answer limits as one, and anything
    after connecting counts as "SES may have it": the cautious side.
    """

    __slots__ = ("_deadline", "_upload_limit", "_answer_limit", "_ended", "phase")

    def __init__(self, deadline: asyncio.Timeout, upload_limit: float, answer_limit: float) -> None:
        self._deadline = deadline
        self._upload_limit = upload_limit
        self._answer_limit = answer_limit
        self._ended = False
        self.phase = "connect"

    def uploading(self) -> None:
        self._move("upload", self._upload_limit)

    def answering(self) -> None:
        self._move("answer", self._answer_limit)

    def end(self) -> None:
        self._ended = True

    def _move(self, phase: str, limit: float) -> None:
        self.phase = phase
        # aiohttp's writer is a task of its own: it may run on after the call timed out or ended.
        if not self._ended and not self._deadline.expired():
            self._deadline.reschedule(asyncio.get_running_loop().time() + limit)


async def _stream(chunks: Iterator[bytes], phases: _CallPhases) -> AsyncIterator[bytes]:
    """The request body for aiohttp, telling `phases` how far aiohttp has taken it."""
    chunk = next(chunks)
    for following in chunks:
        if phases.phase == "connect":
            phases.uploading()
        yield chunk
        chunk = following
    phases.answering()  # the last chunk: from here on SES may get the whole request
    yield chunk


class _Request:
    """What SigV4Auth reads and writes of a request, without AWSRequest's email.message-based headers
    (which were most of the ~80-350 us botocore spent signing each send)."""

    __slots__ = ("method", "url", "body", "params", "context", "headers")

    def __init__(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.body = body
        self.params: dict[str, str] = {}
        self.context: dict[str, Any] = {}
        self.headers = headers  # botocore looks headers up by their canonical spelling, as we write them


class _HeadersToSign(dict[str, str]):
    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _SigV4(SigV4Auth):
    """botocore's SigV4 signer with two per-request costs hoisted; the canonical request, string to
    sign and signature are still botocore's (a test checks the result against stock SigV4Auth).

    - headers_to_sign: a dict instead of an email.message (every header name here is unique);
    - signature: the signing key depends only on the secret, the day, region and service, so it is
      derived once a day instead of with four HMACs per request.
    """

    _key_scope: tuple[str, str, str, str] | None = None
    _key = b""

    def headers_to_sign(self, request: Any) -> _HeadersToSign:
        signed = _HeadersToSign()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower not in SIGNED_HEADERS_BLACKLIST:
                signed[lower] = value
        return signed

    def signature(self, string_to_sign: str, request: Any) -> str:
        scope = (
            self.credentials.secret_key,
            request.context["timestamp"][0:8],
            self._region_name,
            self._service_name,
        )
        if scope != self._key_scope:
            key = f"AWS4{scope[0]}".encode()
            for part in (*scope[1:], "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key_scope, self._key = scope, key
        return hmac.new(self._key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _error_code(headers: Any, body: dict[str, Any]) -> str:
    code = headers.get("x-amzn-ErrorType") or body.get("__type") or body.get("code") or body.get("Code") or ""
    # "MessageRejected:http://internal.amazon.com/..." or "com.amazonaws...#MessageRejected"
    return str(code).split(":", 1)[0].rsplit("#", 1)[-1]


class SendQuota:
    """SES's 24-hour sending quota as this relay estimates it: GetAccount's Max24HourSend and
    SentLast24Hours at the last read, plus the recipients the relay sent since (SES counts recipients).

    Every error is on the side of holding early, never of collecting "quota exceeded": between reads
    the estimate only grows (SES's own count also falls as old sends leave the 24-hour window), a send
    counts from the moment it starts, and one still in flight when GetAccount is read is added on top
    of SES's number even if SES had counted it already.
    """

    __slots__ = ("limit", "_sent_at_read", "_counted", "_in_flight", "_counted_at_read")

    def __init__(self) -> None:
        self.limit: float | None = None  # Max24HourSend; None: unknown, or unlimited (SES says -1)
        self._sent_at_read = 0.0
        self._counted = 0.0  # recipients sent or being sent by this relay since it started
        self._in_flight = 0.0  # of which SES has not answered yet
        self._counted_at_read = 0.0

    def sending(self, recipients: int) -> None:
        self._counted += recipients
        self._in_flight += recipients

    def done(self, recipients: int, *, taken: bool) -> None:
        """SES answered; `taken` False: it surely did not take them (given back)."""
        self._in_flight -= recipients
        if not taken:
            self._counted -= recipients

    def used_up(self) -> None:
        """SES answered "daily message quota exceeded": whatever the estimate said (another sender
        on the account, a stale read), nothing is left until GetAccount is read again."""
        if self.limit is not None:
            self._sent_at_read = self.limit
            # Sends still in flight (this one included: its done() is still to come) count from here.
            self._counted_at_read = self._counted - self._in_flight

    def mark(self) -> float:
        """Taken just before GetAccount is sent: the sends SES may have counted in its answer."""
        return self._counted - self._in_flight

    def update(self, send_quota: Any, mark: float) -> None:
        """GetAccount's SendQuota, read after `mark()` returned `mark`."""
        quota = send_quota if isinstance(send_quota, dict) else {}
        limit = _number(quota.get("Max24HourSend"))
        self.limit = limit if limit is not None and limit >= 0 else None
        self._sent_at_read = _number(quota.get("SentLast24Hours")) or 0.0
        self._counted_at_read = mark

    def remaining(self) -> float | None:
        """Recipients left in the 24 hours; None: no known limit."""
        if self.limit is None:
            return None
        return self.limit - self._sent_at_read - (self._counted - self._counted_at_read)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no number either


class AccountReadError(RuntimeError):
    """GetAccount answered with an error: the HTTP status and SES's error code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} {code}".rstrip())
        self.status = status
        self.code = code


class SesSender:
    """`Sender` for Amazon SES (or any SESv2-compatible endpoint such as moto)."""

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        configuration_set: str | None,
        tags: dict[str, str],
        max_send_rate: float | str | None,
        connect_timeout: float,
        request_timeout: float,
        max_connections: int,
        metrics: RelayMetrics,
        min_upload_rate: float = MIN_UPLOAD_RATE,
        max_rate_wait: float | None = None,
        quota_reserve: float = 0.0,
    ) -> None:
        """`quota_reserve`: the share of the 24-hour quota `quota_hold` keeps unused (0: no hold)."""
        self._region_setting = region
        self._endpoint_setting = endpoint_url
        self._configuration_set = configuration_set
        self._tags = dict(tags)
        self._max_send_rate = max_send_rate
        # The call is bounded in _post once a pool slot is held (so waiting for a free connection is
        # never mistaken for SES being down), phase by phase: connect, upload, answer (_CallPhases).
        # No sock_read: the answer limit is ours, started once the whole request is handed over.
        # `connect` covers DNS and TLS too; our pool slots match the connector's, so it never
        # includes waiting for a free connection.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._connect_timeout = connect_timeout
        self._min_upload_rate = min_upload_rate
        self._answer_timeout = request_timeout
        self._max_rate_wait = max_rate_wait
        self._max_connections = max_connections
        self._metrics = metrics
        self._duration_ok = metrics.ses_request_duration.labels("ok")
        self._duration_error = metrics.ses_request_duration.labels("error")
        self._boto_session: botocore.session.Session | None = None
        self._credentials: Any = None
        self._frozen: Any = None
        self._signer: _SigV4 | None = None  # one per frozen credentials: it caches the signing key
        self._credentials_checked_at = 0.0
        self._credentials_lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._limiter: RateLimiter | Unlimited = Unlimited()
        self._refresh_task: asyncio.Task | None = None
        self._quota_reserve = quota_reserve
        self._quota = SendQuota()
        self._account_read_due = 0.0  # time.monotonic() of the next GetAccount read
        self._account_unreadable = False  # logged once until a read succeeds again
        self._account_read_once = False
        metrics.ses_quota_remaining.set_function(self._quota_gauge)
        self.region = ""
        self.url = ""
        self._base_url = ""
        self._host = ""
        self._signing_name = "ses"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The credentials chain may query instance metadata over the network: never on the loop.
        await loop.run_in_executor(None, self._resolve)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=20, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        self._slots = asyncio.Semaphore(self._max_connections)
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
        )
        await self._configure_rate()
        # The session stays only while credentials are still to be found.
        if self._credentials is not None:
            self._boto_session = None

    def _resolve(self) -> None:
        try:
            # botocore's session is what boto3.Session wraps (same credentials chain, profiles and
            # region settings) without importing boto3's resource and S3 transfer layers (~2 MB).
            session = botocore.session.Session()
            if self._region_setting:
                session.set_config_variable("region", self._region_setting)
            region = session.get_config_variable("region")
            if not region:
                region = DEFAULT_REGION
                log.warning("no AWS region configured (ses.region, AWS_REGION, profile); using %s", region)
            credentials = session.get_credentials()
        except botocore.exceptions.ProfileNotFound as exc:
            raise StartupError(f"AWS profile not found: {exc.kwargs.get('profile')}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StartupError(f"AWS configuration error: {exc}") from None
        endpoint = resolve_endpoint(region, self._endpoint_setting)
        self._boto_session = session
        self.region = endpoint.region
        self._base_url = endpoint.url
        self.url = endpoint.url + SEND_EMAIL_PATH
        self._host = _canonical_host(self.url)
        self._signing_name = endpoint.signing_name
        self._credentials_checked_at = time.monotonic()
        if credentials is None:
            log.warning(CREDENTIALS_HELP, extra={"fields": {"event": "no_credentials"}})
        else:
            self._credentials = credentials
            self._frozen = credentials.get_frozen_credentials()
            log.info("AWS credentials from %s; SES endpoint %s", credentials.method, self.url)

    async def _configure_rate(self) -> None:
        auto = self._max_send_rate == "auto"
        rate = self._max_send_rate
        if auto:
            # Read before the first send: the limit must be there from the start.
            rate = _send_rate(await self._read_account())
        if rate:
            self._limiter = RateLimiter(float(rate), max_wait=self._max_rate_wait)
            log.info("local send-rate limit: %s recipients/s", rate)
        if auto or self._quota_reserve > 0:
            # The account's numbers change: the quota as the day rolls on, the rate as SES raises it
            # or a review lowers it. Without auto, the first quota read runs in the background.
            self._refresh_task = asyncio.create_task(
                self._refresh_account(read_now=not auto), name="ses-account"
            )

    async def _refresh_account(self, *, read_now: bool) -> None:
        # Read at every turn, not bound at import: a test shortens it.
        if not read_now:
            self._account_read_due = time.monotonic() + ACCOUNT_REFRESH_SECONDS
            await asyncio.sleep(ACCOUNT_REFRESH_SECONDS)
        while True:
            send_quota = await self._read_account()
            self._account_read_due = time.monotonic() + ACCOUNT_REFRESH_SECONDS
            rate = _send_rate(send_quota)
            if rate and self._max_send_rate == "auto":
                if isinstance(self._limiter, RateLimiter):
                    if rate != self._limiter.ceiling:
                        log.info("SES send rate is now %s recipients/s", rate)
                    self._limiter.set_ceiling(rate)
                else:
                    self._limiter = RateLimiter(rate, max_wait=self._max_rate_wait)
                    log.info("local send-rate limit: %s recipients/s", rate)
            await asyncio.sleep(ACCOUNT_REFRESH_SECONDS)

    async def _read_account(self) -> dict[str, Any] | None:
        """GetAccount's SendQuota (the quota estimate updated from it), or None when it cannot be read:
        then the last numbers stay, and sending goes on. Logged once until a read succeeds again."""
        if self._credentials is None:
            return None
        mark = self._quota.mark()
        try:
            send_quota = (await self.get_account())["SendQuota"]
            if not isinstance(send_quota, dict):
                raise TypeError(f"SendQuota is {send_quota!r}")
        except Exception as exc:  # noqa: BLE001 - any failure just means "keep what we know"
            if not self._account_unreadable:
                self._account_unreadable = True
                if self._account_read_once:
                    going_on = "keeping the numbers last read"
                elif self._max_send_rate == "auto":
                    going_on = "no local rate limit (throttled sends are answered 451) and no quota hold yet"
                else:
                    going_on = "no 24-hour quota hold until it can be read"
                log.warning(
                    "could not read the SES account (GetAccount: %s); %s",
                    " ".join(str(exc).split())[:200] or exc.__class__.__name__,
                    going_on,
                    extra={"fields": {"event": "ses_account_unreadable"}},
                )
            return None
        if self._account_unreadable:
            self._account_unreadable = False
            log.info("SES GetAccount readable again")
        self._account_read_once = True
        self._quota.update(send_quota, mark)
        return send_quota

    # -- the 24-hour quota -----------------------------------------------------------------------

    def quota_remaining(self) -> float | None:
        """Recipients left in the 24-hour quota as estimated now; None: unknown or unlimited."""
        return self._quota.remaining()

    def quota_hold(self, recipients: int) -> float | None:
        """None: send `recipients` now (the quota has room beyond ses.quota_reserve, or is unknown).
        Else the seconds until GetAccount has been read again: the earliest it can show room."""
        if self._quota_reserve <= 0:
            return None
        remaining = self._quota.remaining()
        if remaining is None or self._quota.limit is None:
            return None
        if remaining >= recipients + self._quota_reserve * self._quota.limit:
            return None
        return max(0.0, self._account_read_due - time.monotonic()) + QUOTA_READ_GRACE

    def _quota_gauge(self) -> float:
        remaining = self._quota.remaining()
        return float("nan") if remaining is None else remaining

    async def get_account(self) -> dict[str, Any]:
        """SESv2 GetAccount, signed like the sends (also used by `ses-relay doctor`)."""
        assert self._http is not None, "SesSender.start() was not called"
        url = self._base_url + ACCOUNT_PATH
        headers = self._signed_headers(b"", await self._current_credentials(), method="GET", url=url)
        async with asyncio.timeout(ACCOUNT_TIMEOUT):
            async with self._http.get(url, headers=headers) as response:
                payload = await response.read()
        if response.status != 200:
            data = json.loads(payload) if payload.startswith(b"{") else {}
            raise AccountReadError(response.status, _error_code(response.headers, data))
        return dict(json.loads(payload))

    @property
    def credentials_method(self) -> str | None:
        """Where botocore found the credentials ("env", "shared-credentials-file", "iam-role", ...)."""
        return None if self._credentials is None else str(self._credentials.method)

    @property
    def send_rate(self) -> float:
        """The local send-rate limit now (recipients/s; below the configured one after a 429); 0: none."""
        return float(self._limiter.rate or 0.0)

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def readiness(self) -> tuple[bool, str]:
        if self._credentials is None:
            return False, "no AWS credentials"
        if self._http is None:
            return False, "not started"
        return True, "ok"

    # -- sending ---------------------------------------------------------------------------------

    async def _current_credentials(self) -> Any:
        credentials = self._credentials
        if credentials is None:
            async with self._credentials_lock:
                if (
                    self._credentials is None
                    and time.monotonic() - self._credentials_checked_at > CREDENTIALS_RETRY_SECONDS
                ):
                    self._credentials_checked_at = time.monotonic()
                    session = self._boto_session
                    assert session is not None  # kept by start() while credentials are missing
                    found = await asyncio.get_running_loop().run_in_executor(None, session.get_credentials)
                    if found is not None:
                        self._frozen = await asyncio.get_running_loop().run_in_executor(
                            None, found.get_frozen_credentials
                        )
                        self._credentials = found
                        log.info("AWS credentials found (%s)", found.method)
            if self._credentials is None:
                raise errors.no_credentials("no AWS credentials")
            return self._frozen
        refresh_needed = getattr(credentials, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            # Temporary credentials near expiry: botocore refreshes them with a network call.
            async with self._credentials_lock:
                if refresh_needed():
                    self._frozen = await asyncio.get_running_loop().run_in_executor(
                        None, credentials.get_frozen_credentials
                    )
        return self._frozen

    def _signed_headers(
        self,
        body: bytes,
        credentials: Any,
        payload_sha256: str | None = None,
        *,
        method: str = "POST",
        url: str | None = None,
    ) -> dict[str, str]:
        headers = {"Host": self._host}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        if payload_sha256 is not None:
            # botocore signs this header's value instead of hashing a body it does not have.
            headers["X-Amz-Content-SHA256"] = payload_sha256
        signer = self._signer
        if signer is None or signer.credentials is not credentials:
            signer = self._signer = _SigV4(credentials, self._signing_name, self.region)
        signer.add_auth(_Request(method, url or self.url, body, headers))
        return headers

    async def send(self, message: OutgoingMessage) -> Accepted:
        try:
            # SES counts recipients, not messages, against MaxSendRate and the 24-hour quota.
            waited = await self._limiter.acquire(len(message.recipients))
        except WaitTooLong as exc:
            self._metrics.rate_limiter_refusals.inc()
            raise errors.rate_wait(str(exc)) from None
        if waited:
            self._metrics.rate_limiter_wait.observe(waited)
        credentials = await self._current_credentials()
        body = request_body(message, self._configuration_set, self._tags)
        chunks: bytes | Iterator[bytes]
        if len(body) > _STREAM_BYTES:
            digest = await asyncio.get_running_loop().run_in_executor(None, body.sha256_hex)
            headers = self._signed_headers(b"", credentials, digest)
            headers["Content-Length"] = str(len(body))
            chunks = body.chunks()
        else:
            chunks = body.to_bytes()
            headers = self._signed_headers(chunks, credentials)
        started = time.perf_counter()
        self._metrics.ses_in_flight.inc()
        # Counted against the quota before the call, so that sends in flight together cannot all see
        # the same room; given back when SES surely did not take it.
        recipients = len(message.recipients)
        self._quota.sending(recipients)
        taken = True
        try:
            message_id = await self._post(chunks, len(body), headers)
        except SendError as exc:
            taken = exc.code == errors.OUTCOME_UNKNOWN_CODE
            self._duration_error.observe(time.perf_counter() - started)
            self._metrics.ses_errors.labels(errors.metric_code(exc.code)).inc()
            if errors.is_rate_throttle(exc):
                self._limiter.throttled()
            elif exc.code == errors.DAILY_QUOTA_CODE:
                self._quota.used_up()  # fallback queues and the spool holds without asking SES again
            raise
        finally:
            self._metrics.ses_in_flight.dec()
            self._quota.done(recipients, taken=taken)
        self._limiter.succeeded()
        self._duration_ok.observe(time.perf_counter() - started)
        self._metrics.messages_sent.inc()
        self._metrics.message_bytes_sent.inc(len(message.raw))
        self._metrics.recipients_sent.inc(len(message.recipients))
        return Accepted(errors.SENT.format(message_id=message_id), ses_message_id=message_id)

    async def _post(self, chunks: bytes | Iterator[bytes], size: int, headers: dict[str, str]) -> str:
        """POST the body: bytes (small: connect and answer limits as one) or chunks (streamed: each
        phase limited on its own, see _CallPhases)."""
        assert self._http is not None, "SesSender.start() was not called"
        assert self._slots is not None
        upload_limit = upload_time_limit(size, self._min_upload_rate, self._connect_timeout)
        phases: _CallPhases | None = None
        first_limit = self._connect_timeout
        if isinstance(chunks, bytes):
            first_limit += self._answer_timeout
        try:
            async with self._slots, asyncio.timeout(first_limit) as deadline:
                body: bytes | AsyncIterator[bytes]
                if isinstance(chunks, bytes):
                    body = chunks
                else:
                    phases = _CallPhases(deadline, upload_limit, self._answer_timeout)
                    body = _stream(chunks, phases)
                try:
                    async with self._http.post(self.url, data=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                        response_headers = response.headers
                finally:
                    if phases is not None:
                        phases.end()
        except aiohttp.ClientConnectorError as exc:
            raise errors.not_sent(f"cannot connect to {self._host}: {exc.os_error or exc}") from None
        except aiohttp.ConnectionTimeoutError:
            raise errors.not_sent(f"timed out connecting to {self._host}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            phase = phases.phase if phases is not None else "answer"  # a small body: see _CallPhases
            if phase == "answer":
                # The whole request was handed over (or may have been): SES may have accepted it.
                raise errors.outcome_unknown(f"{exc.__class__.__name__}: {exc}") from None
            if not isinstance(exc, TimeoutError):
                reason = f"{exc.__class__.__name__} before the whole request was written: {exc}"
                raise errors.not_sent(reason) from None
            if phase == "connect":
                raise errors.not_sent(f"timed out connecting to {self._host}") from None
            raise errors.upload_timeout(
                f"{size} bytes not written within {upload_limit:.1f} s (ses.min_upload_rate)"
            ) from None
        try:
            data = json.loads(payload) if payload else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status == 200 and data.get("MessageId"):
            return str(data["MessageId"])
        if status == 200:
            # Not SES (a proxy page, a wrong endpoint_url): we cannot tell whether anything was sent.
            raise errors.outcome_unknown(f"HTTP 200 without a MessageId: {payload[:100]!r}")
        code = _error_code(response_headers, data)
        text = str(data.get("message") or data.get("Message") or payload[:200].decode("utf-8", "replace"))
        raise errors.classify_http_error(status, code, text)


def _send_rate(send_quota: dict[str, Any] | None) -> float | None:
    """GetAccount's MaxSendRate; None (no local limit) when it is missing or not a rate."""
    rate = _number((send_quota or {}).get("MaxSendRate"))
    return rate if rate is not None and rate > 0 else None


def _canonical_host(url: str) -> str:
    """Host header value as botocore signs it: the port only when it is not the scheme's default."""
    parts = urlsplit(url)
    if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
        return parts.hostname or ""
    return parts.netloc
