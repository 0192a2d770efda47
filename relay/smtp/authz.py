"""Sender authorisation: an authenticated user may send only as the senders its users-file line names.

Patterns are the users file's third field (relay.smtp.auth), comma-separated, case-insensitive:
`alerts@example.org` (that address), `*@example.com` (any address at that domain; `*` and `?` are
shell wildcards and never match `@`), `<>` (the null sender, for bounces). A user with no patterns
may use any sender. Sessions that did not authenticate (an allowed network) are not restricted here.

Checked twice: the envelope MAIL FROM (550 5.7.1 at MAIL) and every address in the `From:` header
(554 5.7.1 after DATA), so that a user cannot send as another domain with either.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from aiosmtpd.smtp import Session

from relay.message import MessageError, PreparedMessage
from relay.smtp import replies
from relay.smtp.auth import AuthenticatedUser

NULL_SENDER_PATTERN = "<>"
_PATTERNS: dict[tuple[str, ...], list[re.Pattern[str]]] = {}


def _compiled(patterns: tuple[str, ...]) -> list[re.Pattern[str]]:
    compiled = _PATTERNS.get(patterns)
    if compiled is None:
        compiled = []
        for pattern in patterns:
            if pattern == NULL_SENDER_PATTERN:
                continue
            text = "".join("[^@]*" if c == "*" else "[^@]" if c == "?" else re.escape(c) for c in pattern)
            compiled.append(re.compile(text, re.IGNORECASE))
        if len(_PATTERNS) < 4096:  # one entry per distinct users-file line
            _PATTERNS[patterns] = compiled
    return compiled


def sender_allowed(patterns: tuple[str, ...], address: str) -> bool:
    if not patterns:
        return True
    if address in ("", NULL_SENDER_PATTERN):
        return NULL_SENDER_PATTERN in patterns
    return any(p.fullmatch(address) for p in _compiled(patterns))


def _user(session: Session | None) -> AuthenticatedUser | None:
    data = getattr(session, "auth_data", None)
    return data if isinstance(data, AuthenticatedUser) else None


def authenticated_login(session: Session | None) -> str | None:
    """The user this session authenticated as (for the transaction record and the trace), or None."""
    user = _user(session)
    return user.login if user is not None else None


def check_envelope_sender(session: Session | None, address: str) -> str | None:
    """None, or the 550 5.7.1 reply for a MAIL FROM the authenticated user may not use."""
    user = _user(session)
    if user is None or sender_allowed(user.senders, address):
        return None
    return replies.SENDER_NOT_ALLOWED.format(user=user.login, address=address or NULL_SENDER_PATTERN)


def check_from_header(session: Session | None, prepared: PreparedMessage) -> None:
    """Raise MessageError(554 5.7.1) when a `From:` address is outside the user's patterns."""
    user = _user(session)
    if user is None or not user.senders:
        return
    for address in from_addresses(prepared.raw):
        if not address or not sender_allowed(user.senders, address):
            raise MessageError(replies.FROM_NOT_ALLOWED.format(user=user.login, address=address or "(none)"))


def from_addresses(raw: bytes | bytearray) -> list[str]:
    """Every address in every From: field of the header block (unfolded)."""
    values: list[str] = []
    current: list[bytes] | None = None
    pos, size = 0, len(raw)
    while pos < size:
        eol = raw.find(b"\n", pos)
        end = size if eol < 0 else eol + 1
        line = bytes(raw[pos:end]).rstrip(b"\r\n")
        pos = end
        if not line:
            break  # the empty line before the body
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(b" ".join(current).decode("ascii", "replace"))
            current = None
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"from":
            current = [value]
    if current is not None:
        values.append(b" ".join(current).decode("ascii", "replace"))
    addresses = [address for _, address in getaddresses(values)]
    return addresses or [""]
