"""`ses-relay doctor`: will this relay, with this config and these credentials, deliver mail?

Each check ends in a status (ok / warn / fail), a one-line finding and a one-line fix hint. Exit code:
0 when nothing failed (warnings do not fail), 1 when a check failed, 2 when the config does not load.

The credentials, region, endpoint and GetAccount go through the relay's own sender (relay/ses/client.py),
so doctor sees exactly what `serve` would see. The other SESv2 calls and SQS use boto3 clients: doctor
is a short-lived CLI, so their import cost does not matter, and they run outside any event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from relay.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

OK, WARN, FAIL = "ok", "warn", "fail"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
CALL_TIMEOUT = 10.0  # seconds for each boto3 call: an unreachable endpoint must not stall doctor
LOW_DISK_BYTES = 256 * 1024 * 1024
QUOTA_WARN_SHARE = 0.8  # of Max24HourSend sent in the last 24 h
FEEDBACK_EVENTS = ("BOUNCE", "COMPLAINT")
# SES refused the request's credentials (as opposed to refusing the action: AccessDeniedException).
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}
_NOT_CHECKED = "fix the failing AWS check above first"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    finding: str
    hint: str = ""
    subject: str = ""  # what was checked, when a check runs once per item (a sender address)


@dataclass
class _Ses:
    """What the SES part learned, for the checks that depend on it."""

    region: str = ""
    reachable: bool = False  # credentials found and accepted (GetAccount answered, or only denied)


# -- the checks --------------------------------------------------------------------------------------


def run_checks(config: Config, senders: list[str]) -> list[Check]:
    checks: list[Check] = []
    if config.ses.dry_run:
        checks.append(
            Check(
                "ses.dry_run",
                WARN,
                "ses.dry_run is on: accepted mail is saved as .eml, never sent",
                "set ses.dry_run: false (and do not pass --dry-run to serve) to send through SES",
            )
        )
    ses = _Ses()
    checks += asyncio.run(_sender_checks(config, ses))
    client = _sesv2_client(config, ses.region) if ses.reachable else None
    try:
        checks += _identity_checks(client, senders, ses.region)
        checks += _configuration_set_checks(client, config, ses.region)
    finally:
        if client is not None:
            client.close()
    checks += _feedback_checks(config, ses.region)
    checks.append(_state_dir_check(config.resolved_state_dir))
    return checks


async def _sender_checks(config: Config, ses: _Ses) -> list[Check]:
    """Region, credentials and GetAccount through the relay's own SesSender."""
    import aiohttp

    from relay.app import build_sender
    from relay.metrics import RelayMetrics
    from relay.ses.client import AccountReadError, SesSender
    from relay.startup import StartupError

    # As serve builds it, minus the dry run and the GetAccount reads (doctor reads it below).
    no_reads = {"dry_run": False, "max_send_rate": None, "quota_reserve": 0}
    settings = config.model_copy(update={"ses": config.ses.model_copy(update=no_reads)})
    sender = build_sender(settings, RelayMetrics())
    assert isinstance(sender, SesSender)
    checks = []
    try:
        try:
            await sender.start()
        except StartupError as exc:
            return [
                Check(
                    "aws.credentials",
                    FAIL,
                    str(exc),
                    "check AWS_PROFILE and ~/.aws/config (or the variables the error names)",
                )
            ]
        ses.region = sender.region
        checks.append(_region_check(config, sender.region))
        method = sender.credentials_method
        if method is None:
            checks.append(
                Check(
                    "aws.credentials",
                    FAIL,
                    "no AWS credentials found (environment, profile, ~/.aws, container or instance role)",
                    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an "
                    "instance/task role (IRSA or Pod Identity on Kubernetes)",
                )
            )
            return checks
        checks.append(Check("aws.credentials", OK, f"found ({method}); SES endpoint {sender.url}"))
        try:
            account = await sender.get_account()
        except AccountReadError as exc:
            if exc.code in _BAD_CREDENTIALS:
                checks.append(
                    Check(
                        "ses.account",
                        FAIL,
                        f"SES refused the credentials: GetAccount {exc}",
                        "the access key is wrong, expired or for another account/partition: replace it",
                    )
                )
                return checks
            ses.reachable = True
            if exc.code in ("AccessDeniedException", "AccessDenied"):
                checks.append(
                    Check(
                        "ses.account",
                        WARN,
                        "not allowed to read the account (ses:GetAccount)",
                        "allow ses:GetAccount (README 'AWS permissions'); max_send_rate: auto needs it too",
                    )
                )
            else:
                checks.append(
                    Check(
                        "ses.account",
                        FAIL,
                        f"GetAccount failed: {exc}",
                        "check ses.endpoint_url and ses.region",
                    )
                )
            return checks
        except (TimeoutError, OSError, ValueError, aiohttp.ClientError) as exc:
            checks.append(_unreachable(sender.url, exc))
            return checks
        ses.reachable = True
        return checks + _account_checks(account, config)
    finally:
        await sender.close()


def _unreachable(url: str, exc: BaseException) -> Check:
    reason = " ".join(str(exc).split())[:200] or exc.__class__.__name__
    return Check(
        "ses.account",
        FAIL,
        f"cannot reach SES ({url}): {reason}",
        "check the network path (proxy, firewall, DNS) and ses.endpoint_url / ses.region",
    )


def _region_check(config: Config, region: str) -> Check:
    if config.ses.region:
        return Check("aws.region", OK, f"{region} (ses.region)")
    import botocore.session

    # The sender falls back to us-east-1 when nothing names a region; say so, it is rarely intended.
    if botocore.session.Session().get_config_variable("region"):
        return Check("aws.region", OK, f"{region} (from AWS_REGION / AWS_DEFAULT_REGION or the profile)")
    return Check(
        "aws.region",
        WARN,
        f"no region configured: using {region}",
        "set ses.region (or AWS_REGION) to the region where your identities are verified",
    )


def _account_checks(account: dict[str, Any], config: Config) -> list[Check]:
    checks = []
    enforcement = str(account.get("EnforcementStatus") or "not reported")
    if not account.get("SendingEnabled", False):
        checks.append(
            Check(
                "ses.account",
                FAIL,
                f"sending is paused for the account (enforcement status {enforcement}): "
                "every message is answered 451 4.3.2",
                "see the SES console's Reputation metrics; resume with `aws sesv2 "
                "put-account-sending-attributes --sending-enabled` once the cause is fixed",
            )
        )
    elif enforcement in ("HEALTHY", "not reported"):  # moto and some emulators do not report it
        checks.append(Check("ses.account", OK, f"sending enabled, enforcement status {enforcement}"))
    elif enforcement == "SHUTDOWN":
        checks.append(
            Check(
                "ses.account",
                FAIL,
                "the account is shut down by SES (enforcement SHUTDOWN)",
                "contact AWS support through the SES console's account dashboard",
            )
        )
    else:
        checks.append(
            Check(
                "ses.account",
                WARN,
                f"sending enabled, but enforcement status is {enforcement} "
                "(under review: bounce or complaint rate too high)",
                "lower the bounce/complaint rate (feedback wiring below) and answer SES's review notice",
            )
        )
    if account.get("ProductionAccessEnabled"):
        checks.append(Check("ses.sandbox", OK, "production access"))
    else:
        checks.append(
            Check(
                "ses.sandbox",
                WARN,
                "the account is in the SES sandbox: mail only to verified recipients, 200 per 24 h",
                "request production access (SES console: Account dashboard, Request production access)",
            )
        )
    checks.append(_quota_check(account.get("SendQuota") or {}, config.ses.max_send_rate))
    return checks


def _quota_check(quota: dict[str, Any], configured_rate: float | str | None) -> Check:
    max24 = float(quota.get("Max24HourSend", 0))
    sent = float(quota.get("SentLast24Hours", 0))
    rate = float(quota.get("MaxSendRate", 0))
    finding = f"{sent:.0f} of {max24:.0f} sent in the last 24 h; max send rate {rate:g}/s"
    increase = "request a higher sending quota (Service Quotas: Amazon SES, 'Sending quota')"
    if max24 > 0 and sent >= max24:
        return Check("ses.quota", FAIL, finding + ": quota used up, mail is answered 451 4.4.5", increase)
    if max24 > 0 and sent >= QUOTA_WARN_SHARE * max24:
        return Check("ses.quota", WARN, finding + f": over {QUOTA_WARN_SHARE:.0%} used", increase)
    if isinstance(configured_rate, float) and rate and configured_rate > rate:
        return Check(
            "ses.quota",
            WARN,
            finding + f": ses.max_send_rate {configured_rate:g} is above it, SES will throttle",
            f"set ses.max_send_rate to {rate:g} or 'auto'",
        )
    return Check("ses.quota", OK, finding)


# -- SESv2 identities and configuration set (boto3) ---------------------------------------------------


def _client_config() -> Any:
    import botocore.config

    return botocore.config.Config(
        connect_timeout=CALL_TIMEOUT,
        read_timeout=CALL_TIMEOUT,
        retries={"total_max_attempts": 1, "mode": "standard"},  # a diagnosis, not a delivery
    )


def _sesv2_client(config: Config, region: str) -> Any:
    import boto3

    # The region the sender resolved, so both talk to the same SES; endpoint_url as the sender has it.
    return boto3.Session().client(
        "sesv2", region_name=region, endpoint_url=config.ses.endpoint_url, config=_client_config()
    )


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or exc.__class__.__name__


def _call_failed(name: str, operation: str, exc: Exception, subject: str = "") -> Check:
    """A call doctor could not make: a warning when only doctor's permission is missing."""
    if _error_code(exc) in ("AccessDeniedException", "AccessDenied"):
        return Check(
            name,
            WARN,
            f"not checked: {operation} is not allowed",
            f"allow ses:{operation} to let doctor check it",
            subject=subject,
        )
    return Check(
        name,
        FAIL,
        f"{operation} failed: {_describe(exc)}",
        "check ses.endpoint_url / ses.region and the network path to SES",
        subject=subject,
    )


def _get_identity(client: Any, name: str) -> dict[str, Any] | None:
    """GetEmailIdentity, or None when SES has no such identity."""
    import botocore.exceptions

    try:
        return dict(client.get_email_identity(EmailIdentity=name))
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) == "NotFoundException":
            return None
        raise


def _identity_checks(client: Any, senders: list[str], region: str) -> list[Check]:
    if not senders:
        return [
            Check(
                "ses.identity",
                WARN,
                "no --sender given: From: addresses not checked",
                "run doctor --sender you@your-domain for each address your software sends as",
            )
        ]
    if client is None:
        return [Check("ses.identity", WARN, "not checked", _NOT_CHECKED, subject=s) for s in senders]
    return [_identity_check(client, sender, region) for sender in senders]


def _identity_check(client: Any, sender: str, region: str) -> Check:
    import botocore.exceptions

    domain = sender.rpartition("@")[2].lower()
    try:
        address = _get_identity(client, sender) if "@" in sender else None
        domain_identity = _get_identity(client, domain)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return _call_failed("ses.identity", "GetEmailIdentity", exc, sender)

    def verified(identity: dict[str, Any] | None) -> bool:
        return bool(identity and identity.get("VerifiedForSendingStatus"))

    def state(identity: dict[str, Any] | None) -> str:
        return "not an identity" if identity is None else str(identity.get("VerificationStatus") or "PENDING")

    if not (verified(address) or verified(domain_identity)):
        seen = f"domain {domain}: {state(domain_identity)}"
        if "@" in sender:
            seen = f"address: {state(address)}, {seen}"
        pending = address is not None or domain_identity is not None
        hint = (
            "finish the verification: publish the domain's DKIM CNAME records, or click the link SES mailed"
            if pending
            else f"verify it in {region}: aws sesv2 create-email-identity --email-identity {domain}"
        )
        return Check(
            "ses.identity",
            FAIL,
            f"{sender} is not verified for sending in {region} ({seen}): SES rejects it, 554 5.7.1",
            hint,
            subject=sender,
        )
    via = "the domain" if verified(domain_identity) else "the address"
    dkim = (domain_identity or {}).get("DkimAttributes") or {}
    if dkim.get("Status") == "SUCCESS" and dkim.get("SigningEnabled", True):
        return Check(
            "ses.identity", OK, f"{sender}: verified ({via}), DKIM signing with {domain}", subject=sender
        )
    dkim_state = "no domain identity" if domain_identity is None else f"DKIM {dkim.get('Status') or 'off'}"
    return Check(
        "ses.identity",
        WARN,
        f"{sender}: verified ({via}), but {dkim_state}: mail is not DKIM-signed by {domain}",
        f"verify {domain} with Easy DKIM and publish its three CNAME records (helps DMARC)",
        subject=sender,
    )


def _configuration_set_checks(client: Any, config: Config, region: str) -> list[Check]:
    import botocore.exceptions

    name = config.ses.configuration_set
    if not name:
        return [
            Check("ses.configuration_set", OK, "not set (feedback must come from identity notifications)")
        ]
    if client is None:
        return [Check("ses.configuration_set", WARN, "not checked", _NOT_CHECKED, subject=name)]
    try:
        found = client.get_configuration_set(ConfigurationSetName=name)
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) == "NotFoundException":
            return [
                Check(
                    "ses.configuration_set",
                    FAIL,
                    f"{name} does not exist in {region}: every message is answered 451 4.3.5",
                    f"create it (aws sesv2 create-configuration-set --configuration-set-name {name}) "
                    "or correct ses.configuration_set",
                    subject=name,
                )
            ]
        return [_call_failed("ses.configuration_set", "GetConfigurationSet", exc, name)]
    except botocore.exceptions.BotoCoreError as exc:
        return [_call_failed("ses.configuration_set", "GetConfigurationSet", exc, name)]
    if (found.get("SendingOptions") or {}).get("SendingEnabled") is False:
        checks = [
            Check(
                "ses.configuration_set",
                FAIL,
                f"{name}: sending is paused for this set: every message is answered 451 4.3.2",
                f"aws sesv2 put-configuration-set-sending-options --configuration-set-name {name} "
                "--sending-enabled",
                subject=name,
            )
        ]
    else:
        checks = [Check("ses.configuration_set", OK, f"{name} exists", subject=name)]
    try:
        destinations = client.get_configuration_set_event_destinations(ConfigurationSetName=name)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        failed = _call_failed("ses.event_destinations", "GetConfigurationSetEventDestinations", exc, name)
        return checks + [failed]
    return checks + [_event_destinations_check(name, destinations.get("EventDestinations") or [], config)]


def _event_destinations_check(name: str, destinations: list[dict[str, Any]], config: Config) -> Check:
    feedback = [d for d in destinations if d.get("Enabled")]
    covered = {event for d in feedback for event in d.get("MatchingEventTypes") or []}
    missing = [event for event in FEEDBACK_EVENTS if event not in covered]
    if missing:
        return Check(
            "ses.event_destinations",
            WARN,
            f"{name} has no enabled event destination for {' and '.join(missing)}: the relay "
            "does not learn those from it",
            "add an SNS event destination for BOUNCE and COMPLAINT (README 'Bounces and complaints')",
            subject=name,
        )
    sns = config.feedback.sns
    topics = {
        str((d.get("SnsDestination") or {}).get("TopicArn"))
        for d in feedback
        if set(d.get("MatchingEventTypes") or []) & set(FEEDBACK_EVENTS) and d.get("SnsDestination")
    }
    if sns.enabled and topics and not topics & set(sns.topic_arns):
        return Check(
            "ses.event_destinations",
            WARN,
            f"{name} publishes bounces/complaints to {', '.join(sorted(topics))}, which is not in "
            "feedback.sns.topic_arns: the webhook refuses those",
            "add the topic to feedback.sns.topic_arns",
            subject=name,
        )
    return Check(
        "ses.event_destinations", OK, f"{name}: BOUNCE and COMPLAINT have an event destination", subject=name
    )


# -- feedback wiring -----------------------------------------------------------------------------------


def _feedback_checks(config: Config, ses_region: str) -> list[Check]:
    sns, sqs = config.feedback.sns, config.feedback.sqs
    checks = []
    if not sns.enabled and not sqs.queue_url:
        checks.append(
            Check(
                "feedback",
                WARN,
                "neither feedback.sqs nor feedback.sns is set: bounces and complaints are never learned",
                "set feedback.sqs.queue_url (README 'Bounces and complaints')",
            )
        )
    if sqs.queue_url:
        checks.append(_sqs_check(config))
    if sns.enabled:
        # The config refuses malformed ARNs; what it cannot know is that SES publishes only to
        # topics in its own region.
        elsewhere = [arn for arn in sns.topic_arns if ses_region and arn.split(":")[3] != ses_region]
        if elsewhere:
            checks.append(
                Check(
                    "feedback.sns",
                    WARN,
                    f"topic(s) outside the SES region {ses_region}: {', '.join(elsewhere)}",
                    "SES publishes only to SNS topics in its own region: use a topic there",
                )
            )
        else:
            checks.append(Check("feedback.sns", OK, f"{len(sns.topic_arns)} topic ARN(s), well-formed"))
    return checks


def _sqs_check(config: Config) -> Check:
    import boto3
    import botocore.exceptions

    from relay.aws import DEFAULT_REGION
    from relay.feedback.sqs import _region_from_url

    sqs = config.feedback.sqs
    url = str(sqs.queue_url)
    session = boto3.Session(region_name=sqs.region)
    region = sqs.region or session.region_name or _region_from_url(url) or DEFAULT_REGION  # as SqsPoller
    client = session.client("sqs", region_name=region, endpoint_url=sqs.endpoint_url, config=_client_config())
    try:
        attributes = client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"]
        ).get("Attributes", {})
    except botocore.exceptions.NoCredentialsError:
        return Check("feedback.sqs", WARN, "not checked: no AWS credentials", _NOT_CHECKED, subject=url)
    except botocore.exceptions.ClientError as exc:
        code = _error_code(exc)
        if code in ("AccessDenied", "AccessDeniedException"):
            return Check(
                "feedback.sqs",
                WARN,
                "doctor may not read the queue's attributes",
                "allow sqs:GetQueueAttributes to check it (the relay itself needs only "
                "sqs:ReceiveMessage and sqs:DeleteMessage)",
                subject=url,
            )
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            return Check(
                "feedback.sqs",
                FAIL,
                "the queue does not exist: feedback is never read",
                "create it and subscribe it to the SES feedback topic, or correct feedback.sqs.queue_url",
                subject=url,
            )
        return Check(
            "feedback.sqs",
            FAIL,
            f"GetQueueAttributes failed: {_describe(exc)}",
            "check feedback.sqs.queue_url and the queue policy",
            subject=url,
        )
    except botocore.exceptions.BotoCoreError as exc:
        return Check(
            "feedback.sqs",
            FAIL,
            f"queue unreachable: {_describe(exc)}",
            "check feedback.sqs.queue_url / endpoint_url and the network path to SQS",
            subject=url,
        )
    finally:
        client.close()
    waiting = attributes.get("ApproximateNumberOfMessages", "?")
    if not attributes.get("RedrivePolicy"):
        return Check(
            "feedback.sqs",
            WARN,
            f"reachable, {waiting} messages waiting, but no dead-letter queue: a message the relay "
            "cannot parse comes back forever",
            "set a RedrivePolicy to a dead-letter queue (e.g. maxReceiveCount 5)",
            subject=url,
        )
    return Check(
        "feedback.sqs", OK, f"reachable, {waiting} messages waiting, dead-letter queue set", subject=url
    )


# -- local state ---------------------------------------------------------------------------------------


def _state_dir_check(path: Path) -> Check:
    hint = f"chown the directory to the relay's user, or set SES_RELAY_STATE_DIR / state_dir (now {path})"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path:
        if not path.is_dir():
            return Check("state_dir", FAIL, f"{path} is not a directory", hint)
        try:
            # A real write, as the store and the spool will do (os.access ignores read-only mounts).
            with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-") as probe:
                probe.write(b"x")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return Check("state_dir", FAIL, f"{path} is not writable: {exc.strerror or exc}", hint)
        where = f"{path} writable"
    elif not existing.is_dir():
        return Check("state_dir", FAIL, f"{path} cannot be created: {existing} is not a directory", hint)
    elif os.access(existing, os.W_OK | os.X_OK):
        where = f"{path} does not exist yet; the relay creates it in {existing}"
    else:
        return Check("state_dir", FAIL, f"{path} does not exist and {existing} is not writable", hint)
    free = shutil.disk_usage(existing).free
    finding = f"{where}, {free / 2**30:.1f} GiB free"
    if free < LOW_DISK_BYTES:
        return Check("state_dir", WARN, finding + ": low", "free space on that filesystem")
    return Check("state_dir", OK, finding)


# -- output ---------------------------------------------------------------------------------------------


def exit_code(checks: list[Check]) -> int:
    return EXIT_FAILED if any(check.status == FAIL for check in checks) else EXIT_OK


def render_text(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        subject = f" [{check.subject}]" if check.subject and check.subject not in check.finding else ""
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.finding}{subject}")
        if check.status != OK and check.hint:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.hint}")
    counts = {status: sum(check.status == status for check in checks) for status in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines)


def render_json(checks: list[Check], code: int) -> str:
    return json.dumps({"exit_code": code, "checks": [asdict(check) for check in checks]}, indent=2)


def doctor(config_path: Path | None, senders: list[str], *, as_json: bool) -> int:
    """The subcommand: load the config, run every check, print the report, return the exit code."""
    # The report says what the sender would log (no credentials, no region): keep stderr for errors.
    logging.getLogger("relay").setLevel(logging.ERROR)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        checks = [
            Check(
                "config",
                FAIL,
                " / ".join(str(exc).splitlines()),
                "fix the key named there; `ses-relay check-config` reports the same",
            )
        ]
        code = EXIT_CONFIG
    else:
        if config_path is None and DEFAULT_CONFIG_PATH.exists():
            config_path = DEFAULT_CONFIG_PATH
        source = str(config_path) if config_path else "built-in defaults"
        checks = [Check("config", OK, f"loaded {source}")] + run_checks(config, senders)
        code = exit_code(checks)
    print(render_json(checks, code) if as_json else render_text(checks))
    return code
