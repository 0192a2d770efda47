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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class TlsConfig(_Section):
    cert: Path | None = None
    key: Path | None = None
    implicit_listen: list[str] = []
    require_for_auth: bool = True


class AuthConfig(_Section):
    required: bool = False
    users_file: Path | None = None


class SmtpConfig(_Section):
    listen: list[str] = ["127.0.0.1:2525"]
    hostname: str = "relay.local"
    max_message_size: int = Field(SES_MAX_MESSAGE_SIZE, gt=0, le=SES_MAX_MESSAGE_SIZE)
    max_recipients: int = Field(SES_MAX_RECIPIENTS, gt=0)
    allowed_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    max_connections: int = Field(100, gt=0)
    idle_timeout: float = Field(300.0, gt=0)  # seconds without a command before the server hangs up
    command_call_limit: int = Field(1000, gt=0)  # per command per session, against command floods
    shutdown_grace: float = Field(30.0, ge=0)  # seconds to let in-flight transactions finish on stop
    # Bytes of message data held in memory at once, all transactions together (DATA being read,
    # messages waiting for SES). Past it DATA is answered 452 4.3.1 and the client retries. Must be
    # at least twice max_message_size: removing a Bcc header briefly needs a second copy.
    memory_budget: int = Field(256 * 1024 * 1024, gt=0)
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one listen address is needed")
        for item in value:
            parse_host_port(item)
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
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
    mode: Literal["direct", "spool"] = "direct"
    spool_dir: Path | None = None


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
    listen: str | None = "127.0.0.1:9025"  # null disables the HTTP side

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value


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
    logging: LoggingConfig = LoggingConfig()
    state_dir: Path | None = None  # None: see default_state_dir()
    # auto: uvloop when installed (pip install 'ses-relay[uvloop]'; ~8% more throughput in paired
    # benchmark runs), else asyncio's own loop.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        if self.delivery.mode == "spool":
            raise ValueError("delivery.mode: 'spool' is not available in this version; use 'direct'")
        if self.smtp.auth.required or self.smtp.auth.users_file:
            raise ValueError("smtp.auth: SMTP AUTH is not available in this version")
        if self.smtp.tls.cert or self.smtp.tls.key or self.smtp.tls.implicit_listen:
            raise ValueError("smtp.tls: TLS is not available in this version")
        if self.smtp.memory_budget < 2 * self.smtp.max_message_size:
            raise ValueError(
                f"smtp.memory_budget ({self.smtp.memory_budget}) must be at least twice "
                f"smtp.max_message_size ({self.smtp.max_message_size}), or a message of the maximum "
                "size with a Bcc header could never be accepted"
            )
        if self.suppression.backend == "dynamodb" and not self.suppression.dynamodb.table:
            raise ValueError("suppression.dynamodb.table is required when suppression.backend is 'dynamodb'")
        if self.guard.enabled and not (self.feedback.sns.enabled or self.feedback.sqs.queue_url):
            raise ValueError(
                "guard.enabled needs feedback (feedback.sns or feedback.sqs): it learns bounces there"
            )
        if self.feedback.sns.enabled and not self.http.listen:
            raise ValueError("feedback.sns.enabled needs http.listen (SNS posts to /sns)")
        return self

    # Resolved paths: everything stateful lives under one directory.
    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or default_state_dir()

    @property
    def suppression_path(self) -> Path:
        return self.suppression.path or self.resolved_state_dir / "suppression.db"

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
