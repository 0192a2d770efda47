"""Header work on the raw MIME message, byte for byte.

SES sends Content.Raw as given, so two kinds of header must go before it does: Bcc (SES would
otherwise show it to every recipient) and the X-SES-* control headers that the SES SMTP interface
understands and that we turn into SendEmail parameters instead. Everything else, including the
body, must reach SES unchanged (DKIM signatures cover it), so we never re-serialise: we find the
fields to drop by offset and join the slices around them. The `email` package is not used because
it is slow on large messages and its output differs from its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.sending import ListManagement

__all__ = ["MessageError", "PreparedMessage", "prepare"]

MAX_TAG = 256
_TAG_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_TAG_SEPARATORS = re.compile(r"[,;]")
_WSP = (0x20, 0x09)

_CONFIGURATION_SET = b"x-ses-configuration-set"
_MESSAGE_TAGS = b"x-ses-message-tags"
_SOURCE_ARN = b"x-ses-source-arn"
_FROM_ARN = b"x-ses-from-arn"
_RETURN_PATH_ARN = b"x-ses-return-path-arn"
_LIST_MANAGEMENT = b"x-ses-list-management-options"
_CONTROL = frozenset(
    {_CONFIGURATION_SET, _MESSAGE_TAGS, _SOURCE_ARN, _FROM_ARN, _RETURN_PATH_ARN, _LIST_MANAGEMENT}
)
_REMOVED = _CONTROL | {b"bcc"}


class MessageError(ValueError):
    """A message we refuse. `reply` is the full SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _bad(reason: str) -> MessageError:
    return MessageError(f"554 5.6.0 {reason}")


@dataclass(slots=True)
class PreparedMessage:
    raw: bytes | bytearray  # what goes to SES as Content.Raw; prepare's input itself when nothing was removed
    message_id: str | None  # first Message-ID, for logs only
    configuration_set: str | None
    tags: dict[str, str]
    from_identity_arn: str | None
    feedback_identity_arn: str | None
    list_management: ListManagement | None
    removed_headers: list[str]  # lowercased names of the dropped fields, in message order
    # First Subject, unfolded, still encoded: for the message trace only (not compared: not a setting).
    subject: bytes | None = field(default=None, compare=False)


@dataclass(slots=True)
class _Field:
    name: bytes | None  # lowercased; None for a line with no ':' (kept as is)
    start: int  # offset of the first byte of the field
    colon: int  # offset of the ':' (or -1)
    end: int  # offset just past the field's last line ending

    def value(self, raw: bytes | bytearray) -> bytes:
        """Unfolded value (RFC 5322 unfolding: drop the line breaks), whitespace stripped."""
        return bytes(raw[self.colon + 1 : self.end]).replace(b"\r\n", b"").replace(b"\n", b"").strip()


def _scan_header(raw: bytes | bytearray) -> list[_Field]:
    """Split the header block into fields. Stops at the first empty line; the body is not read."""
    fields: list[_Field] = []
    pos, size = 0, len(raw)
    while pos < size:
        eol = raw.find(b"\n", pos)
        end = size if eol < 0 else eol + 1
        first = raw[pos]
        if first == 0x0A or raw.startswith(b"\r\n", pos):
            break  # the empty line: it and the body stay as they are
        if first in _WSP and fields:
            fields[-1].end = end  # continuation line of the previous field
        else:
            colon = raw.find(b":", pos, end)
            name = bytes(raw[pos:colon]).rstrip(b" \t").lower() if colon >= 0 else None
            fields.append(_Field(name, pos, colon, end))
        pos = end
    return fields


def _text(name: bytes, value: bytes) -> str:
    if not value.isascii():
        raise _bad(f"Non-ASCII characters in {name.decode().upper()} header")
    return value.decode("ascii")


def _parse_tags(text: str, tags: dict[str, str]) -> None:
    for item in _TAG_SEPARATORS.split(text):
        item = item.strip()
        if not item:
            continue  # tolerate "a=b," and "a=b;;c=d"
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq:
            raise _bad(f"Invalid X-SES-MESSAGE-TAGS: {item!r} is not name=value")
        for kind, part in (("name", name), ("value", value)):
            if not part:
                raise _bad(f"Invalid X-SES-MESSAGE-TAGS: empty tag {kind} in {item!r}")
            if len(part) > MAX_TAG:
                raise _bad(f"Invalid X-SES-MESSAGE-TAGS: tag {kind} longer than {MAX_TAG} characters")
            if not _TAG_CHARS.fullmatch(part):
                raise _bad(
                    f"Invalid X-SES-MESSAGE-TAGS: tag {kind} {part!r} may only contain "
                    "ASCII letters, digits, '_' and '-'"
                )
        if name in tags:
            raise _bad(f"Invalid X-SES-MESSAGE-TAGS: tag {name!r} given twice")
        tags[name] = value


def _parse_list_management(text: str) -> ListManagement:
    contact_list, _, options = text.partition(";")
    contact_list = contact_list.strip()
    if not contact_list:
        raise _bad("Invalid X-SES-LIST-MANAGEMENT-OPTIONS: no contact list name")
    topic = None
    for option in options.split(";"):
        option = option.strip()
        if not option:
            continue
        key, eq, value = option.partition("=")
        if not eq or key.strip().lower() != "topic" or not value.strip() or topic is not None:
            raise _bad(
                f"Invalid X-SES-LIST-MANAGEMENT-OPTIONS: {option!r}; expected 'contactListName; topic=name'"
            )
        topic = value.strip()
    return ListManagement(contact_list=contact_list, topic=topic)


def prepare(raw: bytes | bytearray) -> PreparedMessage:
    """Drop Bcc and X-SES-* header fields, returning their settings. Raises MessageError.

    `raw` may be the bytearray the SMTP server read DATA into: it is then passed on without a copy.
    """
    fields = _scan_header(raw)
    message_id: str | None = None
    subject: bytes | None = None
    has_from = False
    control: dict[bytes, str] = {}
    tags: dict[str, str] = {}
    removed: list[_Field] = []

    for f in fields:
        if f.name is None:
            continue
        if f.name == b"from":
            has_from = True
        elif f.name == b"message-id" and message_id is None:
            message_id = f.value(raw).decode("ascii", "replace")
        elif f.name == b"subject" and subject is None:
            subject = f.value(raw)
        elif f.name in _REMOVED:
            removed.append(f)
            if f.name == _MESSAGE_TAGS:
                _parse_tags(_text(f.name, f.value(raw)), tags)
            elif f.name in _CONTROL:
                # One value per setting: two different ones would leave us guessing.
                if f.name in control:
                    raise _bad(f"{f.name.decode().upper()} header given more than once")
                text = _text(f.name, f.value(raw))
                if not text:
                    raise _bad(f"Empty {f.name.decode().upper()} header")
                control[f.name] = text

    if not has_from:
        raise _bad("Message has no From: header; Amazon SES needs one")

    list_management = None
    if _LIST_MANAGEMENT in control:
        list_management = _parse_list_management(control[_LIST_MANAGEMENT])

    out = raw
    if removed:
        # One join of the kept slices; memoryview slices avoid copying the (possibly huge) body twice.
        view = memoryview(raw)
        kept, pos = [], 0
        for f in removed:
            if f.start > pos:
                kept.append(view[pos : f.start])
            pos = f.end
        kept.append(view[pos:])
        out = b"".join(kept)

    return PreparedMessage(
        raw=out,
        message_id=message_id,
        configuration_set=control.get(_CONFIGURATION_SET),
        tags=tags,
        from_identity_arn=control.get(_FROM_ARN, control.get(_SOURCE_ARN)),
        feedback_identity_arn=control.get(_RETURN_PATH_ARN),
        list_management=list_management,
        removed_headers=[f.name.decode("ascii", "replace") for f in removed if f.name is not None],
        subject=subject,
    )
