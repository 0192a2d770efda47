"""relay.logs.RedactClientInput on aiosmtpd's "mail.log": what a client typed is never logged."""

from __future__ import annotations

import logging

from relay.logs import RedactClientInput

PEER = ("203.0.113.7", 40000)


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("mail.log", level, __file__, 1, msg, args, None)


def test_an_unknown_command_word_is_redacted_a_known_verb_kept():
    blob = "AGFsaWNlAHMzY3JldA=="
    entry = record("%r unrecognised: %s", PEER, blob.upper())
    assert RedactClientInput().filter(entry)
    assert blob.upper() not in entry.getMessage()
    assert "203.0.113.7" in entry.getMessage()
    flood = record("%r over limit for %s", PEER, "BDAT")
    assert RedactClientInput().filter(flood)
    assert flood.getMessage().endswith("BDAT")


def test_whole_client_lines_are_dropped_other_records_kept():
    assert not RedactClientInput().filter(record("%r >> %r", PEER, b"AUTH PLAIN AGFsaWNl", level=logging.INFO))
    assert not RedactClientInput().filter(record("_handle_client readline: %r", b"x", level=logging.DEBUG))
    assert RedactClientInput().filter(record("%r too many bogus commands", PEER))
