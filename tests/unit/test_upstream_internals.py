"""The bets the relay makes on private parts of aiosmtpd and botocore, checked against what is installed.

relay/smtp/server.py overrides private methods of aiosmtpd's SMTP and relay/ses/client.py overrides
parts of botocore's SigV4Auth. pyproject caps both at the minor series tested; when a new upstream
release is allowed in, these tests say which override no longer fits, by name, before a user finds out.
BETS is the list: our override, the upstream thing it relies on, the kind it must be, and the parameter
names our code calls it with. The tests after it check behaviour the overrides rely on.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.auth
import pytest
from aiosmtpd.smtp import SMTP, Envelope
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

COROUTINE, FUNCTION, ATTRIBUTE = "coroutine function", "function", "attribute"


@dataclass(frozen=True)
class Bet:
    ours: str  # dotted path of our override or of the code that relies on the upstream part
    upstream: str  # dotted path of the upstream part
    kind: str
    params: tuple[str, ...] | None = None  # None: not called, or an attribute
    only_these: bool = True  # False: our code passes these names; upstream may accept more


SERVER = "relay.smtp.server.RelaySMTP"
SIGNER = "relay.ses.client._SigV4"
BETS = [
    Bet(f"{SERVER}.__init__", "aiosmtpd.smtp.SMTP.__init__", FUNCTION,
        ("handler", "data_size_limit", "enable_SMTPUTF8", "decode_data", "hostname", "ident", "timeout",
         "command_call_limit", "loop", "proxy_protocol_timeout"), only_these=False),
    Bet(f"{SERVER}._handle_client", "aiosmtpd.smtp.SMTP._handle_client", COROUTINE, ("self",)),
    Bet(f"{SERVER}._getaddr", "aiosmtpd.smtp.SMTP._getaddr", FUNCTION, ("self", "arg")),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP.smtp_DATA", COROUTINE, ("self", "arg")),
    Bet(f"{SERVER}.push", "aiosmtpd.smtp.SMTP.push", COROUTINE, ("self", "status")),
    Bet(f"{SERVER}._create_envelope", "aiosmtpd.smtp.SMTP._create_envelope", FUNCTION, ("self",)),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP._call_handler_hook", COROUTINE, ("self", "command", "args")),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP._set_post_data_state", FUNCTION, ("self",)),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP.check_helo_needed", COROUTINE, ("self", "helo")),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP.check_auth_needed", COROUTINE, ("self", "caller_method")),
    Bet("relay.smtp.handler.RelayEnvelope", "aiosmtpd.smtp.Envelope.__init__", FUNCTION, ("self",)),
    # Limits (#11): max_transactions_per_connection at MAIL; data_timeout through aiosmtpd's idle timer.
    Bet(f"{SERVER}.smtp_MAIL", "aiosmtpd.smtp.SMTP.smtp_MAIL", COROUTINE, ("self", "arg")),
    Bet(f"{SERVER}._timeout_cb", "aiosmtpd.smtp.SMTP._timeout_cb", FUNCTION, ("self",)),
    Bet(f"{SERVER}.smtp_DATA", "aiosmtpd.smtp.SMTP._reset_timeout", FUNCTION, ("self", "duration")),
    Bet(f"{SIGNER}.__init__", "botocore.auth.SigV4Auth.__init__", FUNCTION,
        ("self", "credentials", "service_name", "region_name")),
    Bet(f"{SIGNER}.headers_to_sign", "botocore.auth.SigV4Auth.headers_to_sign", FUNCTION, ("self", "request")),
    Bet(f"{SIGNER}.signature", "botocore.auth.SigV4Auth.signature", FUNCTION,
        ("self", "string_to_sign", "request")),
    Bet("relay.ses.client.SesSender", "botocore.auth.SigV4Auth.add_auth", FUNCTION, ("self", "request")),
    Bet(f"{SIGNER}.headers_to_sign", "botocore.auth.SIGNED_HEADERS_BLACKLIST", ATTRIBUTE),
]


def _resolve(path: str) -> Any:
    """Import the longest module prefix of `path`, then walk attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(path)


def _signature(target: Any) -> str:
    try:
        return str(inspect.signature(target))
    except (TypeError, ValueError):
        return "(no signature)"


@pytest.mark.parametrize("bet", BETS, ids=lambda bet: f"{bet.ours.rsplit('.', 1)[-1]}->{bet.upstream}")
def test_upstream_part_still_has_the_shape_our_override_assumes(bet: Bet) -> None:
    _resolve(bet.ours.rsplit(".", 1)[0] if bet.ours.endswith("__init__") else bet.ours)  # the table is current
    where = f"{bet.ours} relies on {bet.upstream}"
    try:
        target = _resolve(bet.upstream)
    except (AttributeError, ImportError):
        pytest.fail(f"{where}, which no longer exists")
    if bet.kind == ATTRIBUTE:
        assert not callable(target), f"{where} as an attribute; it is now {target!r}"
        return
    is_coroutine = inspect.iscoroutinefunction(target)
    assert inspect.isfunction(target) and is_coroutine == (bet.kind == COROUTINE), (
        f"{where} as a {bet.kind}; it is now a {'coroutine function' if is_coroutine else type(target).__name__}")
    names = tuple(inspect.signature(target).parameters)
    fits = names == bet.params if bet.only_these else set(bet.params) <= set(names)
    assert fits, f"{where}({', '.join(bet.params)}), whose signature changed to {_signature(target)}"


# -- behaviour the overrides rely on ------------------------------------------------------------------


def _self_calls(function: Callable) -> set[str]:
    """Names of the `self.<name>(...)` calls in a function's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"
    }


class _Handler:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:  # not listed below
        return "250 OK"

    async def handle_PROXY(self, server, session, envelope, proxy_data) -> bool:
        return True

    def __dir__(self) -> list[str]:
        return ["handle_DATA", "handle_PROXY"]


class _Probe(SMTP):
    """A stock SMTP that lists only some of its members, as RelaySMTP and RelayHandler do."""

    seen_before_super: dict[str, Any] | None = None

    def __dir__(self) -> list[str]:
        return ["smtp_DATA", "smtp_EHLO", "smtp_QUIT", "smtp_XPROBE"]

    async def smtp_XPROBE(self, arg: str) -> None:
        await self.push("250 probed")

    async def smtp_XHIDDEN(self, arg: str) -> None:  # not listed by __dir__
        await self.push("250 hidden")

    def _create_envelope(self) -> Envelope:
        return _MarkedEnvelope()

    async def _handle_client(self) -> None:
        type(self).seen_before_super = {
            "proxy_data": getattr(self.session, "proxy_data", None),
            "reader": self._reader,
            "writer": self._writer,
            "peer": self.session.peer,
        }
        await super()._handle_client()


class _MarkedEnvelope(Envelope):
    pass


def _probe(**kwargs: Any) -> tuple[_Probe, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    return _Probe(_Handler(), loop=loop, hostname="probe.test", **kwargs), loop


def test_smtp_init_finds_commands_and_hooks_through_dir() -> None:
    probe, loop = _probe()
    try:
        commands, hooks = set(probe._smtp_methods), set(probe._handle_hooks)
    finally:
        loop.close()
    assert {"DATA", "XPROBE"} <= commands and "XHIDDEN" not in commands and "MAIL" not in commands, (
        "relay.smtp.server.RelaySMTP.__dir__ lists only smtp_*/auth_* members because aiosmtpd's "
        f"SMTP.__init__ found smtp_* methods through dir(self); it no longer does (found {sorted(commands)})")
    assert hooks == {"DATA", "PROXY"}, (
        "relay.smtp.handler.RelayHandler.__dir__ lists only the handle_* hooks because aiosmtpd's "
        f"SMTP.__init__ found them through dir(handler); it no longer does (found {sorted(hooks)})")


def test_our_dir_overrides_list_every_hook_we_define() -> None:
    from relay.smtp.handler import RelayHandler
    from relay.smtp.server import RelaySMTP

    listed = set(RelaySMTP.__dir__(object.__new__(RelaySMTP)))
    defined = {n for n in dir(RelaySMTP) if n.startswith(("smtp_", "auth_"))}
    assert listed >= defined, f"RelaySMTP.__dir__ hides {sorted(defined - listed)} from aiosmtpd"
    listed = set(RelayHandler.__dir__(object.__new__(RelayHandler)))
    defined = {n for n in dir(RelayHandler) if n.startswith(("handle_", "auth_"))}
    assert listed >= defined, f"RelayHandler.__dir__ hides {sorted(defined - listed)} from aiosmtpd"


def test_set_post_data_state_makes_the_next_envelope_with_create_envelope() -> None:
    probe, loop = _probe()
    try:
        probe._set_post_data_state()
    finally:
        loop.close()
    assert isinstance(probe.envelope, _MarkedEnvelope), (
        "relay.smtp.server.RelaySMTP._create_envelope relies on aiosmtpd's SMTP._set_post_data_state "
        "building the next envelope with self._create_envelope(); it no longer does")


def test_getaddr_fallback_and_local_part_limit() -> None:
    probe, loop = _probe()
    try:
        parsed = probe._getaddr("<a.b@example.org> SIZE=10")
        limit = probe.local_part_limit
    finally:
        loop.close()
    assert parsed == ("a.b@example.org", "SIZE=10"), (
        "relay.smtp.server.RelaySMTP._getaddr must answer what aiosmtpd's SMTP._getaddr answers "
        f"(address, rest); upstream now returns {parsed!r}")
    assert isinstance(limit, int), (
        "relay.smtp.server.RelaySMTP._getaddr reads aiosmtpd's SMTP.local_part_limit (an int); "
        f"it is now {limit!r}")


def test_smtp_data_still_calls_the_state_helpers_our_copy_calls() -> None:
    from relay.smtp.server import RelaySMTP

    ours, upstream = _self_calls(RelaySMTP.smtp_DATA), _self_calls(SMTP.smtp_DATA)
    shared = {"check_helo_needed", "check_auth_needed", "_call_handler_hook", "_set_post_data_state", "push"}
    assert shared <= ours, f"the table of bets is stale: RelaySMTP.smtp_DATA calls {sorted(ours)}"
    assert shared <= upstream, (
        "relay.smtp.server.RelaySMTP.smtp_DATA replaces aiosmtpd's SMTP.smtp_DATA and calls "
        f"{sorted(shared)} as it did; upstream now calls {sorted(upstream)}: re-read it and update our copy")
    assert {"_reader", "envelope"} <= {
        node.attr for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(SMTP.smtp_DATA))))
        if isinstance(node, ast.Attribute)
    }, "relay.smtp.server.RelaySMTP.smtp_DATA reads self._reader and self.envelope as aiosmtpd's did; it no longer does"


def test_handle_client_reads_the_proxy_header_inside_and_has_reader_writer() -> None:
    """RelaySMTP._handle_client checks the network before calling super(): with PROXY protocol on,
    that check sees the load balancer, since aiosmtpd reads the header inside _handle_client."""

    async def scenario() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        protocols: list[_Probe] = []

        def factory() -> _Probe:
            protocols.append(_Probe(_Handler(), loop=loop, hostname="probe.test", proxy_protocol_timeout=5))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n")
            greeting = await asyncio.wait_for(reader.readline(), 10)
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            return greeting, protocols[0].session.proxy_data
        finally:
            server.close()
            await server.wait_closed()

    greeting, proxy_data = asyncio.run(scenario())
    before = _Probe.seen_before_super
    assert greeting.startswith(b"220 probe.test"), greeting
    assert before is not None and isinstance(before["reader"], asyncio.StreamReader) and isinstance(
        before["writer"], asyncio.StreamWriter), (
        "relay.smtp.server.RelaySMTP.hang_up/_handle_client use aiosmtpd's SMTP._reader/_writer, set before "
        f"_handle_client runs; they are not ({before!r})")
    assert before["proxy_data"] is None and str(proxy_data.src_addr) == "203.0.113.9", (
        "relay.smtp.server.RelaySMTP._handle_client assumes aiosmtpd's SMTP._handle_client reads the PROXY "
        f"header itself (before: {before['proxy_data']!r}, after: {proxy_data!r}); re-check where the "
        "network policy must run")


class _RecordingSigner(SigV4Auth):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple[str, Any]] = []

    def headers_to_sign(self, request):
        self.calls.append(("headers_to_sign", None))
        return super().headers_to_sign(request)

    def signature(self, string_to_sign, request):
        self.calls.append(("signature", request.context.get("timestamp")))
        return super().signature(string_to_sign, request)


def test_sigv4_add_auth_goes_through_the_methods_we_override() -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret").get_frozen_credentials()
    signer = _RecordingSigner(credentials, "ses", "eu-west-1")
    request = AWSRequest(method="POST", url="https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
                         data=b"{}", headers={"Content-Type": "application/json"})
    signer.add_auth(request)
    called = [name for name, _ in signer.calls]
    assert "headers_to_sign" in called and "signature" in called, (
        "relay.ses.client._SigV4 overrides headers_to_sign and signature of botocore.auth.SigV4Auth, "
        f"expecting add_auth to call both; it called {called}")
    timestamp = dict(signer.calls)["signature"]
    assert isinstance(timestamp, str) and re.fullmatch(r"\d{8}T\d{6}Z", timestamp), (
        "relay.ses.client._SigV4.signature reads request.context['timestamp'][0:8] as the signing day, "
        f"set by SigV4Auth.add_auth before signature(); it is now {timestamp!r}")
    assert (signer.credentials, signer._region_name, signer._service_name) == (credentials, "eu-west-1", "ses"), (
        "relay.ses.client._SigV4.signature reads SigV4Auth.credentials, _region_name and _service_name")
    blacklist = botocore.auth.SIGNED_HEADERS_BLACKLIST
    assert all(isinstance(name, str) and name == name.lower() for name in blacklist) and (
        "user-agent" in blacklist), (
        "relay.ses.client._SigV4.headers_to_sign compares lower-cased names against "
        f"botocore.auth.SIGNED_HEADERS_BLACKLIST; it is now {blacklist!r}")

