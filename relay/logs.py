"""Structured logs: one JSON object per line (default) or readable text.

Callers attach machine-readable data as `extra={"fields": {...}}`; it becomes top-level keys in JSON
and `key=value` pairs in text. Message bodies and passwords are never passed here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        return text


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    quiet_libraries()


def quiet_libraries() -> None:
    # aiosmtpd logs every command (addresses included) at INFO, and boto at INFO is chatty.
    for name in ("mail.log", "botocore", "boto3", "urllib3", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    smtp_log = logging.getLogger("mail.log")
    if not any(isinstance(existing, RedactClientInput) for existing in smtp_log.filters):
        smtp_log.addFilter(RedactClientInput())


# SMTP verbs kept in aiosmtpd's "unrecognised" / "over limit" lines; anything else a client sends as
# a command word may be a secret (a base64 AUTH password sent out of step) and is redacted.
_SMTP_VERBS = frozenset({
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "STARTTLS", "AUTH", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML", "VERB", "XCLIENT",
    "XFORWARD", "XEXCH50", "X-EXPS", "CHUNKING", "ONEX", "GET", "POST", "HEAD", "PUT", "CONNECT",
})
# aiosmtpd log formats whose last argument is a command word the client sent.
_COMMAND_FORMATS = frozenset({"%r unrecognised: %s", "%r over limit for %s"})
# aiosmtpd log formats that carry whole client lines (AUTH answers included): never kept.
_LINE_FORMATS = frozenset({"%r >> %r", "_handle_client readline: %r"})


class RedactClientInput(logging.Filter):
    """On aiosmtpd's "mail.log": keeps the peer and what happened, never what the client typed.

    A client out of step (e.g. one that sends its AUTH LOGIN password after the server gave up
    on the exchange) makes aiosmtpd log that line's first word at WARNING as an unknown command.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in _LINE_FORMATS:
            return False
        if record.msg in _COMMAND_FORMATS and isinstance(record.args, tuple) and len(record.args) == 2:
            peer, command = record.args
            if str(command).upper() not in _SMTP_VERBS:
                record.args = (peer, f"<{len(str(command))} characters, not logged>")
        return True
