import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.message import MessageError, PreparedMessage, prepare
from relay.sending import ListManagement

BODY = b"Hello,\r\n\r\nBcc: x@example.com\r\nX-SES-CONFIGURATION-SET: nope\r\n-- \r\nbye\r\n"


def msg(*lines: bytes, body: bytes = BODY, eol: bytes = b"\r\n") -> bytes:
    return b"".join(line + eol for line in lines) + eol + body


def test_nothing_removed_returns_same_object() -> None:
    raw = msg(b"From: a@example.com", b"To: b@example.com", b"Subject: hi")
    result = prepare(raw)
    assert result.raw is raw
    assert result == PreparedMessage(
        raw=raw,
        message_id=None,
        configuration_set=None,
        tags={},
        from_identity_arn=None,
        feedback_identity_arn=None,
        list_management=None,
        removed_headers=[],
    )


def test_bcc_single_line_removed_to_cc_untouched() -> None:
    raw = msg(
        b"From: a@example.com",
        b"To: b@example.com",
        b"Bcc: hidden@example.com",
        b"Cc: c@example.com",
        b"Subject: hi",
    )
    result = prepare(raw)
    assert result.raw == msg(
        b"From: a@example.com", b"To: b@example.com", b"Cc: c@example.com", b"Subject: hi"
    )
    assert result.removed_headers == ["bcc"]


def test_bcc_folded_multiple_and_any_case() -> None:
    raw = (
        b"Bcc: one@example.com,\r\n"
        b"\ttwo@example.com,\r\n"
        b"  three@example.com\r\n"
        b"From: a@example.com\r\n"
        b"bcc: four@example.com\r\n"
        b"To: b@example.com,\r\n"
        b" c@example.com\r\n"
        b"BCC:\r\n"
        b"\r\n" + BODY
    )
    result = prepare(raw)
    assert result.raw == b"From: a@example.com\r\nTo: b@example.com,\r\n c@example.com\r\n\r\n" + BODY
    assert result.removed_headers == ["bcc", "bcc", "bcc"]


def test_body_lines_that_look_like_headers_stay() -> None:
    raw = msg(
        b"From: a@example.com", b"Bcc: h@example.com", body=b"Bcc: x\r\nX-SES-MESSAGE-TAGS: bad tag\r\n"
    )
    result = prepare(raw)
    assert result.raw == b"From: a@example.com\r\n\r\nBcc: x\r\nX-SES-MESSAGE-TAGS: bad tag\r\n"
    assert result.tags == {}


def test_lf_only_message() -> None:
    raw = b"From: a@example.com\nBcc: h@example.com,\n i@example.com\nTo: b@example.com\n\nBcc: x\nbody\n"
    result = prepare(raw)
    assert result.raw == b"From: a@example.com\nTo: b@example.com\n\nBcc: x\nbody\n"


def test_lf_only_blank_line_ends_header_even_with_crlf_body() -> None:
    raw = b"From: a@example.com\n\nBcc: x\r\n"
    assert prepare(raw).raw is raw


def test_message_without_blank_line_is_all_headers() -> None:
    raw = b"From: a@example.com\r\nBcc: h@example.com\r\nSubject: s"
    assert prepare(raw).raw == b"From: a@example.com\r\nSubject: s"
    raw = b"Subject: s\r\nFrom: a@example.com\r\nBcc: h@example.com"
    assert prepare(raw).raw == b"Subject: s\r\nFrom: a@example.com\r\n"


def test_empty_body_and_bytes_identity_of_body() -> None:
    body = bytes(range(256)) * 3
    raw = msg(b"From: a@example.com", b"Bcc: b@example.com", body=body)
    assert prepare(raw).raw == b"From: a@example.com\r\n\r\n" + body
    raw = msg(b"Bcc: b@example.com", b"From: a@example.com", body=b"")
    assert prepare(raw).raw == b"From: a@example.com\r\n\r\n"


def test_similar_names_are_not_removed() -> None:
    raw = msg(
        b"From: a@example.com",
        b"X-Bcc: kept",
        b"Bccx: kept",
        b"X-SES-OTHER: kept",
        b"X-SES-CONFIGURATION-SETS: kept",
        b"Resent-Bcc: kept",
    )
    assert prepare(raw).raw is raw


def test_lines_without_colon_are_kept() -> None:
    raw = msg(b"From: a@example.com", b"garbage line", b"Bcc: x@example.com", b" continued", b"more garbage")
    result = prepare(raw)
    assert result.raw == msg(b"From: a@example.com", b"garbage line", b"more garbage")


def test_whitespace_before_colon_still_matches() -> None:
    raw = msg(b"From : a@example.com", b"Bcc \t: x@example.com")
    assert prepare(raw).raw == msg(b"From : a@example.com")


def test_ses_headers_parsed_and_removed() -> None:
    raw = msg(
        b"Received: from x by y",
        b"X-SES-CONFIGURATION-SET:  my-config_set ",
        b"From: a@example.com",
        b"x-ses-message-tags: campaign=spring_2024, kind=promo;",
        b" team=growth-1",
        b"X-SES-SOURCE-ARN: arn:aws:ses:eu-west-1:123456789012:identity/source.example.com",
        b"X-Ses-Return-Path-Arn: arn:aws:ses:eu-west-1:123456789012:identity/bounce.example.com",
        b"X-SES-LIST-MANAGEMENT-OPTIONS: newsletter; topic=weekly",
        b"Subject: hi",
    )
    result = prepare(raw)
    assert result.raw == msg(b"Received: from x by y", b"From: a@example.com", b"Subject: hi")
    assert result.configuration_set == "my-config_set"
    assert result.tags == {"campaign": "spring_2024", "kind": "promo", "team": "growth-1"}
    assert result.from_identity_arn == "arn:aws:ses:eu-west-1:123456789012:identity/source.example.com"
    assert result.feedback_identity_arn == "arn:aws:ses:eu-west-1:123456789012:identity/bounce.example.com"
    assert result.list_management == ListManagement(contact_list="newsletter", topic="weekly")
    assert result.removed_headers == [
        "x-ses-configuration-set",
        "x-ses-message-tags",
        "x-ses-source-arn",
        "x-ses-return-path-arn",
        "x-ses-list-management-options",
    ]


def test_folded_configuration_set_is_unfolded() -> None:
    raw = msg(b"From: a@example.com", b"X-SES-CONFIGURATION-SET:", b"\tmy-set")
    result = prepare(raw)
    assert result.configuration_set == "my-set"
    assert result.raw == msg(b"From: a@example.com")


def test_from_arn_wins_over_source_arn() -> None:
    for order in (1, -1):
        lines = [b"X-SES-FROM-ARN: arn:from", b"X-SES-SOURCE-ARN: arn:source"][::order]
        result = prepare(msg(b"From: a@example.com", *lines))
        assert result.from_identity_arn == "arn:from"
        assert result.raw == msg(b"From: a@example.com")


def test_list_management_without_topic() -> None:
    result = prepare(msg(b"From: a@example.com", b"X-SES-LIST-MANAGEMENT-OPTIONS: newsletter"))
    assert result.list_management == ListManagement(contact_list="newsletter", topic=None)


def test_tags_from_several_headers_are_merged() -> None:
    result = prepare(msg(b"From: a@example.com", b"X-SES-MESSAGE-TAGS: a=1", b"X-SES-MESSAGE-TAGS: b=2; c=3"))
    assert result.tags == {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize(
    "value, why",
    [
        (b"campaign", "'campaign' is not name=value"),
        (b"a=1, nope", "'nope' is not name=value"),
        (b"=value", "empty tag name in '=value'"),
        (b"name=", "empty tag value in 'name='"),
        (b"na me=v", "tag name 'na me' may only contain ASCII letters, digits, '_' and '-'"),
        (b"name=v.1", "tag value 'v.1' may only contain ASCII letters, digits, '_' and '-'"),
        (b"a=b=c", "tag value 'b=c' may only contain ASCII letters, digits, '_' and '-'"),
        (b"n" * 257 + b"=v", "tag name longer than 256 characters"),
        (b"n=" + b"v" * 257, "tag value longer than 256 characters"),
        (b"a=1, a=2", "tag 'a' given twice"),
    ],
)
def test_invalid_tags(value: bytes, why: str) -> None:
    with pytest.raises(MessageError) as info:
        prepare(msg(b"From: a@example.com", b"X-SES-MESSAGE-TAGS: " + value))
    assert info.value.reply == "554 5.6.0 Invalid X-SES-MESSAGE-TAGS: " + why
    assert str(info.value) == info.value.reply


def test_tag_of_256_chars_is_fine() -> None:
    result = prepare(msg(b"From: a@example.com", b"X-SES-MESSAGE-TAGS: " + b"n" * 256 + b"=" + b"v" * 256))
    assert result.tags == {"n" * 256: "v" * 256}


@pytest.mark.parametrize(
    "lines, reply",
    [
        ([b"X-SES-CONFIGURATION-SET:   "], "554 5.6.0 Empty X-SES-CONFIGURATION-SET header"),
        ([b"X-SES-CONFIGURATION-SET:", b" "], "554 5.6.0 Empty X-SES-CONFIGURATION-SET header"),
        ([b"X-SES-SOURCE-ARN:"], "554 5.6.0 Empty X-SES-SOURCE-ARN header"),
        (
            [b"X-SES-CONFIGURATION-SET: caf\xc3\xa9"],
            "554 5.6.0 Non-ASCII characters in X-SES-CONFIGURATION-SET header",
        ),
        ([b"X-SES-MESSAGE-TAGS: a=\xff"], "554 5.6.0 Non-ASCII characters in X-SES-MESSAGE-TAGS header"),
        (
            [b"X-SES-CONFIGURATION-SET: a", b"x-ses-configuration-set: b"],
            "554 5.6.0 X-SES-CONFIGURATION-SET header given more than once",
        ),
        (
            [b"X-SES-LIST-MANAGEMENT-OPTIONS: ; topic=t"],
            "554 5.6.0 Invalid X-SES-LIST-MANAGEMENT-OPTIONS: no contact list name",
        ),
        (
            [b"X-SES-LIST-MANAGEMENT-OPTIONS: list; colour=blue"],
            "554 5.6.0 Invalid X-SES-LIST-MANAGEMENT-OPTIONS: 'colour=blue'; "
            "expected 'contactListName; topic=name'",
        ),
    ],
)
def test_invalid_control_headers(lines: list[bytes], reply: str) -> None:
    with pytest.raises(MessageError) as info:
        prepare(msg(b"From: a@example.com", *lines))
    assert info.value.reply == reply


@pytest.mark.parametrize(
    "raw",
    [
        msg(b"To: b@example.com", b"Subject: no from"),
        msg(b"To: b@example.com", body=b"From: a@example.com\r\n"),  # From: in the body does not count
        msg(b"X-From: a@example.com", b" From: folded, not a field"),
        b"",
        b"\r\n\r\nFrom: a@example.com\r\n",
    ],
)
def test_missing_from(raw: bytes) -> None:
    with pytest.raises(MessageError) as info:
        prepare(raw)
    assert info.value.reply == "554 5.6.0 Message has no From: header; Amazon SES needs one"


def test_from_is_case_insensitive() -> None:
    raw = msg(b"fROM: a@example.com")
    assert prepare(raw).raw is raw


def test_message_id_extraction() -> None:
    raw = msg(b"From: a@example.com", b"Message-ID:", b"  <abc.123@example.com>  ", b"message-id: <second@x>")
    result = prepare(raw)
    assert result.message_id == "<abc.123@example.com>"
    assert result.raw is raw


def test_message_id_non_ascii_does_not_raise() -> None:
    assert prepare(msg(b"From: a@example.com", b"Message-Id: <\xff@x>")).message_id == "<\ufffd@x>"


# --- property tests -------------------------------------------------------------------------------

PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
TOKEN = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
OTHER_NAMES = st.sampled_from(
    ["To", "Cc", "Subject", "Received", "X-Bcc", "Resent-Bcc", "Bccx", "X-SES-OTHER", "DKIM-Signature"]
) | st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: n.lower() not in {"bcc", "from", "message-id"} and not n.lower().startswith("x-ses-")
)


@st.composite
def random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def folded(draw: st.DrawFn, value: str, eol: bytes) -> bytes:
    """The value with line breaks inserted before some spaces/tabs (RFC 5322 folding)."""
    out = b""
    for word in value.split(" "):
        if out or word:
            sep = draw(st.sampled_from([b" ", b" ", eol + b" ", eol + b"\t", eol + b"  "]))
            out += sep + word.encode()
    return out


@st.composite
def header_case(draw: st.DrawFn) -> tuple[bytes, list[bool], dict]:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    expected: dict = {"configuration_set": None, "tags": {}, "arn": None, "feedback": None, "list": None}
    fields: list[tuple[str, str, bool]] = []  # name, value, removed
    for _ in range(draw(st.integers(0, 6))):
        fields.append((draw(OTHER_NAMES), draw(PRINTABLE), False))
    for _ in range(draw(st.integers(0, 3))):
        fields.append(("Bcc", draw(PRINTABLE), True))
    fields.append(("From", draw(PRINTABLE), False))
    if draw(st.booleans()):
        expected["configuration_set"] = draw(TOKEN)
        fields.append(("X-SES-CONFIGURATION-SET", expected["configuration_set"], True))
    if draw(st.booleans()):
        tags = draw(st.dictionaries(TOKEN, TOKEN, min_size=1, max_size=4))
        sep = draw(st.sampled_from([", ", ";", " ; ", ","]))
        expected["tags"] = tags
        fields.append(("X-SES-MESSAGE-TAGS", sep.join(f"{k}={v}" for k, v in tags.items()), True))
    if draw(st.booleans()):
        expected["arn"] = "arn:aws:ses:us-east-1:1:identity/" + draw(TOKEN)
        fields.append(("X-SES-SOURCE-ARN", expected["arn"], True))
    if draw(st.booleans()):
        expected["feedback"] = "arn:aws:ses:us-east-1:1:identity/" + draw(TOKEN)
        fields.append(("X-SES-RETURN-PATH-ARN", expected["feedback"], True))
    if draw(st.booleans()):
        topic = draw(st.none() | TOKEN)
        contact_list = draw(TOKEN)
        expected["list"] = ListManagement(contact_list=contact_list, topic=topic)
        fields.append(
            ("X-SES-LIST-MANAGEMENT-OPTIONS", contact_list + (f"; topic={topic}" if topic else ""), True)
        )
    fields = draw(st.permutations(fields))

    lines, removed = [], []
    for name, value, is_removed in fields:
        lines.append(draw(random_case(name)).encode() + b":" + draw(folded(value, eol)) + eol)
        removed.append(is_removed)
    # Bodies that look like headers catch a scan that runs past the blank line.
    body_lines = st.lists(
        st.sampled_from([b"Bcc: x", b"X-SES-CONFIGURATION-SET: y", b"", b" z"]) | st.binary(max_size=20)
    )
    body = draw(st.binary(max_size=200) | body_lines.map(lambda ls: b"".join(line + eol for line in ls)))
    expected["kept"] = b"".join(line for line, r in zip(lines, removed, strict=True) if not r) + eol + body
    expected["removed"] = [name.lower() for name, _, r in fields if r]
    return b"".join(lines) + eol + body, removed, expected


@given(header_case())
def test_property_output_is_input_minus_removed_fields(case: tuple[bytes, list[bool], dict]) -> None:
    raw, removed, expected = case
    result = prepare(raw)
    assert result.raw == expected["kept"]
    if not any(removed):
        assert result.raw is raw
    assert result.removed_headers == expected["removed"]
    assert result.configuration_set == expected["configuration_set"]
    assert result.tags == expected["tags"]
    assert result.from_identity_arn == expected["arn"]
    assert result.feedback_identity_arn == expected["feedback"]
    assert result.list_management == expected["list"]


def _prepare_or_error(raw: bytes) -> None:
    try:
        result = prepare(raw)
    except MessageError as exc:
        assert exc.reply.startswith("554 5.6.0 ")
        return
    assert len(result.raw) <= len(raw)
    if not result.removed_headers:
        assert result.raw is raw


@given(st.binary())
def test_property_arbitrary_bytes_only_message_error(raw: bytes) -> None:
    _prepare_or_error(raw)


HEADERISH = st.lists(
    st.sampled_from(
        [
            b"From: a",
            b"Bcc: b",
            b"bcc:",
            b" x",
            b"\t",
            b"X-SES-MESSAGE-TAGS: a=b",
            b"x-ses-message-tags: a",
            b"X-SES-CONFIGURATION-SET:",
            b"X-SES-LIST-MANAGEMENT-OPTIONS: l; topic=",
            b"Message-ID: <\xff>",
            b"X-SES-FROM-ARN: \x00",
            b"\r\n",
            b"\n",
            b"\r",
            b":",
            b"",
        ]
    )
    | st.binary(max_size=10)
).map(b"".join)


@given(HEADERISH)
def test_property_headerish_bytes_only_message_error(raw: bytes) -> None:
    _prepare_or_error(raw)
