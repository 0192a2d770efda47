"""Configuration: one YAML file, environment overrides, validated before anything binds.

Loading order: built-in defaults < YAML file < `SES_RELAY_<SECTION>__<KEY>` environment variables.
Every error names the key path and a one-line reason (`ConfigError`); the CLI turns it into exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.addresses import AddressError, check_address

DEFAULT_CONFIG_PATH = Path("/etc/ses-relay/config.yaml")
ENV_PREFIX = "SES_RELAY_"
SES_MAX_MESSAGE_SIZE = 40 * 1024 * 1024  # SESv2 SendEmail limit for raw messages
SES_MAX_RECIPIENTS = 50  # SESv2 SendEmail limit per call


class ConfigError(Exception):
    """Bad configuration: `str(error)` is one line per problem, each naming the key path."""


class _Section(BaseModel):
    # Numbers coerce to text so SES_RELAY_SES__CONFIGURATION_SET=2024 means the string "2024".
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def parse_host_port(value: str) -> tuple[str, int]:
    """'127.0.0.1:2525', '[::1]:2525', 'localhost:2525' -> (host, port). Port 0 means any free port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not HOST:PORT (IPv6 as [::1]:PORT)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _host_ports(value: list[str]) -> list[str]:
    for item in value:
        parse_host_port(item)
    return value


# A list of listen addresses, each HOST:PORT (IPv6 as [::1]:PORT).
HostPorts = Annotated[list[str], AfterValidator(_host_ports)]


def _networks(value: list[str]) -> list[str]:
    for item in value:
        ipaddress.ip_network(item, strict=False)
    return value


# A list of networks in CIDR, IPv4 or IPv6 ("10.0.0.0/8", "::1/128"; a bare address is one host).
Networks = Annotated[list[str], AfterValidator(_networks)]


class TlsConfig(_Section):
    cert: Path | None = None  # PEM certificate (chain); reloaded on SIGHUP and when it changes
    key: Path | None = None  # PEM private key
    implicit_listen: HostPorts = []  # host:port list with TLS from the first byte (port 465 style)
    require_for_auth: bool = True  # false only when every smtp.listen address is loopback

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both or neither")
        if self.implicit_listen and self.cert is None:
            raise ValueError("implicit_listen needs cert and key")
        return self


class AuthConfig(_Section):
    # true: a client outside smtp.allowed_networks may connect, and must AUTH before MAIL (530 5.7.0)
    required: bool = False
    # one `user:bcrypt-hash[:sender-pattern,...]` a line (htpasswd -B format; see README "Security")
    users_file: Path | None = None


class SmtpConfig(_Section):
    listen: HostPorts = ["127.0.0.1:2525"]
    hostname: str = "relay.local"
    max_message_size: int = Field(SES_MAX_MESSAGE_SIZE, gt=0, le=SES_MAX_MESSAGE_SIZE)
    max_recipients: int = Field(SES_MAX_RECIPIENTS, gt=0)
    allowed_networks: Networks = ["127.0.0.0/8", "::1/128"]
    max_connections: int = Field(100, gt=0)
    # Per client address, for clients outside allowed_networks (Postfix's connection count limit,
    # whose exceptions default to mynetworks); past it 421 4.7.0 at connect.
    max_connections_per_client: int = Field(50, gt=0)
    max_transactions_per_connection: int = Field(1000, gt=0)  # then 421 4.7.0 at MAIL, and close
    idle_timeout: float = Field(300.0, gt=0)  # seconds without a command before the server hangs up
    # Seconds from the 354 to the final dot (and idle_timeout without a line during it): 421 4.4.2.
    data_timeout: float = Field(600.0, gt=0)
    max_header_count: int = Field(1000, gt=0)  # header fields per message; more: 554 5.6.0
    max_header_bytes: int = Field(1024 * 1024, gt=0)  # bytes of the header section; more: 554 5.6.0
    # Listeners whose connections start with a PROXY protocol v1/v2 header, accepted only from
    # trusted_proxies (CIDR); allow-list, limits, AUTH throttling and logs then see the real client.
    proxy_listen: HostPorts = []
    trusted_proxies: Networks = []
    proxy_timeout: float = Field(10.0, ge=3)  # seconds to wait for the PROXY header
    command_call_limit: int = Field(1000, gt=0)  # per command per session, against command floods
    shutdown_grace: float = Field(30.0, ge=0)  # seconds to let in-flight transactions finish on stop
    # Bytes of message data held in memory at once, all transactions together (DATA being read,
    # messages waiting for SES). Past it DATA is answered 452 4.3.1 and the client retries. Must be
    # at least 2.125 x max_message_size: removing a Bcc header briefly needs a second copy.
    memory_budget: int = Field(256 * 1024 * 1024, gt=0)
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one listen address is needed")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", value):
            raise ValueError(f"{value!r} is not a host name")
        return value


class SesConfig(_Section):
    region: str | None = None  # None: AWS_DEFAULT_REGION or AWS_REGION, then the profile's region
    endpoint_url: str | None = None
    configuration_set: str | None = None
    tags: dict[str, str] = {}
    max_send_rate: float | Literal["auto"] | None = "auto"  # None or 0: no local limit
    # Seconds a send may wait for the local rate limit; one whose turn is further away is answered
    # 451 4.4.5 at once. Each waiter holds its message in memory; 20 s is under smtp.shutdown_grace, so
    # a waiter still gets its answer in a graceful stop, and clients retry a 451 within minutes.
    max_rate_wait: float = Field(20.0, ge=0)
    # Share of the 24-hour quota (GetAccount Max24HourSend) the spool keeps unused: below it the queue
    # holds instead of collecting "quota exceeded" errors, and fallback queues instead of sending.
    # 0: no such hold (and no GetAccount reads unless max_send_rate is auto).
    quota_reserve: float = Field(0.01, ge=0, lt=1)
    dry_run: bool = False
    # Three limits on a SendEmail call, so that a big message on a slow uplink gets time, and a cut-off
    # upload (not sent, 451 4.4.1) is told apart from a missing answer (maybe sent, 451 4.4.2):
    connect_timeout: float = Field(5.0, gt=0)  # connecting, TLS included
    # Writing the request may take connect_timeout + its bytes / min_upload_rate (bytes/s). 256 KiB/s
    # uploads a 40 MiB message (53 MB of base64) in 3.6 min: connect + upload + answer stay under the
    # 10 min an SMTP client waits for the DATA reply (RFC 5321 4.5.3.2.6).
    min_upload_rate: float = Field(262144.0, gt=0)
    request_timeout: float = Field(30.0, gt=0)  # waiting for SES's answer once the request is written
    max_connections: int = Field(200, gt=0)  # HTTP keep-alive pool to SES; bounds sends in flight

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for name, tag in value.items():
            for part in (name, tag):
                if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(part)):
                    raise ValueError(f"tag {part!r}: SES allows 1-256 of A-Z a-z 0-9 _ -")
        return value

    @field_validator("max_send_rate")
    @classmethod
    def _rate(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and value < 0:
            raise ValueError("must be >= 0, 'auto' or null")
        return value


class DeliveryConfig(_Section):
    # direct: the client waits for SES's verdict. spool: write to disk, answer "queued as", deliver
    # in the background. fallback: try SES during the transaction; on a temporary failure, spool.
    mode: Literal["direct", "spool", "fallback"] = "fallback"
    spool_dir: Path | None = None  # None: <state_dir>/spool
    concurrency: int = Field(8, gt=0)  # messages the delivery workers send at once
    retry_first: float = Field(60.0, gt=0)  # seconds before the first retry; doubled each time
    retry_max: float = Field(3600.0, gt=0)  # the longest wait between two attempts
    max_lifetime: float = Field(5 * 86400.0, gt=0)  # seconds in the queue before a dead letter (Postfix: 5 d)
    min_free_bytes: int = Field(100 * 1024 * 1024, ge=0)  # below this free in the spool: 452 4.3.1
    bounce_from: str | None = None  # a verified identity: DSNs go to the envelope sender; None: none

    @field_validator("bounce_from")
    @classmethod
    def _bounce_from(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_address(value)
            except AddressError as exc:
                raise ValueError(exc.reply.split(" ", 2)[-1]) from None  # the reason, without the SMTP code
        return value


class DynamoDbSuppressionConfig(_Section):
    table: str | None = None
    region: str | None = None  # None: ses.region, then the boto3 chain
    endpoint_url: str | None = None  # for tests and emulators (not inherited from ses.endpoint_url)


class SuppressionConfig(_Section):
    backend: Literal["sqlite", "memory", "dynamodb"] = "sqlite"
    path: Path | None = None
    on_suppressed: Literal["reject", "drop"] = "reject"
    dynamodb: DynamoDbSuppressionConfig = DynamoDbSuppressionConfig()
    # Seconds between pulls of the SES account-level suppression list while serving; None: never
    # (run `ses-relay suppression sync` yourself). Each pull pages at 1 request/s.
    ses_sync_interval: float | None = Field(None, ge=60)
    # sqlite only: lookup answers kept in memory, so a repeat recipient costs no trip to the sqlite
    # thread. Writes by this process are seen at once, by another process (the CLI) within 0.25 s.
    # 0: every RCPT reads sqlite.
    cache_entries: int = Field(10_000, ge=0)


class SnsFeedbackConfig(_Section):
    enabled: bool = False
    topic_arns: list[str] = []
    max_age: float = Field(3600.0, gt=0)  # seconds; older (replayed) SNS messages are refused

    @field_validator("topic_arns")
    @classmethod
    def _arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}", arn):
                raise ValueError(f"{arn!r} is not an SNS topic ARN")
        return value

    @model_validator(mode="after")
    def _need_topics(self) -> SnsFeedbackConfig:
        if self.enabled and not self.topic_arns:
            raise ValueError("topic_arns must name the SES feedback topic(s) when enabled")
        return self


class SqsFeedbackConfig(_Section):
    queue_url: str | None = None
    region: str | None = None  # None: from the queue URL, else the boto3 chain
    endpoint_url: str | None = None  # for tests and emulators
    wait_time: int = Field(20, ge=1, le=20)  # long-poll seconds (SQS maximum 20)


class TransientBounceConfig(_Section):
    suppress_after: int | None = Field(None, ge=1)  # None: transient bounces never suppress
    window: float = Field(86400.0, gt=0)  # seconds


class FeedbackConfig(_Section):
    sns: SnsFeedbackConfig = SnsFeedbackConfig()
    sqs: SqsFeedbackConfig = SqsFeedbackConfig()
    transient_bounces: TransientBounceConfig = TransientBounceConfig()


class GuardConfig(_Section):
    enabled: bool = False  # true: answer 451 4.3.2 to new mail while a rate is over its limit
    window: float = Field(86400.0, gt=0)  # seconds of sends the rates are computed over
    min_sends: int = Field(200, ge=1)  # no verdict on fewer recipients than this
    max_bounce_rate: float = Field(0.05, gt=0, le=1)  # SES reviews accounts at 5%
    max_complaint_rate: float = Field(0.001, gt=0, le=1)  # SES reviews accounts at 0.1%


class HttpConfig(_Section):
    listen: str | None = "127.0.0.1:9025"  # every route (/sns only when public_listen is null); null: none
    # The internet-facing side: only /sns and /healthz. When set, /sns is served only here.
    public_listen: str | None = None
    # The read-only web console at /console (message trace, queue, suppression list, rates).
    console: bool = False
    # Who may reach /console and /api/ (they name recipients and subjects); 403 for anyone else.
    # /metrics, /readyz and /healthz are not affected.
    admin_allowed_networks: Networks = ["127.0.0.0/8", "::1/128"]

    @field_validator("listen", "public_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value


class TraceConfig(_Section):
    # On by default: "what happened to my mail?" is the first question; the cost per message is one
    # in-memory append, written in batches off the event loop (see relay.trace.store).
    enabled: bool = True
    path: Path | None = None  # None: <state_dir>/trace.db
    retention_days: float = Field(7.0, gt=0)  # messages older than this are pruned
    max_rows: int = Field(1_000_000, gt=0)  # messages kept at most (the oldest go first)
    store_subject: bool = True  # false: only a keyed hash of the Subject (needs the key file)
    # true: recipients kept only as HMAC-SHA256 with <state_dir>/trace.key; searchable by address
    hash_recipients: bool = False


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class Config(_Section):
    smtp: SmtpConfig = SmtpConfig()
    ses: SesConfig = SesConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    suppression: SuppressionConfig = SuppressionConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    guard: GuardConfig = GuardConfig()
    http: HttpConfig = HttpConfig()
    trace: TraceConfig = TraceConfig()
    logging: LoggingConfig = LoggingConfig()
    state_dir: Path | None = None  # None: see default_state_dir()
    # auto: uvloop when installed (pip install 'ses-relay[uvloop]'; ~8% more throughput in paired
    # benchmark runs), else asyncio's own loop.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        if self.delivery.mode == "direct" and self.smtp.max_recipients > SES_MAX_RECIPIENTS:
            raise ValueError(
                f"smtp.max_recipients above {SES_MAX_RECIPIENTS} needs delivery.mode spool or fallback "
                "(one SES call takes at most 50; direct mode never splits a transaction)"
            )
        self._security_combinations()
        size = self.smtp.max_message_size
        if self.smtp.memory_budget < 2 * size + size // 8:
            raise ValueError(
                f"smtp.memory_budget ({self.smtp.memory_budget}) must be at least 2.125 x "
                f"smtp.max_message_size ({size}), or a message of the maximum size with a Bcc "
                "header (a second copy, and the send path's share) could never be accepted"
            )
        if self.suppression.backend == "dynamodb" and not self.suppression.dynamodb.table:
            raise ValueError("suppression.dynamodb.table is required when suppression.backend is 'dynamodb'")
        if self.guard.enabled and not (self.feedback.sns.enabled or self.feedback.sqs.queue_url):
            raise ValueError(
                "guard.enabled needs feedback (feedback.sns or feedback.sqs): it learns bounces there"
            )
        if self.feedback.sns.enabled and not (self.http.listen or self.http.public_listen):
            raise ValueError(
                "feedback.sns.enabled needs http.listen or http.public_listen (SNS posts to /sns)"
            )
        return self

    def _security_combinations(self) -> None:
        smtp, tls, auth = self.smtp, self.smtp.tls, self.smtp.auth
        if auth.required and not auth.users_file:
            raise ValueError("smtp.auth.required needs smtp.auth.users_file")
        if smtp.proxy_listen and not smtp.trusted_proxies:
            raise ValueError(
                "smtp.proxy_listen needs smtp.trusted_proxies: the proxies allowed to send a header"
            )
        if not tls.require_for_auth:
            listeners = [*smtp.listen, *smtp.proxy_listen]
            public = [item for item in listeners if not is_loopback_host(parse_host_port(item)[0])]
            if public:
                raise ValueError(
                    f"smtp.tls.require_for_auth: false would send passwords in clear on {public[0]}; "
                    "allowed only when every smtp.listen address is loopback"
                )
        if auth.users_file and tls.cert is None and tls.require_for_auth:
            raise ValueError(
                "smtp.auth.users_file needs smtp.tls.cert and key: AUTH is offered only over TLS "
                "(or set smtp.tls.require_for_auth: false on a loopback-only relay)"
            )

    # Resolved paths: everything stateful lives under one directory.
    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or default_state_dir()

    @property
    def suppression_path(self) -> Path:
        return self.suppression.path or self.resolved_state_dir / "suppression.db"

    @property
    def spool_path(self) -> Path:
        return self.delivery.spool_dir or self.resolved_state_dir / "spool"

    @property
    def trace_path(self) -> Path:
        return self.trace.path or self.resolved_state_dir / "trace.db"

    @property
    def dry_run_dir(self) -> Path:
        return self.resolved_state_dir / "dry-run"


def default_state_dir() -> Path:
    for variable in ("SES_RELAY_STATE_DIR", "STATE_DIRECTORY"):
        value = os.environ.get(variable)
        if value:
            # systemd may pass several directories separated by ':'; the first is ours.
            return Path(value.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/ses-relay")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "ses-relay"


def honour_aws_region(environ: MutableMapping[str, str]) -> None:
    """Make botocore read AWS_REGION, as the other AWS SDKs, ECS and Lambda do.

    botocore reads only AWS_DEFAULT_REGION, so a relay started with AWS_REGION=eu-west-1 (as our
    systemd unit suggests) would silently send through us-east-1. AWS_DEFAULT_REGION, when set, wins.
    Set in the process environment so every client (SES, SQS, DynamoDB, the endpoint child) agrees.
    """
    if environ.get("AWS_REGION") and not environ.get("AWS_DEFAULT_REGION"):
        environ["AWS_DEFAULT_REGION"] = environ["AWS_REGION"]


def _is_text(annotation: Any) -> bool:
    """True for a field whose every non-None type is text (str, Path, a Literal of strings)."""
    if annotation in (str, Path):
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return bool(args) and all(_is_text(arg) for arg in args)
    return False


def _field_annotation(path: list[str]) -> Any:
    model: Any = Config
    annotation: Any = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _env_value(path: list[str], raw: str) -> Any:
    """A text field takes the variable as written (SES_RELAY_SES__CONFIGURATION_SET=no is the string
    "no", not False); any other field is parsed as YAML (numbers, true/false, [lists], {maps})."""
    if raw == "":
        return None
    if _is_text(_field_annotation(path)):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """SES_RELAY_SMTP__MAX_RECIPIENTS=10 -> {"smtp": {"max_recipients": 10}}."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] not in _TOP_LEVEL_KEYS:
            continue  # not a config key (sections need SECTION__KEY)
        value = _env_value(path, raw)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another variable for {'.'.join(path)}")
            node = child
        node[path[-1]] = value
    return tree


_TOP_LEVEL_KEYS = {"event_loop", "state_dir"}  # SES_RELAY_EVENT_LOOP, SES_RELAY_STATE_DIR


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {path}: {message}")
    return "\n".join(lines)


def load_config(
    path: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the Config. `path=None` reads DEFAULT_CONFIG_PATH if it exists, else uses built-in defaults.

    An explicit path that does not exist is an error: a typo must not silently mean "defaults".
    """
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, not {type(loaded).__name__}")
        data = loaded
    env_tree = _env_overrides(environ)
    if env_tree:
        data = _merge(data, env_tree)
        source = f"{source} + environment"
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def dump_defaults() -> str:
    """The defaults as YAML (used to check config.example.yaml stays complete)."""
    return yaml.safe_dump(Config().model_dump(mode="json"), sort_keys=False)
