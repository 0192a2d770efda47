"""Structured logging: one JSON object per line, or readable text with key=value fields."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from relay.logs import JsonFormatter, TextFormatter, configure_logging


def record(msg: str = "hello %s", args: tuple = ("world",), fields: dict | None = None, exc_info=None,
           level: int = logging.INFO, name: str = "relay.test") -> logging.LogRecord:
    extra = {"fields": fields} if fields is not None else None
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info, extra=extra)


def test_json_line_has_the_standard_keys_and_the_fields():
    line = JsonFormatter().format(
        record(fields={"queue_id": "abc", "recipients": 2, "reply": "250", "none": None, "list": ["a", "b"]})
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "relay.test"
    assert entry["msg"] == "hello world"
    assert entry["queue_id"] == "abc"
    assert entry["recipients"] == 2
    assert entry["none"] is None
    assert entry["list"] == ["a", "b"]
    assert set(entry) >= {"ts", "level", "logger", "msg"}
    assert entry["ts"].endswith("Z") and "T" in entry["ts"] and len(entry["ts"]) == len("2024-01-01T00:00:00.000Z")


def test_json_levels_are_lower_case():
    assert json.loads(JsonFormatter().format(record(level=logging.WARNING)))["level"] == "warning"
    assert json.loads(JsonFormatter().format(record(level=logging.ERROR)))["level"] == "error"


def test_json_without_fields_has_only_the_standard_keys():
    entry = json.loads(JsonFormatter().format(record("plain", ())))
    assert set(entry) == {"ts", "level", "logger", "msg"}
    assert entry["msg"] == "plain"


def test_json_non_serialisable_values_become_strings():
    entry = json.loads(JsonFormatter().format(record(fields={"path": __import__("pathlib").Path("/x/y"),
                                                             "bytes": b"\xff"})))
    assert entry["path"] == "/x/y"
    assert isinstance(entry["bytes"], str)


def test_json_includes_the_exception_and_stays_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        info = sys.exc_info()
    line = JsonFormatter().format(record("failed", (), exc_info=info, level=logging.ERROR))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "failed"
    assert "Traceback" in entry["exception"]
    assert "ValueError: boom" in entry["exception"]


def test_json_escapes_newlines_and_unicode_in_messages():
    line = JsonFormatter().format(record("a\nb \u00e9 %s", ("\u2603",)))
    assert "\n" not in line
    assert json.loads(line)["msg"] == "a\nb \u00e9 \u2603"


def test_text_renders_fields_as_key_value_and_skips_none():
    text = TextFormatter().format(record(fields={"queue_id": "abc", "recipients": 2, "error": None}))
    assert "INFO relay.test: hello world" in text
    assert text.endswith(" queue_id=abc recipients=2")
    assert "error=" not in text


def test_text_without_fields_is_the_plain_line():
    text = TextFormatter().format(record("plain", ()))
    assert text.endswith("INFO relay.test: plain")


def test_text_includes_the_exception():
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        info = sys.exc_info()
    text = TextFormatter().format(record("failed", (), exc_info=info, level=logging.ERROR))
    assert "RuntimeError: kaput" in text


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("mail.log", "botocore", "boto3", "urllib3",
                                                               "aiohttp.access")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_replaces_handlers_sets_level_and_quiets_libraries(restore_root_logging, fmt):
    stream = io.StringIO()
    configure_logging("warning", fmt, stream=stream)
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert root.level == logging.WARNING
    logging.getLogger("relay.x").info("not shown")
    logging.getLogger("relay.x").warning("shown", extra={"fields": {"k": "v"}})
    logging.getLogger("botocore").warning("library warning")
    assert logging.getLogger("mail.log").getEffectiveLevel() == logging.WARNING
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        first = json.loads(lines[0])
        assert (first["msg"], first["k"], first["level"]) == ("shown", "v", "warning")
        assert json.loads(lines[1])["logger"] == "botocore"
    else:
        assert lines[0].endswith("WARNING relay.x: shown k=v")


def test_configure_logging_quiets_chatty_library_info(restore_root_logging):
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    for name in ("mail.log", "botocore", "boto3", "urllib3", "aiohttp.access"):
        logging.getLogger(name).info("chatty")
    logging.getLogger("relay").debug("mine")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["mine"]
