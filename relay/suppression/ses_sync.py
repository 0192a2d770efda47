"""Copy Amazon SES's account-level suppression list into the local store, and push to it.

SES throttles the suppression-list APIs at about one request per second, and an account may hold
millions of addresses, so a full pull can take hours. It is therefore paced (``rate`` requests per
second, counted from the end of the previous response so the gap at SES's end is never shorter),
retried with bounded exponential backoff on throttling and transient errors, and resumable: after
each page is committed to the store the NextToken is saved to ``state_path``, a rerun continues from
there, and the file is removed when the pull completes. Writing a page is an upsert, so redoing the
page that was in flight when a run stopped is harmless.

All boto3 calls (and the client factory, which may resolve credentials over the network) run on a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from relay.aws import DEFAULT_REGION
from relay.backoff import Backoff
from relay.files import atomic_write
from relay.suppression.base import Reason, SuppressionEntry, SuppressionStore

__all__ = [
    "SyncError",
    "SyncResult",
    "push_to_ses",
    "sesv2_client_factory",
    "sync_from_ses",
]

log = logging.getLogger("relay.suppression.ses_sync")

SOURCE = "ses-sync"
MAX_PAGE_SIZE = 1000  # SES's limit for ListSuppressedDestinations
MAX_TRIES = 5  # attempts per request on throttling / transient errors
BACKOFF_SECONDS = 1.0  # first retry delay; doubles each time (1, 2, 4, 8 s)
BACKOFF_CAP_SECONDS = 60.0  # only reached with a larger max_tries
STATE_VERSION = 1
SES_REASONS = (Reason.BOUNCE.value, Reason.COMPLAINT.value)

_TRANSIENT_NETWORK = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)


class SyncError(Exception):
    """The SES call failed for good (after retries, or not retryable); one-line reason."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SyncResult:
    pages: int = 0  # pages fetched and written in this run
    imported: int = 0  # entries written in this run
    skipped: int = 0  # summaries without an address or with a reason we do not know
    resumed: bool = False  # this run continued from a saved NextToken


def sesv2_client_factory(region: str | None, endpoint_url: str | None) -> Callable[[], Any]:
    """A `client_factory` for the relay's config (``ses.region``, ``ses.endpoint_url``).

    Resolved like the sender does it (boto3's chain, us-east-1 if nothing is configured). botocore's
    own retries are off: this module paces and retries itself, and a hidden retry would break the pacing.
    """

    def factory() -> Any:
        import boto3
        import botocore.config

        session = boto3.Session(region_name=region)
        return session.client(
            "sesv2",
            region_name=session.region_name or DEFAULT_REGION,
            endpoint_url=endpoint_url,
            config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    return factory


class _Caller:
    """Runs boto3 calls on a worker thread, paced and retried."""

    def __init__(self, client: Any, rate: float | None, max_tries: int, backoff: float) -> None:
        self._client = client
        self._interval = 1.0 / rate if rate else 0.0
        self._max_tries = max_tries
        self._backoff = Backoff(backoff, BACKOFF_CAP_SECONDS)  # no jitter: one caller, paced anyway
        self._last_response: float | None = None
        self.throttled = 0

    async def _pace(self) -> None:
        if self._last_response is not None:
            delay = self._last_response + self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        method = getattr(self._client, operation)
        for attempt in range(1, self._max_tries + 1):
            await self._pace()
            try:
                return await loop.run_in_executor(None, functools.partial(method, **params))
            except botocore.exceptions.ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                text = f"{operation}: {code or status} {error.get('Message', '')}".strip()
                throttled = code in ("TooManyRequestsException", "ThrottlingException") or status == 429
                self.throttled += throttled
                if not (throttled or status >= 500) or attempt == self._max_tries:
                    raise SyncError(text, code) from None
            except _TRANSIENT_NETWORK as exc:
                text = f"{operation}: {exc}"
                if attempt == self._max_tries:
                    raise SyncError(text) from None
            except botocore.exceptions.NoCredentialsError:
                raise SyncError(
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                    "or run with an instance/task role"
                ) from None
            except botocore.exceptions.BotoCoreError as exc:
                raise SyncError(f"{operation}: {exc}") from None
            finally:
                self._last_response = time.monotonic()
            delay = self._backoff.delay(attempt)
            log.warning("%s; retry %d/%d in %.1fs", text, attempt, self._max_tries - 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


# --- state file ---------------------------------------------------------------------------------


def _load_state(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable sync state %s (%s); starting from the beginning", path, exc)
        return None
    token = data.get("next_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        log.warning("ignoring sync state %s without a NextToken; starting from the beginning", path)
        return None
    return token


def _save_state(path: Path, token: str) -> None:
    """Atomically and durably replace the state file (relay.files.atomic_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": STATE_VERSION, "next_token": token, "saved_at": time.time()}
    atomic_write(path, json.dumps(data).encode("utf-8"))


def _remove_state(path: Path) -> None:
    # (path.tmp: the temporary file name used before relay.files, in case one was left behind)
    for p in (path, path.with_name(path.name + ".tmp")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# --- sync ---------------------------------------------------------------------------------------


def _entries(summaries: Any, result: SyncResult) -> list[SuppressionEntry]:
    entries = []
    now = time.time()
    for item in summaries or ():
        address = item.get("EmailAddress")
        reason = item.get("Reason")
        if not isinstance(address, str) or not address.strip() or reason not in SES_REASONS:
            result.skipped += 1
            log.warning("skipping suppressed destination %r with reason %r", address, reason)
            continue
        updated = item.get("LastUpdateTime")  # boto3 parses it into an aware datetime
        if hasattr(updated, "timestamp"):
            created_at = updated.timestamp()
        elif isinstance(updated, int | float):
            created_at = float(updated)
        else:
            created_at = now
        entries.append(SuppressionEntry(address.strip(), Reason(reason), SOURCE, created_at))
    return entries


async def sync_from_ses(
    store: SuppressionStore,
    client_factory: Callable[[], Any],
    *,
    state_path: Path | None,
    rate: float = 1.0,
    progress: Callable[[int], None] | None = None,
    page_size: int = MAX_PAGE_SIZE,
    max_tries: int = MAX_TRIES,
    backoff: float = BACKOFF_SECONDS,
) -> SyncResult:
    """Pull SES's suppression list (ListSuppressedDestinations) into `store`, one page per transaction.

    `rate`: at most this many requests per second. `state_path`: where the NextToken is kept between
    pages (None: not resumable). `progress(entries_written_this_run)` after each page. Raises
    SyncError when SES keeps failing; the state file then lets a rerun continue.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    loop = asyncio.get_running_loop()
    result = SyncResult()
    token: str | None = None
    if state_path is not None:
        token = await loop.run_in_executor(None, _load_state, state_path)
        if token is not None:
            result.resumed = True
            log.info("resuming the SES suppression-list sync from %s", state_path)
    try:
        client = await loop.run_in_executor(None, client_factory)
    except botocore.exceptions.BotoCoreError as exc:
        raise SyncError(f"AWS configuration error: {exc}") from None
    try:
        caller = _Caller(client, rate, max_tries, backoff)
        return await _sync(store, caller, state_path, page_size, progress, token, result)
    finally:
        await _close(client)


async def _close(client: Any) -> None:
    close = getattr(client, "close", None)  # botocore >= 1.33: close the connection pool
    if close is not None:
        await asyncio.get_running_loop().run_in_executor(None, close)


async def _sync(
    store: SuppressionStore,
    caller: _Caller,
    state_path: Path | None,
    page_size: int,
    progress: Callable[[int], None] | None,
    token: str | None,
    result: SyncResult,
) -> SyncResult:
    loop = asyncio.get_running_loop()
    first = True
    while True:
        params: dict[str, Any] = {"PageSize": page_size}
        if token is not None:
            params["NextToken"] = token
        try:
            response = await caller.call("list_suppressed_destinations", **params)
        except SyncError as exc:
            if first and result.resumed and exc.code == "BadRequestException":
                # A saved token can expire; starting over is only slower, never wrong.
                log.warning("SES refused the saved NextToken (%s); starting from the beginning", exc)
                token, first = None, False
                continue
            raise
        first = False
        entries = _entries(response.get("SuppressedDestinationSummaries"), result)
        if entries:
            result.imported += await store.put_many(entries)
        result.pages += 1
        token = response.get("NextToken") or None
        if state_path is not None:
            if token is None:
                await loop.run_in_executor(None, _remove_state, state_path)
            else:
                await loop.run_in_executor(None, _save_state, state_path, token)
        if progress is not None:
            progress(result.imported)
        if token is None:
            return result


async def push_to_ses(
    client_factory: Callable[[], Any],
    address: str,
    reason: str,
    *,
    max_tries: int = MAX_TRIES,
    backoff: float = BACKOFF_SECONDS,
) -> None:
    """Add `address` to SES's account-level suppression list (PutSuppressedDestination).

    `reason` is BOUNCE or COMPLAINT (SES has no MANUAL). Retries throttling like the sync does.
    """
    reason = reason.strip().upper()
    if reason not in SES_REASONS:
        raise ValueError(f"SES suppression reason must be BOUNCE or COMPLAINT, not {reason!r}")
    address = address.strip()
    if not address:
        raise ValueError("empty address")
    loop = asyncio.get_running_loop()
    try:
        client = await loop.run_in_executor(None, client_factory)
    except botocore.exceptions.BotoCoreError as exc:
        raise SyncError(f"AWS configuration error: {exc}") from None
    try:
        await _Caller(client, None, max_tries, backoff).call(
            "put_suppressed_destination", EmailAddress=address, Reason=reason
        )
    finally:
        await _close(client)
