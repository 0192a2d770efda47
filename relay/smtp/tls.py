"""Server TLS: an ssl.SSLContext built from the certificate and key files, reloaded without a restart.

Built at start, before any socket binds, so a bad certificate or key is a one-line StartupError.
A reload (SIGHUP, or the files changed: checked every `CHECK_INTERVAL` seconds in a thread) builds a
new context and swaps it in for new handshakes; open sessions keep the one they negotiated. Every
context carries an SNI callback that moves a handshake onto the newest context, so a listener bound
with an older context (implicit TLS) and a session created before the reload (STARTTLS) both get
the new certificate. A reload that fails (a half-written file) keeps the old context and logs why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from relay.startup import StartupError

log = logging.getLogger("relay.smtp.tls")

CHECK_INTERVAL = 5.0  # seconds between checks of the files' mtime, size and inode
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def build_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for TLS >= 1.2; StartupError with one line when the files are unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise StartupError(f"smtp.tls: cannot read {exc.filename}: no such file") from None
    except PermissionError as exc:
        raise StartupError(f"smtp.tls: cannot read {exc.filename}: permission denied") from None
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        raise StartupError(
            f"smtp.tls: certificate {cert} and key {key} are not a usable pair ({reason})"
        ) from None
    except OSError as exc:
        raise StartupError(f"smtp.tls: cannot load {cert} / {key}: {exc.strerror or exc}") from None
    return context


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


class CertificateStore:
    """The current server context; `context` is what a new connection should use."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = Path(cert), Path(key)
        self._stamp = _stamp((self._cert, self._key))
        self._context = self._adopt(build_context(self._cert, self._key))
        self.reloads = 0  # successful reloads, for tests and logs
        self._requested = asyncio.Event()

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    def _adopt(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.sni_callback = self._newest
        return context

    def _newest(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        # Called during every handshake (server_name is None without SNI): serve the newest certificate.
        if context is not self._context:
            ssl_object.context = self._context

    async def reload(self) -> bool:
        """Build a new context from the files (in a thread: it reads them); keep the old one on failure."""
        stamp = await asyncio.to_thread(_stamp, (self._cert, self._key))
        try:
            context = await asyncio.to_thread(build_context, self._cert, self._key)
        except StartupError as exc:
            self._stamp = stamp  # retried when the files change again, not every interval
            log.error("TLS certificate reload failed, still serving the previous one: %s", exc)
            return False
        self._stamp = stamp
        self._context = self._adopt(context)
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self._cert, extra={"fields": {"event": "tls_reloaded"}})
        return True

    async def reload_if_changed(self) -> bool:
        stamp = await asyncio.to_thread(_stamp, (self._cert, self._key))
        if stamp == self._stamp:
            return False
        return await self.reload()

    def request_reload(self) -> None:
        """SIGHUP: reload at once, whether or not the files look changed. Safe from a signal handler."""
        self._requested.set()

    async def watch(self, interval: float = CHECK_INTERVAL) -> None:
        """Run until cancelled: reload when asked, or when either file changed."""
        while True:
            try:
                await asyncio.wait_for(self._requested.wait(), interval)
            except TimeoutError:
                pass
            requested = self._requested.is_set()
            self._requested.clear()
            try:
                await (self.reload() if requested else self.reload_if_changed())
            except Exception:  # noqa: BLE001 - the watcher must outlive one odd failure
                log.exception("TLS certificate check failed")
