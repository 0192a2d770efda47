"""`ses-relay queue ...`: inspect and repair the spool, as Postfix's postqueue/postsuper do its queue.

The CLI opens the same sqlite file as the relay (WAL, busy_timeout), so every command is safe on a
running relay and on a stopped one; the delivery workers see a change at their next poll (about a
second). It never creates a spool and never sweeps body files: on a running relay a body file without
its row is a message being committed (see `SqliteSpool.open_existing`).

A message being sent at the very moment it is held or deleted is not called back: SES may still get it.

Exit codes: 0 done, 1 an ID not in the queue / nothing matched / the spool unreadable (2, a config
error, comes from relay.cli).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from relay.spool.store import DEAD, DEFERRED, HELD, QUEUED, STATES, SpoolEntry, SpoolError, SqliteSpool

EXIT_OK, EXIT_NOT_FOUND = 0, 1

# qshape's age columns: a message younger than 5 minutes counts under "5m", one of 7 minutes under
# "10m", ..., one of a day or more under "1280m+".
AGE_EDGES_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
AGE_LABELS = tuple(f"{edge}m" for edge in AGE_EDGES_MINUTES) + (f"{AGE_EDGES_MINUTES[-1]}m+",)
SHAPE_STATES = (QUEUED, DEFERRED, HELD)  # summary's default: mail still to be delivered
ERROR_WIDTH = 70  # characters of the last error in `queue list`; --json and `show` give all of it


def run(args: Any, spool_dir: Path, *, clock: Callable[[], float] = time.time) -> int:
    """Run one `queue` action (args from relay.cli's parser) and return the exit code."""
    return asyncio.run(_run(args, spool_dir, clock))


async def _run(args: Any, spool_dir: Path, clock: Callable[[], float]) -> int:
    action = args.queue_command
    if not (spool_dir / "spool.db").is_file():
        if action in ("list", "summary"):
            print(f"the queue is empty (no spool at {spool_dir} yet)", file=sys.stderr)
            return EXIT_OK
        return _fail(f"no spool at {spool_dir}: nothing to {action}")
    spool = SqliteSpool(spool_dir, clock=clock)
    try:
        await spool.open_existing()
        return await _ACTIONS[action](spool, args, clock)
    except SpoolError as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:  # e.g. locked past busy_timeout, or not a spool database
        return _fail(f"spool {spool_dir}: {exc}")
    finally:
        await spool.close()


def _fail(message: str) -> int:
    print(f"ses-relay: error: {message}", file=sys.stderr)
    return EXIT_NOT_FOUND


# -- reading ---------------------------------------------------------------------------------------


async def _entries(spool: SqliteSpool, state: str | None) -> AsyncIterator[SpoolEntry]:
    after = 0
    while True:
        entries, after = await spool.page(state, after=after)
        if not entries:
            return
        for entry in entries:
            yield entry


async def cmd_list(spool: SqliteSpool, args: Any, clock: Callable[[], float]) -> int:
    now = clock()
    count = 0
    async for entry in _entries(spool, args.state):
        if args.json:
            print(json.dumps(_entry_json(entry, now)))
        else:
            if count == 0:
                print(_LIST_ROW.format(*_LIST_HEADER))
            print(list_row(entry, now))
        count += 1
    if not args.json:
        which = f"{args.state} " if args.state else ""
        if count:
            print(f"-- {count} {which}message{'s' if count != 1 else ''}")
        else:
            print(f"no {which}messages" if which else "the queue is empty")
    return EXIT_OK


_LIST_HEADER = ("ID", "AGE", "STATE", "TRIES", "NEXT TRY", "SENDER", "RECIPIENTS", "LAST ERROR")
_LIST_ROW = "{:<12}  {:>6}  {:<8}  {:>5}  {:<8}  {:<32}  {:<32}  {}"


def list_row(entry: SpoolEntry, now: float) -> str:
    recipients = entry.recipients
    first = recipients[0] if recipients else "-"
    more = f" +{len(recipients) - 1}" if len(recipients) > 1 else ""
    error = printable(" ".join((entry.last_error or "-").split()))
    if len(error) > ERROR_WIDTH:
        error = error[: ERROR_WIDTH - 1] + "…"
    return _LIST_ROW.format(
        entry.id,
        span(now - entry.created),
        entry.state,
        entry.attempts,
        next_try(entry, now),
        _clip(printable(entry.mail_from or "<>"), 32),
        _clip(printable(first), 32 - len(more)) + more,
        error,
    )


def next_try(entry: SpoolEntry, now: float) -> str:
    if entry.state in (HELD, DEAD):
        return "-"
    wait = entry.next_attempt - now
    return "now" if wait <= 0 else f"in {span(wait)}"


def _entry_json(entry: SpoolEntry, now: float) -> dict[str, Any]:
    data = entry.as_dict()
    data["age"] = round(now - entry.created, 3)
    data["recipient_count"] = len(entry.recipients)
    return data


async def cmd_show(spool: SqliteSpool, args: Any, clock: Callable[[], float]) -> int:
    found = await spool.get(args.id)
    if found is None:
        return _fail(f"{args.id}: not in the queue")
    head = await spool.header_block(args.id)
    entry, attempts = found
    block, truncated = head if head is not None else (b"", False)
    headers = parse_headers(block)
    now = clock()
    if args.json:
        data = _entry_json(entry, now)
        data["headers"] = headers
        data["headers_truncated"] = truncated
        data["attempts"] = attempts
        print(json.dumps(data))
        return EXIT_OK
    for line in show_lines(entry, attempts, block, truncated, now):
        print(line)
    return EXIT_OK


def show_lines(
    entry: SpoolEntry, attempts: list[dict[str, Any]], block: bytes, truncated: bool, now: float
) -> list[str]:
    state = entry.state
    if state not in (HELD, DEAD):
        state += f", next try {next_try(entry, now)} ({stamp(entry.next_attempt)})"
    lines = [
        f"id:           {entry.id}",
        f"state:        {state}",
        f"attempts:     {entry.attempts}" + ("  (possibly sent twice)" if entry.possible_duplicate else ""),
        f"received:     {stamp(entry.created)} (age {span(now - entry.created)})",
        f"size:         {entry.size} bytes",
        f"sender:       <{printable(entry.mail_from)}>",
        f"message-id:   {printable(entry.message_id or '-')}",
        f"last error:   {printable(entry.last_error or '-')}",
    ]
    for name, value in sorted(entry.params.items()):
        if value:  # configuration set, tags, ARNs, list management: only those the message has
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"{name + ':':<13} {printable(text)}")
    chunks = len(entry.chunks)
    lines.append(f"recipients:   {len(entry.recipients)} in {chunks} chunk{'s' if chunks != 1 else ''}")
    for chunk in entry.chunks:
        sent = f"sent, SES message id {chunk.ses_message_id}" if chunk.ses_message_id else "not sent yet"
        lines.append(f"  chunk {chunk.index}: {_plural(len(chunk.recipients), 'recipient')}, {sent}")
        lines.extend(f"    {printable(address)}" for address in chunk.recipients)
    lines.append("headers:" + ("" if block else " (none)"))
    lines.extend(f"  {printable(line)}" for line in block.decode("utf-8", "replace").splitlines())
    if truncated:
        lines.append("  ... (the header block goes on; cut here)")
    lines.append("history:" + ("" if attempts else " (no attempt yet)"))
    for attempt in attempts:
        which = "-" if attempt["chunk"] is None else attempt["chunk"]
        detail = printable(" ".join((attempt["detail"] or "").split()))
        lines.append(f"  {stamp(attempt['at'])}  chunk {which}  {attempt['outcome']:<10}  {detail}")
    return lines


def parse_headers(block: bytes) -> list[list[str]]:
    """[[name, value], ...] from a raw header block, folded lines unfolded, values as written."""
    fields: list[list[str]] = []
    for line in block.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append([name.strip(), value.strip()])
    return fields


async def cmd_summary(spool: SqliteSpool, args: Any, clock: Callable[[], float]) -> int:
    now = clock()
    states = (args.state,) if args.state else SHAPE_STATES
    shape = Shape()
    for state in states:
        async for entry in _entries(spool, state):
            shape.add(sender_domain(entry.mail_from), now - entry.created)
    counts = await spool.counts()
    if args.json:
        print(json.dumps({
            "states": list(states),
            "buckets": list(AGE_LABELS),
            "total": shape.total,
            "domains": [{"domain": d, "total": sum(row), "counts": row} for d, row in shape.rows()],
            "by_state": counts,
        }))
        return EXIT_OK
    for line in shape.lines():
        print(line)
    print()
    print("by state: " + "  ".join(f"{state} {counts.get(state, 0)}" for state in STATES))
    return EXIT_OK


class Shape:
    """Messages counted by sender domain x age bucket (Postfix's qshape)."""

    def __init__(self) -> None:
        self.total = [0] * len(AGE_LABELS)
        self._domains: dict[str, list[int]] = {}

    def add(self, domain: str, age_seconds: float) -> None:
        bucket = age_bucket(age_seconds)
        self.total[bucket] += 1
        self._domains.setdefault(domain, [0] * len(AGE_LABELS))[bucket] += 1

    def rows(self) -> list[tuple[str, list[int]]]:
        return sorted(self._domains.items(), key=lambda item: (-sum(item[1]), item[0]))

    def lines(self) -> list[str]:
        rows = [("TOTAL", self.total), *self.rows()]
        width = max(len(printable(name)) for name, _ in rows)
        cell = max(len(AGE_LABELS[-1]), len(str(sum(self.total)))) + 1
        header = f"{'':>{width}} {'T':>{cell}}" + "".join(f"{label:>{cell}}" for label in AGE_LABELS)
        body = [
            f"{printable(name):>{width}} {sum(row):>{cell}}" + "".join(f"{n:>{cell}}" for n in row)
            for name, row in rows
        ]
        return [header, *body]


def age_bucket(age_seconds: float) -> int:
    minutes = age_seconds / 60
    for index, edge in enumerate(AGE_EDGES_MINUTES):
        if minutes < edge:
            return index
    return len(AGE_EDGES_MINUTES)


def sender_domain(mail_from: str) -> str:
    if not mail_from:
        return "<>"  # the null sender: bounces
    return mail_from.rpartition("@")[2].lower() if "@" in mail_from else mail_from.lower()


# -- repairing -------------------------------------------------------------------------------------


def _targets(args: Any) -> list[str] | None:
    """The IDs named on the command line ("-": one per line on stdin), or None for --all."""
    if getattr(args, "all", False):
        return None
    ids: list[str] = []
    for item in args.ids:
        if item == "-":
            ids.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            ids.append(item)
    return ids


# action -> (the state it moves to, the states it moves from, the past tense)
_MOVES = {
    "hold": (HELD, (QUEUED, DEFERRED), "held"),
    "release": (QUEUED, (HELD,), "released"),
    "retry": (QUEUED, (QUEUED, DEFERRED), "due now"),
}
_WHY_NOT = {  # (action, the state the message is in) -> the hint
    ("hold", HELD): "already held",
    ("hold", DEAD): "a dead letter: nothing to hold",
    ("release", QUEUED): "not held",
    ("release", DEFERRED): "not held (`queue retry` makes it due now)",
    ("release", DEAD): "a dead letter, not held",
    ("retry", HELD): "held: `queue release` it",
    ("retry", DEAD): "a dead letter: it is not retried",
}


async def cmd_move(spool: SqliteSpool, args: Any, clock: Callable[[], float]) -> int:
    action = args.queue_command
    state, only, done = _MOVES[action]
    ids = _targets(args)
    moved = await spool.move(ids, state, only=only)
    for queue_id in moved:
        print(f"{queue_id}: {done}")
    return await _report(spool, action, done, ids, moved)


async def cmd_delete(spool: SqliteSpool, args: Any, clock: Callable[[], float]) -> int:
    ids = None if args.all or args.dead else _targets(args)
    removed = await spool.remove(ids, states=(DEAD,) if args.dead else STATES)
    for queue_id in removed:
        print(f"{queue_id}: deleted")
    return await _report(spool, "delete", "deleted", ids, removed)


async def _report(
    spool: SqliteSpool, action: str, past: str, ids: list[str] | None, done: list[str]
) -> int:
    """Say why each named ID was left alone; exit 1 when anything asked for was not done."""
    if ids is None:
        print(f"{_plural(len(done), 'message')} {past}", file=sys.stderr)
        return EXIT_OK if done else EXIT_NOT_FOUND
    missed = sorted(set(ids) - set(done))
    for queue_id in missed:
        found = await spool.get(queue_id)
        if found is None:
            print(f"{queue_id}: not in the queue", file=sys.stderr)
        else:
            state = found[0].state
            print(f"{queue_id}: {_WHY_NOT.get((action, state), state)}", file=sys.stderr)
    return EXIT_NOT_FOUND if missed or not ids else EXIT_OK


_ACTIONS = {
    "list": cmd_list,
    "show": cmd_show,
    "summary": cmd_summary,
    "hold": cmd_move,
    "release": cmd_move,
    "retry": cmd_move,
    "delete": cmd_delete,
}


# -- formatting ------------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """42s, 5m, 3h12m, 2d4h: an age or a wait, as short as a table cell."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def printable(text: str) -> str:
    """Control characters escaped: a header or an address must not drive the operator's terminal."""
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def add_arguments(queue: Any, with_config: Callable[[Any], Any]) -> None:
    """The `queue` subcommands, for relay.cli's parser."""
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = with_config(actions.add_parser("list", help="one line per queued message (postqueue -p)"))
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--state", choices=STATES, default=None)
    show = with_config(actions.add_parser("show", help="envelope, headers, chunks and attempts of a message"))
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    summary = with_config(actions.add_parser("summary", help="messages by sender domain x age (qshape)"))
    summary.add_argument("--json", action="store_true")
    summary.add_argument(
        "--state", choices=STATES, default=None, help="default: queued, deferred and held (not dead)"
    )
    for name, text in (
        ("retry", "make deferred (and queued) messages due now"),
        ("hold", "never deliver these until released"),
        ("release", "held messages become due now"),
    ):
        move = with_config(actions.add_parser(name, help=text))
        _ids(move, all_help=f"{name} every message it applies to")
    delete = with_config(actions.add_parser("delete", help="remove messages for good (asks nothing)"))
    _ids(delete, all_help="delete every message", dead=True)


def _ids(sub: Any, *, all_help: str, dead: bool = False) -> None:
    chosen = sub.add_mutually_exclusive_group(required=True)
    chosen.add_argument("ids", nargs="*", default=[], metavar="ID", help="queue IDs; - reads them from stdin")
    chosen.add_argument("--all", action="store_true", help=all_help)
    if dead:
        chosen.add_argument("--dead", action="store_true", help="delete every dead letter")
