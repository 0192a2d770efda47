"""Bulk import and export of the suppression list: SES-compatible CSV and JSON lines.

CSV is Amazon SES's bulk-import format: a header ``emailAddress,reason`` and one row per address,
reason ``BOUNCE`` or ``COMPLAINT`` (any case; ``MANUAL`` is our extension). A file without a header
is accepted when its first line looks like an address. Extra columns named ``source``,
``created_at``, ``feedback_id`` and ``detail`` (written by ``export --full``) are read when present;
other columns are ignored.

JSON lines: one object per line with ``address`` (alias ``emailAddress``), ``reason`` and optionally
``source``, ``created_at`` (unix seconds or ISO 8601), ``feedback_id`` and ``detail``.

Import streams the input: the file is parsed one batch at a time on a worker thread (never on the
event loop, never whole) and each batch is written with one ``store.put_many`` call (one sqlite
transaction). A row that fails validation is skipped and reported as ``line N: reason``. Importing
is an upsert, so re-running an interrupted import is safe.

CSV is parsed line by line (the ``csv`` module only for lines containing a quote), so a stray quote
can never swallow the rows after it; addresses cannot contain line breaks, and ``export --full``
writes ``detail`` with line breaks folded to spaces for the same reason (JSON lines is lossless).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal

from relay.addresses import AddressError, check_address
from relay.suppression.base import Reason, SuppressionEntry, SuppressionStore

__all__ = ["CSV_HEADER", "ImportResult", "export_entries", "import_entries", "guess_format"]

Format = Literal["csv", "jsonl"]

MAX_ERRORS = 20  # errors kept in ImportResult.errors; all bad rows are counted in `skipped`
DEFAULT_BATCH = 50_000
CSV_HEADER = ("emailAddress", "reason")
CSV_FULL_HEADER = ("emailAddress", "reason", "source", "created_at", "feedback_id", "detail")

_REASONS = {r.value: r for r in Reason}
# The common case (dot-atom local part of at most 64 characters, an all-LDH domain with at least two
# labels of at most 63 characters, no leading or trailing hyphen) in one match; it accepts only
# addresses that check_address accepts too, and anything else goes to check_address for the verdict
# and its reason. Saves most of the per-row cost of a big import.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_COMMON_ADDRESS = re.compile(rf"(?=[^@]{{1,64}}@){_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})+")
_MAX_ADDRESS = 254
# Header names (lower-cased, without "_"/"-"/spaces) -> our field.
_COLUMN_ALIASES = {
    "emailaddress": "address",
    "address": "address",
    "email": "address",
    "reason": "reason",
    "source": "source",
    "createdat": "created_at",
    "feedbackid": "feedback_id",
    "detail": "detail",
}


@dataclass
class ImportResult:
    imported: int = 0  # rows written (a duplicate address counts each time; the last one wins)
    skipped: int = 0  # rows refused (blank lines and the header are neither)
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS, "line N: reason"


def guess_format(name: str | Path) -> Format:
    """``jsonl`` for *.jsonl / *.ndjson / *.json, else ``csv`` (for the CLI's default)."""
    return "jsonl" if str(name).lower().endswith((".jsonl", ".ndjson", ".json")) else "csv"


class _Row(Exception):
    """A bad row; the message is the reason (the line number is added by the caller)."""


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise _Row("missing address")
    address = value.strip()
    if len(address) <= _MAX_ADDRESS and _COMMON_ADDRESS.fullmatch(address):
        return address
    if not address:
        raise _Row("missing address")
    try:
        check_address(address)
    except AddressError as exc:
        # "553 5.1.3 Address has no @domain part" -> the part after the SMTP codes
        raise _Row(f"invalid address {_show(address)}: {exc.reply.split(' ', 2)[-1]}") from None
    return address


def _reason(value: Any) -> Reason:
    if not isinstance(value, str) or not value.strip():
        raise _Row("missing reason")
    reason = _REASONS.get(value.strip().upper())
    if reason is None:
        raise _Row(f"invalid reason {_show(value.strip())} (BOUNCE, COMPLAINT or MANUAL)")
    return reason


def _created_at(value: Any, now: float) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return now
    if isinstance(value, bool):
        raise _Row("invalid created_at")
    if isinstance(value, int | float):
        stamp = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            stamp = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
            except ValueError:
                raise _Row(f"invalid created_at {_show(text)}") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            stamp = parsed.timestamp()
    else:
        raise _Row("invalid created_at")
    if not math.isfinite(stamp) or stamp < 0:
        raise _Row("invalid created_at")
    return stamp


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Row(f"invalid {name}")
    return value or None


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    """A BOM at the start of an already-decoded text stream is not part of the first line."""
    it = iter(lines)
    for first in it:
        yield first.removeprefix("\ufeff")
        yield from it


class _Parser:
    """Turns lines into entries; counts and records bad rows. Runs on a worker thread."""

    def __init__(self, lines: Iterable[str], fmt: Format, source: str, result: ImportResult) -> None:
        self._lines = _without_bom(lines)
        self._source = source
        self._result = result
        self._now = time.time()
        self.entries: Iterator[SuppressionEntry] = self._csv() if fmt == "csv" else self._jsonl()

    def _bad(self, lineno: int, reason: str) -> None:
        self._result.skipped += 1
        if len(self._result.errors) < MAX_ERRORS:
            self._result.errors.append(f"line {lineno}: {reason}")

    def next_batch(self, size: int) -> list[SuppressionEntry]:
        return list(islice(self.entries, size))

    # -- CSV ------------------------------------------------------------------------------------

    @staticmethod
    def _fields(line: str) -> list[str]:
        if '"' in line:
            return next(csv.reader((line,)), [])
        return line.rstrip("\r\n").split(",")

    def _csv(self) -> Iterator[SuppressionEntry]:
        columns: dict[str, int] | None = None
        simple = False  # exactly emailAddress,reason: the fast path
        ai = ri = need = 0
        source, now = self._source, self._now
        for lineno, line in enumerate(self._lines, 1):
            if not line.strip():
                continue
            try:
                fields = self._fields(line)
            except csv.Error as exc:
                self._bad(lineno, f"malformed CSV: {exc}")
                continue
            if columns is None:
                header = self._header(fields)
                columns = header or {"address": 0, "reason": 1}
                simple = set(columns) == {"address", "reason"}
                ai, ri = columns["address"], columns.get("reason", 0)
                need = max(ai, ri) + 1
                if header is not None:
                    continue  # it was the header line
            try:
                if simple and len(fields) >= need:
                    yield SuppressionEntry(_address(fields[ai]), _reason(fields[ri]), source, now)
                    continue
                row = {name: fields[i] for name, i in columns.items() if i < len(fields)}
                yield SuppressionEntry(
                    _address(row.get("address")),
                    _reason(row.get("reason")),
                    row.get("source") or source,
                    _created_at(row.get("created_at"), now),
                    row.get("feedback_id") or None,
                    row.get("detail") or None,
                )
            except _Row as exc:
                self._bad(lineno, str(exc))

    @staticmethod
    def _header(fields: list[str]) -> dict[str, int] | None:
        """Column positions when `fields` is a header line; None when it is (probably) data."""
        names = [
            _COLUMN_ALIASES.get(f.strip().lower().replace("_", "").replace("-", "").replace(" ", ""))
            for f in fields
        ]
        if "address" not in names or "@" in "".join(fields):
            return None
        columns: dict[str, int] = {}
        for i, name in enumerate(names):
            if name is not None and name not in columns:
                columns[name] = i
        return columns

    # -- JSON lines -----------------------------------------------------------------------------

    def _jsonl(self) -> Iterator[SuppressionEntry]:
        source, now = self._source, self._now
        for lineno, line in enumerate(self._lines, 1):
            if not line.strip():
                continue
            try:
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError):
                    raise _Row("not a JSON object") from None
                if not isinstance(obj, dict):
                    raise _Row("not a JSON object")
                address = obj.get("address", obj.get("emailAddress"))
                entry_source = obj.get("source")
                if entry_source is not None and not isinstance(entry_source, str):
                    raise _Row("invalid source")
                yield SuppressionEntry(
                    _address(address),
                    _reason(obj.get("reason")),
                    entry_source or source,
                    _created_at(obj.get("created_at"), now),
                    _optional_text(obj.get("feedback_id"), "feedback_id"),
                    _optional_text(obj.get("detail"), "detail"),
                )
            except _Row as exc:
                self._bad(lineno, str(exc))


def _open_text(path_or_stream: str | Path | IO[Any]) -> tuple[IO[str], Callable[[], Any]]:
    """A text stream, and what to call when done (close what we opened, leave the caller's open)."""
    # utf-8-sig drops a spreadsheet's BOM; undecodable bytes become U+FFFD, so the row is refused
    # as a non-ASCII address instead of aborting the import.
    if isinstance(path_or_stream, str | Path):
        stream = open(path_or_stream, encoding="utf-8-sig", errors="replace", newline="")
        return stream, stream.close
    if isinstance(path_or_stream, io.BufferedIOBase | io.RawIOBase):
        wrapper = io.TextIOWrapper(path_or_stream, encoding="utf-8-sig", errors="replace", newline="")
        return wrapper, wrapper.detach  # detach: do not close the caller's binary stream
    return path_or_stream, lambda: None


async def import_entries(
    store: SuppressionStore,
    path_or_stream: str | Path | IO[Any],
    *,
    fmt: Format,
    source: str = "import",
    progress: Callable[[int], None] | None = None,
    batch: int = DEFAULT_BATCH,
) -> ImportResult:
    """Import a CSV or JSON-lines file (path, or an open text or binary stream) into `store`.

    `source` is recorded for rows that do not carry their own. `progress(imported_so_far)` is called
    after each batch is committed. If the store fails, the batches already committed stay; the
    exception propagates (re-running the import is safe).
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown format {fmt!r} (csv or jsonl)")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    loop = asyncio.get_running_loop()
    result = ImportResult()
    stream, done = await loop.run_in_executor(None, _open_text, path_or_stream)
    parser = _Parser(stream, fmt, source, result)
    # Pipelined: the next batch is parsed on a worker thread while the store writes this one
    # (sqlite releases the GIL while it works, so the two overlap on a multi-core machine).
    pending: asyncio.Future[list[SuppressionEntry]] | None = loop.run_in_executor(
        None, parser.next_batch, batch
    )
    try:
        while pending is not None:
            entries = await pending
            pending = None
            if not entries:
                break
            if len(entries) == batch:
                pending = loop.run_in_executor(None, parser.next_batch, batch)
            result.imported += await store.put_many(entries)
            if progress is not None:
                progress(result.imported)
    finally:
        if pending is not None:  # the store failed: let the parser thread finish before closing
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved, so it is not logged as never retrieved
        done()
    return result


def _fold(text: str | None) -> str:
    return "" if text is None else text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


async def export_entries(store: SuppressionStore, stream: IO[str], *, fmt: Format, full: bool = False) -> int:
    """Write every entry to the text `stream` as the store yields it; returns how many.

    Streams: rows are written as they come (sqlite and memory in address-key order, DynamoDB page by
    page in its Scan order), so exporting a big table holds one page, never the list.

    CSV: ``emailAddress,reason`` (SES bulk-import format), or with `full` also source, created_at
    (unix seconds), feedback_id, detail. JSON lines always carry every field. The stream is not
    closed. For CSV, open files with ``newline=""``.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown format {fmt!r} (csv or jsonl)")
    count = 0
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_FULL_HEADER if full else CSV_HEADER)
        async for entry in store.iter_entries():
            if full:
                writer.writerow(
                    (
                        entry.address,
                        entry.reason.value,
                        entry.source,
                        repr(float(entry.created_at)),
                        entry.feedback_id or "",
                        _fold(entry.detail),
                    )
                )
            else:
                writer.writerow((entry.address, entry.reason.value))
            count += 1
        return count
    async for entry in store.iter_entries():
        record = {
            "address": entry.address,
            "reason": entry.reason.value,
            "source": entry.source,
            "created_at": float(entry.created_at),
            "feedback_id": entry.feedback_id,
            "detail": entry.detail,
        }
        stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        count += 1
    return count
