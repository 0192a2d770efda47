"""RelaySMTP._getaddr's regex fast path must give exactly aiosmtpd's answer for every input (a parser crash: a syntax error)."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.server import RelaySMTP

# Characters that matter to the RFC 5322 parser: atext, specials, quotes, comments, literals, space.
PIECE = st.text(alphabet="abcXYZ09.!#$%&'*+/=?^_`{|}~-\"()[]<>@ \t,;:\\é", max_size=12)
ARGS = st.builds(
    lambda lead, local, at, domain, rest: lead + local + at + domain + rest,
    st.sampled_from(["<", "", " <", "<<"]),
    PIECE,
    st.sampled_from(["@", "@@", ""]),
    PIECE,
    st.sampled_from(["", ">", "> SIZE=2048", ">\tBODY=8BITMIME", "> (comment) SIZE=1", ">x"]),
)


def aiosmtpd_answer(smtp: RelaySMTP, arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own _getaddr, with its parser's exceptions (IndexError on e.g. "<@") as a syntax error."""
    try:
        return SMTP._getaddr(smtp, arg)
    except Exception:  # noqa: BLE001
        return None, None


def protocol(local_part_limit: int) -> RelaySMTP:
    smtp = RelaySMTP.__new__(RelaySMTP)  # _getaddr reads only local_part_limit
    smtp.local_part_limit = local_part_limit
    return smtp


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("<bob@example.org> SIZE=2048", ("bob@example.org", "SIZE=2048")),
        ("<a.b+tag@mail-1.example.co.uk>", ("a.b+tag@mail-1.example.co.uk", "")),
        ("<a@b> (comment) SIZE=1", ("a@b", "SIZE=1")),  # via aiosmtpd's parser
        ('<"quoted"@example.org>', ("quoted@example.org", "")),
        ("<a@[127.0.0.1]>", ("a@[127.0.0.1]", "")),
        ("<a@example.>", (None, None)),
        ("<@", (None, None)),  # aiosmtpd's parser raises IndexError here
        ("<0@[", (None, None)),  # ... and AttributeError here
    ],
)
def test_known_addresses(arg, expected):
    smtp = protocol(0)
    assert smtp._getaddr(arg) == expected
    assert aiosmtpd_answer(smtp, arg) == expected


@settings(max_examples=3000, deadline=None)
@given(arg=ARGS, limit=st.sampled_from([0, 3, 64]))
def test_fast_path_agrees_with_aiosmtpd(arg, limit):
    smtp = protocol(limit)
    assert smtp._getaddr(arg) == aiosmtpd_answer(smtp, arg)
