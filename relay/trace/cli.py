"""`ses-relay trace QUERY [--since DURATION] [--json]`: what happened to a message.

Reads the trace store of a running (or stopped) relay through its own connection: WAL lets it read
while the server writes. QUERY is a queue id, the client's Message-ID, an SES message id or a
recipient address; every message it names is printed as a timeline, newest first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from relay.trace import query
from relay.trace.schema import Hasher, TraceError, connect

EXIT_OK, EXIT_NOT_FOUND, EXIT_CONFIG = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser, with_config) -> None:
    with_config(parser)
    parser.add_argument(
        "query", metavar="QUERY", help="queue id, Message-ID, SES message id or recipient address"
    )
    parser.add_argument(
        "--since", metavar="DURATION", default=None, help="only messages this recent: 90, 30m, 2h, 7d"
    )
    parser.add_argument("--json", action="store_true", help='print {"messages": [...]}, as the HTTP API')
    parser.add_argument("--limit", type=int, default=50, help="at most this many messages (default 50)")


def run(args: argparse.Namespace, *, enabled: bool, path: Path, state_dir: Path, hashed: bool) -> int:
    if not enabled:
        print("ses-relay: error: trace.enabled is false: there is no trace to read", file=sys.stderr)
        return EXIT_CONFIG
    try:
        since = query.parse_duration(args.since) if args.since else None
    except ValueError as exc:
        print(f"ses-relay: error: --since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        hasher = Hasher.from_state_dir(state_dir, create=False) if hashed else None
        db = connect(path, create=False)
        try:
            found = query.search(db, hasher, args.query, since, max(1, args.limit))
        finally:
            db.close()
    except TraceError as exc:
        print(f"ses-relay: error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except Exception as exc:  # noqa: BLE001 - sqlite errors reading a file being written: one line
        print(f"ses-relay: error: reading {path}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps({"messages": found}, indent=2))
    else:
        for message in found:
            print_timeline(message)
    if not found:
        print(f"no message in the trace matches {args.query!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


def print_timeline(message: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    if message["known"]:
        head = f"queue id {message['queue_id']}  state {message['state']}"
        if message.get("message_id"):
            head += f"  Message-ID {message['message_id']}"
        print(head, file=out)
        if "mail_from" in message:
            print(f"  from {message['mail_from']}  to {', '.join(message['recipients']) or '-'}"
                  f"  size {message['size']}", file=out)
            subject = message.get("subject") or (message.get("subject_hash") and "(hashed)")
            if subject:
                print(f"  subject {subject}", file=out)
    else:
        ids = ", ".join(item["ses_message_id"] for item in message["ses_message_ids"])
        print(f"SES message id {ids}  state {message['state']}  (not sent through this relay, or pruned)",
              file=out)
    for step in message["steps"]:
        print(f"  {step['at']}  {step['step']:<13} {_describe(step)}", file=out)
    print(file=out)


def _describe(step: dict[str, Any]) -> str:
    kind = step["step"]
    parts: list[str] = []
    if kind in ("accepted", "refused"):
        parts.append(f"reply {step.get('smtp_reply')!s}")
        parts.append(f"({step.get('outcome')})")
        if step.get("client"):
            parts.append(f"client {step['client']}")
        if step.get("user"):
            parts.append(f"user {step['user']}")
        if step.get("ses_message_id"):
            parts.append(f"SES id {step['ses_message_id']}")
        if step.get("error"):
            parts.append(f"error {step['error']}: {step.get('error_detail') or ''}".rstrip(": "))
    elif kind == "attempt":
        parts.append(str(step.get("result")))
        if step.get("chunk") is not None:
            parts.append(f"chunk {step['chunk']}")
        if step.get("ses_message_id"):
            parts.append(f"SES id {step['ses_message_id']}")
        if step.get("error"):
            parts.append(f"error {step['error']}")
    else:  # an SES event
        if step.get("subtype"):
            parts.append(step["subtype"])
        if step.get("recipients"):
            parts.append(", ".join(step["recipients"]))
        if step.get("detail"):
            parts.append(step["detail"])
        parts.append(f"via {step.get('source')}")
        if not step.get("matched", True):
            parts.append("(unmatched)")
    return "  ".join(parts)
