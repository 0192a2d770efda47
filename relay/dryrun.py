"""`Sender` for `ses.dry_run: true`: everything but the SES call; each message saved as an .eml file.

The envelope goes into `X-Relay-*` headers on top of the message so the file is self-describing.
Files are fsynced: a 250 in dry-run mode still means "safely on disk".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

from relay.files import atomic_writer
from relay.sending import Accepted, OutgoingMessage, TransientSendError
from relay.startup import StartupError

log = logging.getLogger("relay.dryrun")
SAVED = "250 2.0.0 Ok {message_id} (dry run: saved, not sent)"


class DryRunSender:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._prepare_dir)
        except OSError as exc:
            raise StartupError(f"dry-run directory {self.directory}: {exc.strerror or exc}") from None
        log.warning("dry run: nothing is sent to Amazon SES; accepted mail is saved under %s", self.directory)

    def _prepare_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def close(self) -> None:
        return None

    def readiness(self) -> tuple[bool, str]:
        return True, "dry run"

    async def send(self, message: OutgoingMessage) -> Accepted:
        message_id = f"dry-run-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        try:
            path = await asyncio.get_running_loop().run_in_executor(None, self._write, message_id, message)
        except OSError as exc:
            raise TransientSendError(
                "451 4.3.0 Dry run: cannot save the message; try again later",
                code="dry_run_io",
                detail=str(exc),
            ) from None
        log.info(
            "dry run: saved %s", path, extra={"fields": {"path": str(path), "ses_message_id": message_id}}
        )
        return Accepted(SAVED.format(message_id=message_id), ses_message_id=message_id, outcome="saved")

    def _write(self, message_id: str, message: OutgoingMessage) -> Path:
        envelope = [f"X-Relay-Mail-From: <{message.mail_from.strip('<>')}>"]
        envelope += [f"X-Relay-Rcpt-To: <{recipient}>" for recipient in message.recipients]
        if message.configuration_set:
            envelope.append(f"X-Relay-Configuration-Set: {message.configuration_set}")
        for name, value in message.tags.items():
            envelope.append(f"X-Relay-Tag: {name}={value}")
        newline = b"\r\n" if b"\r\n" in message.raw[:4096] else b"\n"
        head = newline.join(line.encode("ascii", "replace") for line in envelope) + newline
        path = self.directory / f"{message_id}.eml"
        with atomic_writer(path) as file:  # no copy of a 40 MiB body just to prepend the headers
            file.write(head)
            file.write(message.raw)
        return path
