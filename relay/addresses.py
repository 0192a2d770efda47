"""Envelope address checks: at MAIL FROM / RCPT TO time, and on every row of a suppression import.

Shared by the SMTP layer and the suppression store, so it depends on neither.

Amazon SES rejects the whole SendEmail call when any one destination is malformed, non-ASCII
(no SMTPUTF8) or an address literal. Checking each address when the client gives it lets us refuse
just that recipient with a 553, so the client bounces only that one and the rest of the message
still goes out. The rules are RFC 5321's grammar narrowed to what SES accepts.
"""

from __future__ import annotations

import re

__all__ = ["AddressError", "check_address", "is_null_sender"]

MAX_ADDRESS = 254  # RFC 5321 path limit (256) minus the angle brackets
MAX_LOCAL = 64
MAX_LABEL = 63

# RFC 5321 Dot-string: atext runs separated by single dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_ATEXT_CHAR = re.compile(_ATEXT)
# RFC 5321 Quoted-string: qtextSMTP (printable ASCII but '"' and '\') or a backslash pair.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_LABEL_CHARS = re.compile(r"[A-Za-z0-9-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AddressError(ValueError):
    """An address we refuse. `reply` is the full SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _bad(reason: str) -> AddressError:
    return AddressError(f"553 5.1.3 {reason}")


def is_null_sender(address: str) -> bool:
    """True for MAIL FROM:<> (bounces, DSNs), which aiosmtpd hands over as ""."""
    return address == ""


def check_address(address: str) -> str:
    """Return `address` unchanged if SES can take it, else raise AddressError."""
    if not address.isascii():
        raise AddressError(
            "553 5.6.7 Non-ASCII address requires SMTPUTF8, which this relay and Amazon SES do not support"
        )
    if _CONTROL.search(address):
        raise _bad("Address contains a control character")
    # Angle brackets are legal inside a quoted local part, but here they mean the client's
    # path was mangled (e.g. "<<a@b>>"); SES would not take them either.
    if "<" in address or ">" in address:
        raise _bad("Address contains '<' or '>'")
    if len(address) > MAX_ADDRESS:
        raise _bad(f"Address longer than {MAX_ADDRESS} characters")
    # The domain can never contain '@', so the last one splits (a quoted local part may hold '@').
    local, at, domain = address.rpartition("@")
    if not at:
        raise _bad("Address has no @domain part")
    if not local:
        raise _bad("Address has an empty local part")
    if not domain:
        raise _bad("Address has an empty domain")
    _check_local(local)
    _check_domain(domain)
    return address


def _check_local(local: str) -> None:
    if len(local) > MAX_LOCAL:
        raise _bad(f"Local part longer than {MAX_LOCAL} characters")
    if local.startswith('"'):
        if not _QUOTED.fullmatch(local):
            raise _bad("Malformed quoted local part")
        if local == '""':
            raise _bad("Address has an empty local part")
        return
    if _DOT_ATOM.fullmatch(local):
        return
    # Not a dot-atom: find out why, so the reply says what to fix.
    if local.startswith(".") or local.endswith("."):
        raise _bad("Local part starts or ends with a dot")
    if ".." in local:
        raise _bad("Local part contains consecutive dots")
    for ch in local:
        if ch != "." and not _ATEXT_CHAR.fullmatch(ch):
            if ch == " ":
                raise _bad("Space in local part outside quotes")
            raise _bad(f"Invalid character {ch!r} in local part")
    raise _bad("Malformed local part")  # not reached; kept as a safe default


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        raise _bad("Address literals such as [192.0.2.1] are not accepted by Amazon SES; use a domain name")
    # No separate 255-octet domain check: the 254-octet address limit already implies it.
    labels = domain.split(".")
    if len(labels) < 2:
        raise _bad("Domain has no dot; Amazon SES cannot deliver to a bare hostname")
    for label in labels:
        if not label:
            raise _bad("Domain has an empty label (leading, trailing or double dot)")
        if len(label) > MAX_LABEL:
            raise _bad("Domain label too long")
        if not _LABEL_CHARS.fullmatch(label):
            bad = next(ch for ch in label if not (ch.isalnum() or ch == "-"))
            if bad == " ":
                raise _bad("Space in domain")
            raise _bad(f"Invalid character {bad!r} in domain")
        if label.startswith("-") or label.endswith("-"):
            raise _bad("Domain label starts or ends with a hyphen")
