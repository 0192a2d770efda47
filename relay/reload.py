"""SIGHUP (`systemctl reload`): re-read the configuration and apply what can change without a restart.

Reloadable today: `logging.level`. Everything else (listen addresses, SES, store, ...) needs a restart;
a reload that changes it logs which sections wait for one. A configuration that fails to load is
logged and the settings in force stay: a typo in the file must never stop a running relay.

To make another setting reloadable, add an applier to `APPLIERS`: it builds whatever the new value needs
first and swaps it in only once that worked (an exception leaves the old value in force and is logged).
The TLS certificate files are re-read on the same SIGHUP by relay.smtp.tls.CertificateStore (Relay asks
both); a change of the paths themselves (`smtp.tls.cert`/`key`) still needs a restart. So is the
users file (`smtp.auth.users_file`, `reload_users`): new and changed users and passwords apply to the
next AUTH; sessions already authenticated keep going; a file that fails to load keeps the old users.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay import notify
from relay.config import Config, ConfigError
from relay.smtp.auth import Authenticator, load_users
from relay.startup import StartupError

log = logging.getLogger("relay.reload")

Loader = Callable[[], Config]
Applier = Callable[[Config], None]


async def reload_users(path: Path, authenticator: Authenticator) -> bool:
    """Re-read the users file off the event loop and swap it in; True when it was applied."""
    try:
        users = await asyncio.to_thread(load_users, path)
    except StartupError as exc:
        log.error("users file reload failed, keeping the users in force: %s", exc,
                  extra={"fields": {"event": "users_reload_failed"}})
        return False
    authenticator.replace_users(users)
    log.info("users file reloaded: %d user(s)", len(users),
             extra={"fields": {"event": "users_reloaded", "users": len(users)}})
    return True


def apply_log_level(config: Config) -> None:
    logging.getLogger().setLevel(config.logging.level.upper())


# (dotted key, applier): the keys a reload applies, in order.
APPLIERS: list[tuple[str, Applier]] = [
    ("logging.level", apply_log_level),
]


def _without(data: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data.pop(leaf, None)


def _value(config: Config, dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def restart_needed(running: Config, new: Config) -> list[str]:
    """Top-level sections whose non-reloadable settings differ from the ones the relay started with."""
    before, after = running.model_dump(mode="json"), new.model_dump(mode="json")
    for key, _ in APPLIERS:
        _without(before, key)
        _without(after, key)
    return sorted(section for section in after if before.get(section) != after[section])


class Reloader:
    """`request()` is what the SIGHUP handler calls (on the event loop): it only schedules. Reloads run
    one at a time; signals arriving during one are folded into one more."""

    def __init__(self, running: Config, load: Loader | None) -> None:
        self._running = running
        self._load = load
        self._pending = False
        self._task: asyncio.Task | None = None
        self._closed = False

    def request(self) -> None:
        if self._closed:  # stopping: the drain has begun, a reload would only race it
            return
        self._pending = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="reload")

    async def _drain(self) -> None:
        while self._pending:
            self._pending = False
            await self.reload()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reload(self) -> bool:
        """True when the new configuration was applied."""
        if self._load is None:
            log.warning("reload requested, but this relay has no configuration source to re-read")
            return False
        notify.reloading()
        try:
            return await self._reload(self._load)
        finally:
            notify.ready()

    async def _reload(self, load: Loader) -> bool:
        try:
            new = await asyncio.to_thread(load)  # file I/O and validation: off the event loop
        except ConfigError as exc:
            log.error("reload failed, keeping the settings in force: %s", exc,
                      extra={"fields": {"event": "reload_failed"}})
            return False
        except Exception as exc:  # noqa: BLE001 - a reload must never take the relay down
            log.error("reload failed, keeping the settings in force: unexpected %s: %s",
                      exc.__class__.__name__, exc, extra={"fields": {"event": "reload_failed"}})
            return False
        applied = []
        for key, apply in APPLIERS:
            try:
                apply(new)
            except Exception as exc:  # noqa: BLE001 - the other settings can still be applied
                log.error("reload: could not apply %s, keeping the old value: %s", key, exc)
            else:
                applied.append(key)
        log.debug("reload applied", extra={"fields": {
            "event": "reload_applied", "values": {key: _value(new, key) for key in applied}}})
        waiting = restart_needed(self._running, new)
        log.info("configuration reloaded", extra={"fields": {"event": "reloaded", "applied": applied}})
        if waiting:
            log.warning("changed settings take effect only after a restart: %s", ", ".join(waiting),
                        extra={"fields": {"event": "restart_needed", "sections": waiting}})
        return True
