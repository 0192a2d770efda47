"""The console's pages: data in (the same dicts as the trace's JSON API, spool entries,
suppression entries), HTML out. Pure functions, so they are tested without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relay.console.charts import hourly_bars
from relay.console.markup import badge, esc, link, message_link, page, pairs, search_form, table
from relay.spool.admin import next_try, span, stamp
from relay.spool.store import DEAD, DEFERRED, HELD, QUEUED, SpoolEntry
from relay.suppression.base import SuppressionEntry

# SES's published levels (Amazon SES sending review process): over the first the account is put
# under review, over the second SES may pause its sending.
SES_BOUNCE_REVIEW, SES_BOUNCE_PAUSE = 0.05, 0.10
SES_COMPLAINT_REVIEW, SES_COMPLAINT_PAUSE = 0.001, 0.005
QUEUE_STATES = (QUEUED, DEFERRED, HELD, DEAD)


def _recipients(addresses: Sequence[str], count: int | None = None) -> str:
    if not addresses:
        return esc(f"{count} (hashed)" if count else "-")
    shown = ", ".join(addresses[:3])
    more = f" +{len(addresses) - 3} more" if len(addresses) > 3 else ""
    return esc(shown + more)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f} %"


# -- overview --------------------------------------------------------------------------------------


def rates(hours: Sequence[dict[str, Any]]) -> dict[str, Any]:
    sent = sum(h["sent"] for h in hours)
    bounced = sum(h["bounced"] for h in hours)
    complained = sum(h["complained"] for h in hours)
    return {
        "sent": sent,
        "bounced": bounced,
        "complained": complained,
        "bounce_rate": bounced / sent if sent else None,
        "complaint_rate": complained / sent if sent else None,
    }


def _rate_card(name: str, rate: float | None, review: float, pause: float) -> str:
    level = "good" if rate is None or rate < review else "wait" if rate < pause else "bad"
    verdict = {"good": "below SES's review level", "wait": "over SES's review level",
               "bad": "over the level at which SES may pause sending"}[level]
    return (
        f'<div class="card {level}" data-rate="{esc(name)}"><div>{esc(name)} rate</div>'
        f'<div class="value">{_percent(rate)}</div>'
        f'<div class="note">{verdict} (review {review * 100:g} %, pause {pause * 100:g} %)</div></div>'
    )


def overview(
    hours: Sequence[dict[str, Any]] | None, queue_counts: dict[str, int] | None, window: int
) -> str:
    body = [search_form("/console/messages", "", "Recipient, Message-ID, SES message id or queue id")]
    if queue_counts is not None:
        cards = "".join(
            f'<div class="card{" bad" if state == "dead" and count else ""}"><div>queue: {esc(state)}</div>'
            f'<div class="value">{link("/console/queue", count, state=state)}</div></div>'
            for state, count in ((s, queue_counts.get(s, 0)) for s in QUEUE_STATES)
        )
        body.append(f'<h2>Queue</h2><div class="cards">{cards}</div>')
    if hours is None:
        body.append('<p class="note">The message trace is off (trace.enabled): no history to chart.</p>')
        return page("Overview", "".join(body), active="Overview")
    totals = rates(hours)
    body.append(f"<h2>Last {window} hours</h2>")
    body.append(
        '<div class="cards">'
        f'<div class="card"><div>recipients sent</div><div class="value">{totals["sent"]}</div></div>'
        f'<div class="card"><div>bounced (permanent)</div><div class="value">{totals["bounced"]}</div></div>'
        f'<div class="card"><div>complaints</div><div class="value">{totals["complained"]}</div></div>'
        + _rate_card("bounce", totals["bounce_rate"], SES_BOUNCE_REVIEW, SES_BOUNCE_PAUSE)
        + _rate_card("complaint", totals["complaint_rate"], SES_COMPLAINT_REVIEW, SES_COMPLAINT_PAUSE)
        + "</div>"
    )
    body.append(
        '<p class="note">Rates are this relay\'s own, from its trace over the window: SES computes its '
        "rates over a representative volume of the whole account's recent sending, which can differ.</p>"
    )
    body.append("<h2>Sent per hour</h2>" + hourly_bars(hours, ["sent"], "recipients sent per hour"))
    body.append(
        "<h2>Bounced and complained per hour</h2>"
        + hourly_bars(hours, ["bounced", "complained"], "bounces and complaints per hour")
    )
    windows = " · ".join(link("/console", f"{h} h", hours=h) for h in (24, 48, 168))
    body.append(f'<p class="note">Window: {windows}</p>')
    return page("Overview", "".join(body), active="Overview")


# -- messages --------------------------------------------------------------------------------------


def message_list(messages: Sequence[dict[str, Any]], q: str, error: str | None = None) -> str:
    body = [search_form("/console/messages", q, "Recipient, Message-ID, SES message id or queue id")]
    if error:
        body.append(f'<p class="error">{esc(error)}</p>')
    title = f"Messages matching {q}" if q else "Recent messages"
    rows = []
    for m in messages:
        if not m.get("known", True):
            ses_id = (m.get("ses_message_ids") or [{}])[0].get("ses_message_id")
            rows.append([
                esc(m["steps"][0]["at"] if m.get("steps") else "-"), esc("(not sent by this relay)"),
                "-", "-", "-", badge(m["state"]), f'<span class="mono">{esc(ses_id)}</span>',
            ])
            continue
        ses_ids = ", ".join(s["ses_message_id"] for s in m.get("ses_message_ids", []))
        rows.append([
            esc(m.get("received_at", "-")),
            message_link(m["queue_id"]),
            esc(m.get("mail_from") or "<>"),
            _recipients(m.get("recipients", []), m.get("recipients_count")),
            esc(m.get("subject") or ("(hashed)" if m.get("subject_hash") else "")),
            badge(m["state"]),
            f'<span class="mono">{esc(ses_ids or "-")}</span>',
        ])
    body.append(f"<h2>{esc(title)}</h2>")
    body.append(table(
        ["Received (UTC)", "Queue id", "From", "To", "Subject", "State", "SES message id"], rows,
        empty="No message found." if q else "The trace has no message yet.",
    ))
    if not q:
        body.append('<p class="note">Search finds older messages too, as far back as the trace keeps them '
                    "(trace.retention_days).</p>")
    return page(title, "".join(body), active="Messages")


_STEP_FIELDS = ("outcome", "smtp_reply", "result", "chunk", "ses_message_id", "error", "error_detail",
                "subtype", "recipients", "detail", "source", "client", "user", "feedback_id")


def _step_detail(step: dict[str, Any]) -> str:
    items = []
    for key in _STEP_FIELDS:
        value = step.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        items.append(f"<div><span class=\"note\">{esc(key)}:</span> {esc(value)}</div>")
    if step.get("matched") is False:
        items.append('<div class="note">matched no message of this relay</div>')
    return "".join(items)


def message_page(m: dict[str, Any]) -> str:
    ses_ids = ", ".join(
        f'{s["ses_message_id"]}' + (f' (chunk {s["chunk"]})' if s.get("chunk") else "")
        for s in m.get("ses_message_ids", [])
    )
    summary = pairs([
        ("State", badge(m["state"])),
        ("Queue id", f'<span class="mono">{esc(m["queue_id"])}</span>'),
        ("Received (UTC)", esc(m.get("received_at", "-"))),
        ("Client", esc(m.get("client") or "-") + (f" (user {esc(m['user'])})" if m.get("user") else "")),
        ("From (envelope)", esc(m.get("mail_from") or "<>")),
        ("Recipients", esc(", ".join(m.get("recipients") or []) or m.get("recipients_count") or "-")),
        ("Message-ID", f'<span class="mono">{esc(m.get("message_id") or "-")}</span>'),
        ("Subject", esc(m.get("subject") or ("(hashed)" if m.get("subject_hash") else "-"))),
        ("Size", esc(f"{m['size']} bytes" if m.get("size") is not None else "-")),
        ("SMTP reply", f'<span class="mono">{esc(m.get("smtp_reply") or "-")}</span>'),
        ("SES message ids", f'<span class="mono">{esc(ses_ids or "-")}</span>'),
    ])
    steps = "".join(
        f'<li data-step="{esc(step["step"])}"><span class="when">{esc(step["at"])}</span>'
        f'<span class="what">{esc(step["step"])}</span>{_step_detail(step)}</li>'
        for step in m.get("steps", [])
    )
    raw = esc(json.dumps(m, indent=2))
    body = (
        summary
        + f'<h2>Timeline</h2><ol class="timeline">{steps}</ol>'
        + f'<p class="note">{link("/api/messages/" + m["queue_id"], "This timeline as JSON")}</p>'
        + f"<details><summary>Raw record</summary><pre>{raw}</pre></details>"
    )
    return page(f"Message {m['queue_id']}", body, active="Messages")


def not_found(what: str) -> str:
    return page("Not found", f'<p class="error">{esc(what)}</p>')


# -- queue -----------------------------------------------------------------------------------------


def queue_page(
    counts: dict[str, int] | None, entries: Sequence[SpoolEntry], state: str | None, now: float, limit: int
) -> str:
    if counts is None:
        body = ('<p class="note">delivery.mode is direct: there is no spool. In spool or fallback mode the '
                "queue is listed here.</p>")
        return page("Queue", body, active="Queue")
    filters = " · ".join(
        [link("/console/queue", f"all ({sum(counts.values())})")]
        + [link("/console/queue", f"{s} ({counts.get(s, 0)})", state=s) for s in QUEUE_STATES]
    )
    rows = [
        [
            message_link(e.id),
            esc(span(now - e.created)),
            badge(e.state),
            esc(e.attempts),
            esc(next_try(e, now)),
            esc(e.mail_from or "<>"),
            _recipients(e.recipients),
            esc(e.last_error or "-") + (' <span class="note">(possible duplicate)</span>'
                                        if e.possible_duplicate else ""),
        ]
        for e in entries
    ]
    body = (
        f'<p>{filters}</p>'
        + table(["Queue id", "Age", "State", "Attempts", "Next try", "From", "To", "Last error"], rows,
                empty="The queue is empty." if state is None else f"No message is {state}.")
        + (f'<p class="note">The first {limit} shown; <code>ses-relay queue list</code> lists all.</p>'
           if len(entries) >= limit else "")
        + '<p class="note">Read-only. Retry, hold, release and delete with <code>ses-relay queue</code>.</p>'
    )
    return page("Queue" + (f": {state}" if state else ""), body, active="Queue")


# -- suppression -----------------------------------------------------------------------------------


def suppression_page(
    entries: Sequence[SuppressionEntry], q: str, total: int | None, scanned: int | None, limit: int
) -> str:
    body = [search_form("/console/suppression", q, "An address, or part of one")]
    if total is not None:
        body.append(f'<p class="note">{total} entries in the store.</p>')
    rows = [
        [esc(e.address), badge(e.reason.value), esc(e.source), esc(stamp(e.created_at)), esc(e.detail or "-")]
        for e in entries
    ]
    body.append(table(["Address", "Reason", "Source", "Added (UTC)", "Detail"], rows,
                      empty=f"No entry matches {q}." if q else "The suppression list is empty."))
    if scanned is not None:
        body.append(f'<p class="note">Searched the first {scanned} entries for text containing it; a whole '
                    "address is looked up directly.</p>")
    if len(entries) >= limit:
        body.append(f'<p class="note">The first {limit} shown; <code>ses-relay suppression export</code> '
                    "writes all.</p>")
    return page("Suppression list", "".join(body), active="Suppression")
