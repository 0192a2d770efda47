"""HTML building blocks for the console: escaping, the page frame, tables.

Everything a client or SES sent (addresses, subjects, diagnostics) is escaped here: a Subject of
`<script>` must show as text. The pages carry no script and the Content-Security-Policy
(relay.console.routes) forbids one, so an escaping slip still cannot run code.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

NAV = (("Overview", "/console"), ("Messages", "/console/messages"), ("Queue", "/console/queue"),
       ("Suppression", "/console/suppression"))


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def link(href: str, text: Any, **query: Any) -> str:
    if query:
        href += "?" + urlencode({k: v for k, v in query.items() if v not in (None, "")})
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def message_link(queue_id: str | None, text: Any = None) -> str:
    if not queue_id:
        return esc(text or "-")
    return link("/console/messages/" + quote(queue_id, safe=""), text or queue_id)


def badge(state: Any) -> str:
    """A state as a coloured label; the class is from a closed set, never the raw text."""
    kind = {
        "delivered": "good", "sent": "good",
        "queued": "wait", "deferred": "wait", "delayed": "wait", "accepted": "wait",
        "held": "wait",
        "bounced": "bad", "complained": "bad", "rejected": "bad", "dead": "bad", "refused": "bad",
        "failed": "bad", "BOUNCE": "bad", "COMPLAINT": "bad",
    }.get(str(state), "info")
    return f'<span class="badge {kind}">{esc(state)}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "Nothing to show.") -> str:
    """Cells are HTML already (escape with esc() or build with link())."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """A two-column key/value table; values are HTML already."""
    rows = "".join(f"<tr><th>{esc(key)}</th><td>{value}</td></tr>" for key, value in items)
    return f'<table class="pairs">{rows}</table>'


def search_form(action: str, q: str, placeholder: str, extra: str = "") -> str:
    return (
        f'<form class="search" method="get" action="{esc(action)}">'
        f'<input type="search" name="q" value="{esc(q)}" placeholder="{esc(placeholder)}" '
        f'aria-label="{esc(placeholder)}" autofocus>{extra}'
        '<button type="submit">Search</button></form>'
    )


def page(title: str, body: str, active: str = "") -> str:
    current = ' class="active"'
    nav = "".join(
        f'<a href="{href}"{current if name == active else ""}>{name}</a>' for name, href in NAV
    )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · ses-relay</title>"
        '<link rel="stylesheet" href="/console/style.css"></head><body>'
        f'<header><span class="brand">ses-relay</span><nav>{nav}</nav></header>'
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


STYLE = """
:root { --fg: #1d232a; --muted: #5f6b76; --line: #d8dee4; --bg: #f6f8fa; --good: #1a7f37;
        --wait: #9a6700; --bad: #cf222e; --info: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: #fff; }
header { display: flex; gap: 2em; align-items: center; padding: .6em 1.5em; background: var(--fg); }
header .brand { color: #fff; font-weight: 600; }
header nav a { color: #c9d1d9; margin-right: 1.2em; text-decoration: none; }
header nav a.active, header nav a:hover { color: #fff; }
main { padding: 1em 1.5em 3em; max-width: 1200px; }
h1 { font-size: 1.4em; margin: .4em 0 .8em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .6em; }
table { border-collapse: collapse; width: 100%; margin: .4em 0; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid var(--line); vertical-align: top;
         overflow-wrap: anywhere; }
thead th { background: var(--bg); font-weight: 600; }
table.pairs th { width: 14em; color: var(--muted); font-weight: normal; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: .85em; color: #fff; }
.badge.good { background: var(--good); } .badge.wait { background: var(--wait); }
.badge.bad { background: var(--bad); } .badge.info { background: var(--info); }
form.search { display: flex; gap: .5em; margin: .5em 0 1em; }
form.search input[type=search] { flex: 1; max-width: 40em; padding: .4em .6em; border: 1px solid var(--line);
                                 border-radius: 4px; font: inherit; }
form.search button, form.search select { padding: .4em 1em; font: inherit; }
.empty, .note { color: var(--muted); }
.error { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .7em 1em; min-width: 12em; }
.card .value { font-size: 1.5em; font-weight: 600; }
.card.bad .value { color: var(--bad); } .card.wait .value { color: var(--wait); }
.card.good .value { color: var(--good); }
ol.timeline { list-style: none; padding: 0; border-left: 3px solid var(--line); margin-left: .5em; }
ol.timeline li { padding: .3em 0 .8em 1em; }
ol.timeline .when { color: var(--muted); font-family: ui-monospace, monospace; font-size: .9em; }
ol.timeline .what { font-weight: 600; margin: 0 .4em; }
code, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
svg.chart { width: 100%; max-width: 1000px; height: auto; display: block; }
svg.chart .axis { stroke: var(--line); }
svg.chart text { font-size: 11px; fill: var(--muted); }
svg.chart .sent { fill: var(--info); } svg.chart .bounced { fill: var(--bad); }
svg.chart .complained { fill: var(--wait); }
.legend span { margin-right: 1.2em; } .legend i { display: inline-block; width: .8em; height: .8em;
  margin-right: .3em; vertical-align: -1px; }
.legend .sent { background: var(--info); } .legend .bounced { background: var(--bad); }
.legend .complained { background: var(--wait); }
"""
