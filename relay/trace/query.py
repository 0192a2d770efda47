"""Reading the trace: find messages by any id or recipient, and build each one's timeline.

Pure functions over a sqlite connection: the server runs them on the trace store's thread (HTTP API),
the CLI on its own read-only connection to the same WAL file. The JSON shape is the same for both.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import time
from typing import Any

from relay.trace.schema import Hasher, recipient_key

# A message's state is the most telling thing that happened to it (any recipient); higher wins.
_STATE_RANK = {
    "accepted": 0,
    "queued": 1,
    "sent": 2,
    "deferred": 3,
    "delayed": 4,
    "delivered": 5,
    "refused": 6,
    "failed": 6,
    "dead": 7,
    "rejected": 8,
    "bounced": 9,
    "complained": 10,
}
_ATTEMPT_STATE = {"sent": "sent", "deferred": "deferred", "dead": "dead", "expired": "dead"}
_FEEDBACK_STATE = {
    "Send": "sent",
    "Delivery": "delivered",
    "DeliveryDelay": "delayed",
    "Reject": "rejected",
    "Complaint": "complained",
}
_MESSAGE_COLUMNS = (
    "queue_id, received_at, client, user, mail_from, message_id, subject, subject_hash, size, "
    "recipients, dropped, reply, outcome, error, error_detail, duration, ses_message_id"
)


def iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


def search(
    db: sqlite3.Connection, hasher: Hasher | None, text: str, since: float | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Timelines of the messages QUERY names, newest first. QUERY is a queue id, the client's
    Message-ID (with or without <>), an SES message id, or a recipient address. `since`: seconds
    back from now. SES events for an SES id the relay never sent are returned as `known: false`."""
    text = text.strip()
    if not text:
        return []
    bare = text.strip("<>")
    clauses = [
        "queue_id = :q",
        "message_id IN (:q, :bracketed)",
        "ses_message_id = :bare",
        "queue_id IN (SELECT queue_id FROM ses_ids WHERE ses_message_id = :bare)",
    ]
    params: dict[str, Any] = {"q": text, "bare": bare, "bracketed": f"<{bare}>", "limit": limit}
    if "@" in bare:
        clauses.append("queue_id IN (SELECT queue_id FROM recipients WHERE key = :rcpt)")
        params["rcpt"] = recipient_key(bare, hasher)
    where = "(" + " OR ".join(clauses) + ")"
    if since is not None:
        where += " AND received_at >= :after"
        params["after"] = time.time() - since
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY received_at DESC LIMIT :limit",  # noqa: S608
        params,
    ).fetchall()
    found = [_timeline(db, row) for row in rows]
    if not found:
        found.extend(_unknown(db, bare, since))
    if not found and "@" in bare:
        for (ses_message_id,) in db.execute(_UNMATCHED_TO, (params["rcpt"], limit)).fetchall():
            found.extend(_unknown(db, ses_message_id, since))
    return found


# SES ids of events that matched no message and name this recipient (a full pass over the unmatched
# events: bounded by the retention, and only when no message of this relay matched).
_UNMATCHED_TO = """
SELECT ses_message_id FROM steps
WHERE queue_id IS NULL AND ses_message_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM json_each(detail, '$.recipients') WHERE lower(value) = ?)
GROUP BY ses_message_id ORDER BY MAX(at) DESC LIMIT ?
"""


def recent(db: sqlite3.Connection, hasher: Hasher | None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest messages' timelines (the web console's front list)."""
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY received_at DESC LIMIT ?", (limit,)  # noqa: S608
    ).fetchall()
    return [_timeline(db, row) for row in rows]


# Recipients SES accepted, by the hour they were sent: a direct (or fallback) send at its SMTP
# transaction, a spooled message at its first successful attempt.
_SENT_BY_HOUR = """
SELECT CAST(at / 3600 AS INTEGER), SUM(n) FROM (
    SELECT received_at AS at, recipients AS n FROM messages WHERE outcome = 'sent' AND received_at >= :start
    UNION ALL
    SELECT MIN(s.at), m.recipients FROM steps s JOIN messages m ON m.queue_id = s.queue_id
    WHERE s.kind = 'attempt' AND json_extract(s.detail, '$.result') = 'sent' AND s.at >= :start
      AND m.outcome = 'queued'
    GROUP BY s.queue_id
) GROUP BY 1
"""
# Feedback recipients by the hour the relay heard of them. Only permanent bounces count towards
# SES's bounce rate; a transient one is a delay.
_FEEDBACK_BY_HOUR = """
SELECT CAST(at / 3600 AS INTEGER), SUM(json_array_length(detail, '$.recipients')) FROM steps
WHERE kind = 'feedback' AND at >= :start AND json_extract(detail, '$.type') = :type
  AND (:type != 'Bounce' OR json_extract(detail, '$.subtype') LIKE 'Permanent%')
GROUP BY 1
"""


def hourly(db: sqlite3.Connection, hasher: Hasher | None, hours: int, now: float) -> list[dict[str, Any]]:
    """Recipients sent, bounced (permanently) and complained about, per hour for the last `hours`
    hours, oldest first; the last hour is the one in progress."""
    first = int(now // 3600) - hours + 1
    counts: dict[int, dict[str, int]] = {
        hour: {"sent": 0, "bounced": 0, "complained": 0} for hour in range(first, first + hours)
    }
    series: list[tuple[str, str, dict[str, Any]]] = [
        ("sent", _SENT_BY_HOUR, {"start": first * 3600}),
        ("bounced", _FEEDBACK_BY_HOUR, {"start": first * 3600, "type": "Bounce"}),
        ("complained", _FEEDBACK_BY_HOUR, {"start": first * 3600, "type": "Complaint"}),
    ]
    for name, sql, params in series:
        for hour, number in db.execute(sql, params):
            if hour in counts:
                counts[hour][name] = int(number or 0)
    return [{"hour": iso(hour * 3600), **numbers} for hour, numbers in counts.items()]


def timeline(db: sqlite3.Connection, hasher: Hasher | None, queue_id: str) -> dict[str, Any] | None:
    row = db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()  # noqa: S608
    if row is None:
        # A message the spool delivered (a DSN, say) without an SMTP transaction here: attempts only.
        steps = _steps(db, "queue_id = ?", (queue_id,))
        if not steps:
            return None
        return {"queue_id": queue_id, "known": True, "state": _state("accepted", steps), "steps": steps}
    return _timeline(db, row)


def _timeline(db: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    (queue_id, received_at, client, user, mail_from, message_id, subject, subject_hash, size,
     recipients, dropped, reply, outcome, error, error_detail, duration, ses_message_id) = row
    addresses = [
        address or key
        for key, address in db.execute("SELECT key, address FROM recipients WHERE queue_id = ?", (queue_id,))
    ]
    ses_ids = [
        {"ses_message_id": sid, "chunk": chunk}
        for sid, chunk in db.execute(
            "SELECT ses_message_id, chunk FROM ses_ids WHERE queue_id = ? ORDER BY chunk", (queue_id,)
        )
    ]
    # The SMTP transaction: accepted (sent by SES at once, or queued) or refused, with the reply given.
    smtp_step = {
        "at": iso(received_at),
        "step": "accepted" if reply and reply[0] == "2" else "refused",
        "outcome": outcome,
        "smtp_reply": reply,
        "client": client,
        "user": user,
        "duration": duration,
    }
    if ses_message_id:
        smtp_step["ses_message_id"] = ses_message_id
    if error:
        smtp_step["error"], smtp_step["error_detail"] = error, error_detail
    steps = [smtp_step]
    steps.extend(_steps(db, "queue_id = ?", (queue_id,)))
    initial = {"sent": "sent", "saved": "sent", "queued": "queued", "dropped": "accepted"}.get(
        outcome, "refused" if reply and reply[0] == "5" else "failed" if reply else outcome
    )
    return {
        "queue_id": queue_id,
        "known": True,
        "received_at": iso(received_at),
        "client": client,
        "user": user,
        "mail_from": mail_from,
        "recipients": addresses,
        "recipients_count": recipients,
        "dropped": dropped,
        "message_id": message_id,
        "subject": subject,
        "subject_hash": subject_hash,
        "size": size,
        "smtp_reply": reply,
        "outcome": outcome,
        "ses_message_ids": ses_ids,
        "state": _state(initial, steps),
        "steps": steps,
    }


def _steps(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    steps = []
    for at, kind, ses_message_id, detail, matched in db.execute(
        f"SELECT at, kind, ses_message_id, detail, matched FROM steps WHERE {where} ORDER BY at, id",  # noqa: S608
        params,
    ):
        data = json.loads(detail)
        if kind == "attempt":
            steps.append({"at": iso(at), "step": "attempt", **data})
        else:
            steps.append({
                "at": iso(at),
                "step": data.pop("type"),
                "ses_message_id": ses_message_id,
                "matched": bool(matched),
                **data,
            })
    return steps


def _unknown(db: sqlite3.Connection, ses_message_id: str, since: float | None) -> list[dict[str, Any]]:
    where = "ses_message_id = ? AND queue_id IS NULL"
    params: list[Any] = [ses_message_id]
    if since is not None:
        where += " AND at >= ?"
        params.append(time.time() - since)
    steps = _steps(db, where, tuple(params))
    if not steps:
        return []
    return [{
        "queue_id": None,
        "known": False,  # SES reported it, but it did not pass through this relay (or was pruned)
        "ses_message_ids": [{"ses_message_id": ses_message_id, "chunk": None}],
        "state": _state("sent", steps),
        "steps": steps,
    }]


def _state(initial: str, steps: list[dict[str, Any]]) -> str:
    state = initial
    for step in steps:
        if step["step"] == "attempt":
            candidate = _ATTEMPT_STATE.get(step.get("result", ""))
        elif step["step"] == "Bounce":
            candidate = "bounced" if str(step.get("subtype", "")).startswith("Permanent") else "delayed"
        else:
            candidate = _FEEDBACK_STATE.get(step["step"])
        if candidate is not None and _STATE_RANK.get(candidate, 0) >= _STATE_RANK.get(state, 0):
            state = candidate
    return state


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """'90' (seconds), '30m', '2h', '7d', '1w' -> seconds. ValueError with a one-line reason."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 30m, 2h, 7d)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r}: a duration must be positive")
    return value
