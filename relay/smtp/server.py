"""aiosmtpd's SMTP protocol with the relay's connection policy and enhanced status codes.

One `SmtpServer` owns the listening sockets and the live sessions, so shutdown can stop accepting,
let transactions in progress finish, and then hang up on the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from base64 import b64decode
from collections import Counter
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, TLSSetupException

from relay.metrics import RelayMetrics
from relay.smtp import replies
from relay.smtp.auth import Authenticator, FailureThrottle
from relay.smtp.budget import Reservation, held_for
from relay.smtp.handler import RelayEnvelope, RelayHandler
from relay.smtp.policy import ConnectionPolicy, peer_address
from relay.smtp.proxy import ProxyRefused, TrustedProxies
from relay.smtp.state import ServerState
from relay.smtp.tls import CertificateStore

log = logging.getLogger("relay.smtp")

# aiosmtpd's own reply texts -> the same meaning with RFC 3463 enhanced codes.
_REWRITES = {
    b"552 Error: Too much mail data": None,  # filled per server (needs the limit)
    b"552 Error: message size exceeds fixed maximum message size": None,
    b"500 Error: strict ASCII mode": replies.SMTPUTF8_UNSUPPORTED.encode(),
    b"501 Error: SMTPUTF8 disabled": replies.SMTPUTF8_UNSUPPORTED.encode(),
    b"500 Line too long (see RFC5321 4.5.3.1.6)": replies.LINE_TOO_LONG.encode(),
    b"500 Command line too long": replies.COMMAND_TOO_LONG.encode(),
}
# aiosmtpd's refusals that count in ses_relay_smtp_refusals_total (the relay's own count where made).
_REFUSAL_REASONS = {b"500 Command line too long": "command_too_long"}


# <local@domain> with a dot-atom local part and a plain host name: what nearly every client sends.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDR = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class SmtpServer:
    def __init__(
        self,
        handler: RelayHandler,
        *,
        state: ServerState,
        policy: ConnectionPolicy,
        hostname: str,
        max_message_size: int,
        idle_timeout: float,
        command_call_limit: int,
        metrics: RelayMetrics,
        tls: CertificateStore | None = None,
        authenticator: Authenticator | None = None,
        auth_require_tls: bool = True,
        auth_throttle: FailureThrottle | None = None,
        max_transactions_per_connection: int | None = None,
        data_timeout: float | None = None,
        max_header_count: int | None = None,
        max_header_bytes: int | None = None,
        trusted_proxies: TrustedProxies | None = None,
        proxy_timeout: float = 10.0,
    ) -> None:
        self.handler = handler
        self.max_transactions = max_transactions_per_connection
        self.data_timeout = data_timeout
        self.idle_timeout = idle_timeout
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes
        self.too_many_headers_reply = replies.TOO_MANY_HEADERS.format(limit=max_header_count)
        self.headers_too_big_reply = replies.HEADERS_TOO_BIG.format(limit=max_header_bytes)
        self.trusted_proxies = trusted_proxies or TrustedProxies(())
        self._proxy_timeout = proxy_timeout
        # Open sessions per client address (the real client's, on a PROXY listener).
        self.client_sessions: Counter[str] = Counter()
        self.awaiting_header = 0  # connections to PROXY listeners that have not sent their header yet
        self.tls = tls
        self.authenticator = authenticator
        self.auth_throttle = auth_throttle or FailureThrottle()
        self._auth_require_tls = auth_require_tls
        self.state = state
        self.policy = policy
        self.metrics = metrics
        self.too_big_reply = replies.MESSAGE_TOO_BIG.format(limit=max_message_size)
        self.rewrites = {key: value or self.too_big_reply.encode() for key, value in _REWRITES.items()}
        self._smtp_kwargs: dict[str, Any] = dict(
            data_size_limit=max_message_size,
            enable_SMTPUTF8=False,  # SES does not support it; see replies.SMTPUTF8_UNSUPPORTED
            decode_data=False,
            hostname=hostname,  # set, so aiosmtpd never calls getfqdn() per connection
            ident="ses-relay ESMTP",
            timeout=idle_timeout,
            command_call_limit=command_call_limit,
            # Without a users file no mechanism is offered (RelaySMTP.push drops the empty AUTH line).
            auth_exclude_mechanism=() if authenticator is not None else ("PLAIN", "LOGIN"),
        )
        self._servers: list[asyncio.Server] = []

    def _session(self, **extra: Any) -> RelaySMTP:
        loop = asyncio.get_running_loop()
        return RelaySMTP(self.handler, server=self, loop=loop, **extra, **self._smtp_kwargs)

    def _protocol(self) -> RelaySMTP:
        # The context is read per connection: after a certificate reload, new sessions get the new one.
        return self._session(
            tls_context=self.tls.context if self.tls is not None else None,
            auth_require_tls=self._auth_require_tls,
        )

    def _proxy_protocol(self) -> RelaySMTP:
        # aiosmtpd reads the PROXY header before the greeting; RelaySMTP judges the client after it.
        return self._session(
            tls_context=self.tls.context if self.tls is not None else None,
            auth_require_tls=self._auth_require_tls,
            proxy_protocol_timeout=self._proxy_timeout,
        )

    def _implicit_tls_protocol(self) -> RelaySMTP:
        # The transport is TLS from the first byte: no STARTTLS to offer, AUTH needs no upgrade.
        return self._session(implicit_tls=True, auth_require_tls=False)

    async def listen(
        self, host: str, port: int, *, implicit_tls: bool = False, proxy: bool = False
    ) -> tuple[str, int]:
        """Bind one address; returns the bound (host, port) (port 0 picks a free one).

        `implicit_tls`: TLS from the first byte (port-465 style); needs a CertificateStore.
        `proxy`: every connection starts with a PROXY protocol header (relay.smtp.proxy)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if implicit_tls:
            assert self.tls is not None, "implicit TLS needs smtp.tls.cert and key"
            # Bound with today's context; its SNI callback moves each handshake to the newest one.
            server = await loop.create_server(
                self._implicit_tls_protocol, host, port, family=family, reuse_address=True, backlog=512,
                ssl=self.tls.context, ssl_handshake_timeout=30,
            )
        else:
            factory = self._proxy_protocol if proxy else self._protocol
            server = await loop.create_server(
                factory, host, port, family=family, reuse_address=True, backlog=512
            )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return bound[0], bound[1]

    def stop_accepting(self) -> None:
        self.state.shutting_down = True
        for server in self._servers:
            server.close()

    async def drain(self, deadline: float, hurry: asyncio.Event | None = None) -> None:
        """Let open transactions finish until `deadline` (loop time) or `hurry` is set, then hang up
        on everyone and abandon the sends still out (each is logged as "outcome unknown")."""
        loop = asyncio.get_running_loop()
        state = self.state
        while loop.time() < deadline and not (hurry is not None and hurry.is_set()):
            busy = [s for s in state.sessions if s.in_transaction()]
            for session in state.sessions - set(busy):
                session.hang_up(replies.SHUTTING_DOWN)
            if not busy and not state.sends:
                break
            await asyncio.sleep(0.05)
        for session in list(state.sessions):
            session.hang_up(replies.SHUTTING_DOWN)
        abandoned = self.handler.abandon_sends()
        if abandoned:
            log.warning(
                "shutdown grace over: %d send(s) abandoned, outcome unknown",
                abandoned,
                extra={"fields": {"event": "sends_abandoned", "count": abandoned}},
            )
        for server in self._servers:
            await server.wait_closed()


_PROTOCOL_METHODS: dict[type, list[str]] = {}


def _protocol_methods(cls: type) -> list[str]:
    methods = _PROTOCOL_METHODS.get(cls)
    if methods is None:
        methods = _PROTOCOL_METHODS[cls] = sorted(
            {name for klass in cls.__mro__ for name in vars(klass) if name.startswith(("smtp_", "auth_"))}
        )
    return methods


class RelaySMTP(SMTP):
    def __init__(
        self, handler: RelayHandler, *, server: SmtpServer, implicit_tls: bool = False, **kwargs
    ) -> None:
        super().__init__(handler, **kwargs)
        self._relay_server = server
        self._hung_up = False
        self._implicit_tls = implicit_tls
        self._client_key: str | None = None  # set once admitted: the key in server.client_sessions
        self._header_read = False  # PROXY listeners: the header was read (see _handle_proxy)
        self._transactions = 0  # DATA transactions in this connection (max_transactions_per_connection)
        self._data_deadline: float | None = None  # loop time by which DATA must end, while reading it
        self._data_lines = self._data_lines_seen = 0  # DATA progress, read by _timeout_cb
        if self._proxy_timeout is not None:
            self._handle_hooks["PROXY"] = self._handle_proxy  # aiosmtpd calls it after the header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._implicit_tls and self.session is not None and self.session.ssl is None:
            # aiosmtpd fills session.ssl only after STARTTLS; its eof_received also reads it to know
            # that the transport is TLS (returning True from eof_received there only logs a warning).
            self.session.ssl = {
                name: transport.get_extra_info(name) for name in ("ssl_object", "peercert", "cipher")
            }

    @property
    def encrypted(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ runs dir()/inspect.getmembers() on every new connection only to find
        # the smtp_* and auth_* methods; listing just those saves ~150 us per connection.
        return _protocol_methods(type(self))

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT address with the email package's RFC 5322 header parser and
        # defines a typing.Protocol class on each call: ~170 us per address. The plain form gets the
        # same answer from one regex (a test checks the two agree); anything else goes to aiosmtpd.
        match = _PLAIN_ANGLE_ADDR.match(arg)
        if match is None:
            return self._parse_address(arg)
        rest = arg[match.end() :].lstrip(" \t")  # the parser consumes the whitespace after the address
        if rest.startswith("("):  # ... and a comment: leave that to it
            return self._parse_address(arg)
        if self.local_part_limit and len(match[1]) > self.local_part_limit:
            return None, None
        return f"{match[1]}@{match[2]}", rest

    def _parse_address(self, arg: str) -> tuple[str | None, str | None]:
        try:
            return super()._getaddr(arg)
        except Exception:  # noqa: BLE001
            # The email parser crashes on some malformed input ("<@": IndexError, "<0@[":
            # AttributeError): that is a malformed address (553 5.1.3), not an internal error (451)
            # that the client would retry for days.
            return None, None

    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    def hang_up(self, reply: str) -> None:
        if self._hung_up or self.transport is None:
            return
        self._hung_up = True
        try:
            self._writer.write(reply.encode() + b"\r\n")
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
        self.transport.close()

    async def push(self, status) -> None:
        if isinstance(status, str):
            status = status.encode("ascii", "replace")
        if status == b"250-AUTH ":
            return  # aiosmtpd's EHLO line when no mechanism is configured
        reason = _REFUSAL_REASONS.get(status)
        if reason is not None:
            self._relay_server.metrics.smtp_refusals.labels(reason).inc()
        await super().push(self._relay_server.rewrites.get(status, status))

    async def smtp_MAIL(self, arg: str) -> None:
        limit = self._relay_server.max_transactions
        if limit is not None and self._transactions >= limit:
            # As Exim's smtp_accept_max_per_connection: the client reconnects for the rest.
            self._relay_server.metrics.smtp_refusals.labels("transactions_per_connection").inc()
            self.hang_up(replies.TOO_MANY_TRANSACTIONS)
            return
        await super().smtp_MAIL(arg)

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timer; during DATA it also enforces smtp.data_timeout.

        aiosmtpd re-arms the timer per command only, so a DATA that keeps trickling would never
        end, and a long one would be cut without a reply. While DATA is read the timer fires every
        idle_timeout: data still arriving and time left re-arm it; otherwise 421 4.4.2 and close."""
        deadline = self._data_deadline
        if self.transport is None:
            return
        if deadline is None:
            super()._timeout_cb()
            return
        now = self.loop.time()
        if now < deadline and self._data_lines != self._data_lines_seen:
            self._data_lines_seen = self._data_lines
            self._reset_timeout(min(self._relay_server.idle_timeout, deadline - now))
            return
        self._relay_server.metrics.smtp_refusals.labels("data_timeout").inc()
        log.info("DATA from %s took too long or stalled: closing", self._client_address())
        self.hang_up(replies.DATA_TIMEOUT)

    # AUTH: aiosmtpd's own auth_PLAIN/auth_LOGIN call a synchronous authenticator on the event loop;
    # these read the credentials the same way and check them with relay.smtp.auth (bcrypt in a
    # thread, throttled per client). Nothing they read is logged.
    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)  # challenge_auth has replied
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push(replies.AUTH_BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        return await self._check_credentials(parts[1], parts[2])

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_credentials(login, password)

    async def _check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        server = self._relay_server
        metrics = server.metrics
        client = self._client_address()
        throttle = server.auth_throttle
        if server.authenticator is None:  # not offered; a client that tries anyway
            return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)
        if throttle.locked_out(client):
            metrics.smtp_auth.labels("locked_out").inc()
            self.hang_up(replies.AUTH_LOCKED_OUT)
            return AuthResult(success=False, handled=True)
        user = await server.authenticator.check(login, password)
        if user is not None:
            throttle.succeeded(client)
            metrics.smtp_auth.labels("ok").inc()
            log.info(
                "authenticated %s from %s", user.login, client,
                extra={"fields": {"event": "auth_ok", "user": user.login, "client": client}},
            )
            return AuthResult(success=True, auth_data=user, message=replies.AUTH_OK)
        delay, locked_out = throttle.failed(client)
        metrics.smtp_auth.labels("failed").inc()
        # The attempted name may be a password typed into the wrong field: it is not logged.
        log.warning(
            "authentication failed from %s", client,
            extra={"fields": {"event": "auth_failed", "client": client, "locked_out": locked_out}},
        )
        await asyncio.sleep(delay)
        if locked_out:
            self.hang_up(replies.AUTH_LOCKED_OUT)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that sent STARTTLS and then no (or a bad) handshake: its problem, not a relay
            # error with a traceback. aiosmtpd closes the connection after this returns.
            log.info("STARTTLS handshake failed from %s: %s", self._client_address(), error.__cause__)
            return replies.INTERNAL_ERROR  # never sent: the connection is closed instead
        return await super().handle_exception(error)

    def _client_address(self) -> str:
        address = peer_address(self.session.peer if self.session is not None else None)
        return str(address) if address is not None else "unknown"

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read into one growing bytearray, instead of aiosmtpd's list of per-line bytearrays.

        aiosmtpd keeps one object per line and then joins them: for a 40 MB message that is about
        three times the message in memory. Here the peak is the message itself (plus growth slack).
        Replies and limits are aiosmtpd's: 552 past data_size_limit and 500 for a line over the
        reader's limit (RFC 5321 4.5.3.1.6), both given only after the final dot, as RFC 5321 4.2.5 implies.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, RelayEnvelope)  # made by _create_envelope
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        server = self._relay_server
        reservation = server.state.budget.reservation()
        handed_over = False
        if server.data_timeout is not None:
            self._data_deadline = self.loop.time() + server.data_timeout
            self._data_lines = self._data_lines_seen = 0
            self._reset_timeout(min(server.idle_timeout, server.data_timeout))
        try:
            content, failure = await self._read_data(reservation)
            self._data_deadline = None
            self._reset_timeout()  # the client gets idle_timeout for its next command
            self._transactions += 1
            if failure is None:
                # A bytearray where aiosmtpd declares bytes: handing it on as is avoids a copy.
                envelope.content = envelope.original_content = content  # type: ignore[assignment]
                envelope.reservation = reservation
                del content  # the handler owns the message and its reservation from here
                handed_over = True
                failure = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(failure)
        finally:
            self._data_deadline = None
            if not handed_over:
                reservation.release()

    async def _read_data(self, reservation: Reservation) -> tuple[bytearray, str | None]:
        """Read to the final dot. Returns (content, None) or (empty, the reply that refuses it)."""
        server = self._relay_server
        reader = self._reader
        limit = self.data_size_limit
        content = bytearray()
        size = 0
        failure: str | None = None
        in_long_line = False
        # The header section (up to the first empty line), bounded by smtp.max_header_count/bytes.
        in_headers = True
        header_count = header_bytes = 0
        max_headers = server.max_header_count or 0
        max_header_bytes = server.max_header_bytes or 0
        while self.transport is not None:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than the reader's limit: drop what was read; its tail ends with CRLF.
                if failure is None:
                    server.metrics.smtp_refusals.labels("line_too_long").inc()
                failure = failure or replies.LINE_TOO_LONG
                size += exc.consumed
                await reader.read(exc.consumed)
                in_long_line = True
                content = bytearray()
                reservation.release()
                continue
            self._data_lines += 1
            if in_long_line:
                in_long_line = False
                size += len(line)
                continue
            if line == b".\r\n":
                return content, failure
            size += len(line)
            if failure is not None:
                continue
            if in_headers:
                if line == b"\r\n":
                    in_headers = False
                else:
                    header_bytes += len(line)
                    if line[:1] not in (b" ", b"\t"):  # a continuation line belongs to its field
                        header_count += 1
            if limit and size > limit:
                failure = self._relay_server.too_big_reply
            elif line.count(b"\n") != 1 or line.count(b"\r") != 1:
                # A bare LF or CR: a downstream that ends lines there could see a second message
                # (SMTP smuggling). Refused after the final dot, as Postfix's smtpd_forbid_bare_newline.
                self._relay_server.metrics.smtp_refusals.labels("bare_newline").inc()
                failure = replies.BARE_NEWLINE
            elif in_headers and max_headers and header_count > max_headers:
                server.metrics.smtp_refusals.labels("header_count").inc()
                failure = server.too_many_headers_reply
            elif in_headers and max_header_bytes and header_bytes > max_header_bytes:
                server.metrics.smtp_refusals.labels("header_bytes").inc()
                failure = server.headers_too_big_reply
            elif not reservation.cover(held_for(len(content) + len(line))):
                self._relay_server.metrics.memory_budget_refusals.inc()
                failure = replies.MEMORY_BUDGET_SPENT
            if failure is not None:
                content = bytearray()  # free it now, keep reading to the final dot
                reservation.release()
                continue
            if line[:1] == b".":
                content += memoryview(line)[1:]  # RFC 5321 4.5.2 dot-unstuffing
            else:
                content += line
        raise ConnectionResetError("connection closed during DATA")

    async def _handle_client(self) -> None:
        server = self._relay_server
        assert self.session is not None and self.transport is not None  # set by connection_made
        if self._proxy_timeout is None:
            if not await self._admit(self.session.peer):
                return
            try:
                await super()._handle_client()
            finally:
                self._leave()
            return
        # A PROXY listener: the client is judged in _handle_proxy, once the header is read (a
        # refusal before it would close on unread bytes, and the peer would get a reset, not the
        # reply). Connections still owing their header are bounded like sessions.
        if server.awaiting_header >= server.policy.max_connections:
            self.transport.close()
            return
        server.awaiting_header += 1
        try:
            await super()._handle_client()  # reads the header, calls _handle_proxy, then serves
        finally:
            if not self._header_read:
                server.awaiting_header -= 1
            self._leave()

    async def _handle_proxy(
        self, _server: SMTP, session: Session, _envelope: object, data: ProxyData
    ) -> bool:
        """aiosmtpd's handle_PROXY hook: honour the header only from a trusted proxy, then judge
        the client it names. False makes aiosmtpd close the connection (after our reply)."""
        self._header_read = True
        self._relay_server.awaiting_header -= 1
        try:
            peer = self._relay_server.trusted_proxies.real_peer(session.peer, data)
        except ProxyRefused:
            await self._refuse_proxy(session.peer)
            return False
        log.debug("PROXY header from %s names client %s", peer_address(session.peer), peer[0])
        # Every later check and log line sees the real client. (aiosmtpd annotates `peer` as str;
        # it holds the socket's peername tuple.)
        session.peer = peer  # type: ignore[assignment]
        return await self._admit(peer)

    async def _refuse_proxy(self, peer: object) -> None:
        metrics = self._relay_server.metrics
        metrics.smtp_refusals.labels("proxy_untrusted").inc()
        metrics.smtp_sessions.labels("rejected_network").inc()
        host = peer_address(peer)
        log.warning("PROXY connection refused: %s not in smtp.trusted_proxies", host)
        await self.push(replies.PROXY_NOT_TRUSTED.format(peer=host))
        assert self.transport is not None
        self.transport.close()

    async def _admit(self, peer: object) -> bool:
        """The connection-level decision (relay.smtp.policy) on the client's address: True to go
        on; False after the refusal reply, with the connection closed."""
        server = self._relay_server
        state = server.state
        metrics = server.metrics
        address = peer_address(peer)
        key = str(address) if address is not None else "unknown"
        refusal = server.policy.admit(
            peer,
            open_sessions=len(state.sessions),
            shutting_down=state.shutting_down,
            client_sessions=server.client_sessions[key],
        )
        if refusal is not None:
            result, reply = refusal
            metrics.smtp_sessions.labels(result).inc()
            if result == "rejected_network":
                log.warning("connection refused: %s not in smtp.allowed_networks", key)
            elif result == "rejected_client_limit":
                metrics.smtp_refusals.labels("connections_per_client").inc()
                log.warning("connection refused: %s has smtp.max_connections_per_client open", key)
            await self.push(reply)
            assert self.transport is not None
            self.transport.close()
            return False
        if server.policy.must_authenticate(peer):
            self._auth_required = True  # admitted only to authenticate (smtp.auth.required)
        metrics.smtp_sessions.labels("accepted").inc()
        metrics.smtp_active_sessions.inc()
        state.sessions.add(self)
        server.client_sessions[key] += 1
        self._client_key = key
        return True

    def _leave(self) -> None:
        key, self._client_key = self._client_key, None
        if key is None:
            return  # never admitted
        server = self._relay_server
        server.state.sessions.discard(self)
        server.metrics.smtp_active_sessions.dec()
        server.client_sessions[key] -= 1
        if server.client_sessions[key] <= 0:
            del server.client_sessions[key]
