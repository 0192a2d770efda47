import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.addresses import AddressError, check_address, is_null_sender

# An independent statement of what an accepted address looks like (RFC 5321 narrowed for SES).
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# Quoted: printable ASCII, '"' and '\' only escaped; '<' and '>' are refused on purpose.
QTEXT = r"[ !#-;=?-\[\]-~]"
LOCAL = rf'(?:{ATEXT}+(?:\.{ATEXT}+)*|"(?:{QTEXT}|\\(?:{QTEXT}|["\\]))+")'
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ACCEPTED = re.compile(rf"({LOCAL})@({LABEL}(?:\.{LABEL})+)")
LITERAL = "553 5.1.3 Address literals such as [192.0.2.1] are not accepted by Amazon SES; use a domain name"
NON_ASCII = "553 5.6.7 Non-ASCII address requires SMTPUTF8, which this relay and Amazon SES do not support"


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com",
        "Bob.Smith+tag@mail.example.co.uk",
        "a@b.c",
        "!#$%&'*+-/=?^_`{|}~@example.com",
        '"john doe"@example.com',
        '"a@b"@example.com',
        '"quote\\"inside"@example.com',
        '"back\\\\slash"@example.com',
        '"ok.. dots"@example.com',
        "x@xn--bcher-kva.example",
        "x@123.example",
        "x@a-b.c-d.example",
        "l" * 64 + "@example.com",
        "x@" + "a" * 63 + ".com",
    ],
)
def test_accepts_and_returns_same_object(address: str) -> None:
    assert check_address(address) is address


def test_longest_address_accepted() -> None:
    address = "l" * 64 + "@" + ".".join(["d" * 63, "d" * 63, "d" * 61])
    assert len(address) == 254
    assert check_address(address) is address


@pytest.mark.parametrize(
    "address, reply",
    [
        ("bob@exämple.com", NON_ASCII),
        ("bøb@example.com", NON_ASCII),
        ('"jöhn"@example.com', NON_ASCII),
        ("bob", "553 5.1.3 Address has no @domain part"),
        ("@example.com", "553 5.1.3 Address has an empty local part"),
        ('""@example.com', "553 5.1.3 Address has an empty local part"),
        ("bob@", "553 5.1.3 Address has an empty domain"),
        (".bob@example.com", "553 5.1.3 Local part starts or ends with a dot"),
        ("bob.@example.com", "553 5.1.3 Local part starts or ends with a dot"),
        ("bo..b@example.com", "553 5.1.3 Local part contains consecutive dots"),
        ("bob smith@example.com", "553 5.1.3 Space in local part outside quotes"),
        ("bob(x)@example.com", "553 5.1.3 Invalid character '(' in local part"),
        ("a@b@example.com", "553 5.1.3 Invalid character '@' in local part"),
        ('"unterminated@example.com', "553 5.1.3 Malformed quoted local part"),
        ('"a"b"@example.com', "553 5.1.3 Malformed quoted local part"),
        ('"trailing\\"@example.com', "553 5.1.3 Malformed quoted local part"),
        ("l" * 65 + "@example.com", "553 5.1.3 Local part longer than 64 characters"),
        ("bob@localhost", "553 5.1.3 Domain has no dot; Amazon SES cannot deliver to a bare hostname"),
        ("bob@.example.com", "553 5.1.3 Domain has an empty label (leading, trailing or double dot)"),
        ("bob@example.com.", "553 5.1.3 Domain has an empty label (leading, trailing or double dot)"),
        ("bob@example..com", "553 5.1.3 Domain has an empty label (leading, trailing or double dot)"),
        ("bob@" + "a" * 64 + ".com", "553 5.1.3 Domain label too long"),
        ("bob@-example.com", "553 5.1.3 Domain label starts or ends with a hyphen"),
        ("bob@example-.com", "553 5.1.3 Domain label starts or ends with a hyphen"),
        ("bob@exa_mple.com", "553 5.1.3 Invalid character '_' in domain"),
        ("bob@exa mple.com", "553 5.1.3 Space in domain"),
        (
            "bob@[192.0.2.1]",
            LITERAL,
        ),
        (
            "bob@[IPv6:2001:db8::1]",
            LITERAL,
        ),
        ("bob\r\n@example.com", "553 5.1.3 Address contains a control character"),
        ('"a\tb"@example.com', "553 5.1.3 Address contains a control character"),
        ("bob@example.com\x00", "553 5.1.3 Address contains a control character"),
        ("bob@example.com\x7f", "553 5.1.3 Address contains a control character"),
        ("<bob@example.com>", "553 5.1.3 Address contains '<' or '>'"),
        ("bob>@example.com", "553 5.1.3 Address contains '<' or '>'"),
        ("l@" + ".".join(["d" * 63] * 4), "553 5.1.3 Address longer than 254 characters"),
    ],
)
def test_rejects_with_reason(address: str, reply: str) -> None:
    with pytest.raises(AddressError) as info:
        check_address(address)
    assert info.value.reply == reply
    assert str(info.value) == reply
    assert isinstance(info.value, ValueError)


def test_null_sender() -> None:
    assert is_null_sender("")
    assert not is_null_sender("bob@example.com")
    assert not is_null_sender(" ")


def _check_or_none(address: str) -> str | None:
    try:
        return check_address(address)
    except AddressError as exc:
        assert re.fullmatch(r"553 5\.(1\.3|6\.7) \S.*", exc.reply), exc.reply
        return None


def _assert_well_formed(address: str) -> None:
    assert address.isascii()
    assert len(address) <= 254
    m = ACCEPTED.fullmatch(address)
    assert m is not None, address
    assert len(m.group(1)) <= 64


@given(st.text())
def test_arbitrary_text_only_address_error(address: str) -> None:
    result = _check_or_none(address)
    if result is not None:
        assert result is address
        _assert_well_formed(address)


# Text made of the characters that matter, so accepting paths are actually reached.
@given(st.text(alphabet='ab.-@"\\ [] :<>\t\x00é_(+', max_size=30))
def test_near_addresses_only_address_error(address: str) -> None:
    result = _check_or_none(address)
    if result is not None:
        _assert_well_formed(address)


labels = st.from_regex(LABEL, fullmatch=True)
locals_ = st.from_regex(LOCAL, fullmatch=True).filter(lambda s: len(s) <= 64)


@given(locals_, st.lists(labels, min_size=2, max_size=4))
def test_generated_valid_addresses_accepted(local: str, domain_labels: list[str]) -> None:
    address = local + "@" + ".".join(domain_labels)
    result = _check_or_none(address)
    if len(address) <= 254:
        assert result is address
    else:
        assert result is None
