"""SMTP AUTH: the users file, bcrypt checks off the event loop, a cache, and failure throttling.

Users file (`smtp.auth.users_file`): one user a line, `user:bcrypt-hash[:sender,sender...]`, as
`htpasswd -B` writes it (`$2y$`/`$2b$`/`$2a$` hashes) plus an optional third field: the senders the
user may use (relay.smtp.authz). `#` starts a comment line. Passwords and AUTH blobs are never
logged: only the user name and the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from relay.startup import StartupError

log = logging.getLogger("relay.smtp.auth")

_HASH_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
# Compared against when the user is unknown, so an unknown user costs as much as a wrong password
# and the timing does not tell which names exist (cost 12, like hash-password).
_DUMMY_HASH = b"$2b$12$SDfJxNzRNw1tEMcNfQGIMOsasekAlyu4/xk88HmMDAwndo89k8iQq"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: bytes
    senders: tuple[str, ...]  # allowed sender patterns; empty: any sender


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """What a successful AUTH leaves in `session.auth_data`; relay.smtp.authz reads `senders`."""

    login: str
    senders: tuple[str, ...]


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        hashed, _, senders = rest.partition(":")
        where = f"{source} line {number}"
        if not sep or not name or not hashed:
            raise StartupError(f"smtp.auth.users_file: {where}: expected user:bcrypt-hash[:senders]")
        encoded = hashed.encode("ascii", "replace")
        if not encoded.startswith(_HASH_PREFIXES) or len(encoded) != 60:
            raise StartupError(
                f"smtp.auth.users_file: {where}: user {name!r} has no bcrypt hash ($2y$/$2b$, 60 characters; "
                "make one with `ses-relay hash-password` or `htpasswd -nB USER`)"
            )
        if name in users:
            raise StartupError(f"smtp.auth.users_file: {where}: user {name!r} given twice")
        patterns = tuple(p.strip().lower() for p in senders.split(",") if p.strip())
        users[name] = User(name, encoded, patterns)
    return users


def load_users(path: Path) -> dict[str, User]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"smtp.auth.users_file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StartupError(f"smtp.auth.users_file: {path} is not UTF-8 text") from None
    return parse_users(text, str(path))


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only where AUTH is configured

    # The Python bcrypt library knows $2b$ and $2a$; $2y$ (htpasswd, PHP) is the same algorithm.
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def hash_password(password: bytes, rounds: int = 12) -> str:
    import bcrypt

    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=rounds, prefix=b"2b")).decode("ascii")


class Authenticator:
    """Checks user + password. bcrypt runs in a thread; good answers are cached for `cache_ttl` s.

    The cache key is sha256(user, password, hash): no password is kept, a changed hash (users file
    reloaded) misses, and a wrong password is never cached (it must keep paying bcrypt).
    """

    def __init__(
        self,
        users: dict[str, User],
        *,
        cache_ttl: float = 300.0,
        cache_entries: int = 1024,
        max_parallel: int | None = None,
    ) -> None:
        self._users = users
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._cache_ttl = cache_ttl
        self._cache_entries = cache_entries
        self._parallel = asyncio.Semaphore(max_parallel or min(4, os.cpu_count() or 1))
        self.bcrypt_checks = 0  # how often bcrypt really ran (the cache saves the rest)

    def replace_users(self, users: dict[str, User]) -> None:
        self._users = users

    async def check(self, login: bytes, password: bytes) -> AuthenticatedUser | None:
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        user = self._users.get(name) if name is not None else None
        hashed = user.password_hash if user is not None else _DUMMY_HASH
        key = hashlib.sha256(b"\0".join((login, password, hashed))).digest()
        now = time.monotonic()
        expiry = self._cache.get(key)
        if user is not None and expiry is not None and expiry > now:
            self._cache.move_to_end(key)
            return AuthenticatedUser(user.name, user.senders)
        async with self._parallel:  # bounds the threads bcrypt can occupy under a password spray
            self.bcrypt_checks += 1
            ok = await asyncio.to_thread(_checkpw, password, hashed)
        if not ok or user is None:
            return None
        self._cache[key] = now + self._cache_ttl
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return AuthenticatedUser(user.name, user.senders)


class FailureThrottle:
    """Failed AUTH attempts per client address: a growing delay, then refusal for `lockout` seconds.

    After the n-th failure within `window` seconds the reply waits base_delay * 2**(n-1) (capped);
    at `max_failures` the client gets 421 4.7.0 and is disconnected, and every AUTH from that address
    is refused the same way until `lockout` seconds after its last failure. Memory is bounded.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        window: float = 900.0,
        lockout: float = 900.0,
        max_clients: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.lockout = lockout
        self.max_clients = max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (count, last)

    def _count(self, client: str, now: float) -> int:
        entry = self._failures.get(client)
        if entry is None:
            return 0
        count, last = entry
        horizon = self.lockout if count >= self.max_failures else self.window
        if now - last > horizon:
            del self._failures[client]
            return 0
        return count

    def locked_out(self, client: str) -> bool:
        return self._count(client, time.monotonic()) >= self.max_failures

    def failed(self, client: str) -> tuple[float, bool]:
        """Record a failure: (seconds to wait before replying, True when the client is now locked out)."""
        now = time.monotonic()
        count = self._count(client, now) + 1
        self._failures[client] = (count, now)
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        delay = min(self.max_delay, self.base_delay * 2 ** (count - 1))
        return delay, count >= self.max_failures

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

