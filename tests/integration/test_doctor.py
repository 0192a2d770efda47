"""`ses-relay doctor` against the fake SES and moto (SQS).

The fake SES serves GetAccount, GetEmailIdentity and the configuration-set routes in the real restJson
format; moto's server holds the SQS queues. The main cases run the real CLI as a subprocess
(`python -m relay doctor --json`) and check the JSON report: the status of the check that matters,
its fix hint, and the exit code (0 nothing failed, 1 a check failed, 2 bad config). Variations of one
check call `run_checks` in-process (the same code, over the same sockets) to keep the suite fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from relay.config import load_config
from relay.doctor import exit_code, run_checks
from testkit.fake_ses import FakeSES
from testkit.net import free_port
from testkit.serve import relay_env, run_cli, write_config

SENDER = "alice@example.com"
CONFIGURATION_SET = "relay-feedback"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
FEEDBACK_DESTINATION = {
    "Name": "to-sns",
    "Enabled": True,
    "MatchingEventTypes": ["BOUNCE", "COMPLAINT", "DELIVERY"],
    "SnsDestination": {"TopicArn": TOPIC},
}


def sqs_client(moto):
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def feedback_queue(moto, name: str = "ses-feedback") -> str:
    """A queue with a dead-letter queue, as the README recommends."""
    sqs = sqs_client(moto)
    dead = sqs.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "5"})
    return sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})["QueueUrl"]


@pytest.fixture
def healthy(fake_ses: FakeSES, moto) -> dict[str, Any]:
    """A setup doctor finds nothing wrong with: the config for it."""
    fake_ses.add_identity("example.com")
    fake_ses.add_configuration_set(CONFIGURATION_SET, event_destinations=[FEEDBACK_DESTINATION])
    return {
        "ses": {"endpoint_url": fake_ses.endpoint_url, "region": "us-east-1",
                "configuration_set": CONFIGURATION_SET},
        "feedback": {"sqs": {"queue_url": feedback_queue(moto), "endpoint_url": moto.endpoint_url}},
    }


def doctor(tmp_path: Path, config: dict[str, Any] | None, *senders: str,
           env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    args = ["doctor", "--json"]
    if config is not None:
        args += ["--config", str(write_config(tmp_path, config, "doctor.yaml"))]
    for sender in senders:
        args += ["--sender", sender]
    result = run_cli(args, env if env is not None else relay_env(tmp_path))
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    for check in report["checks"]:
        assert check["status"] in ("ok", "warn", "fail"), check
        assert check["finding"], check
        assert check["status"] == "ok" or check["hint"], check  # every problem says how to fix it
    return result.returncode, report["checks"]


def in_process(tmp_path: Path, config: dict[str, Any], *senders: str) -> tuple[int, list[dict[str, Any]]]:
    """run_checks in this process: (exit code, checks as in the JSON report)."""
    settings = load_config(None, environ={}, overrides={"state_dir": str(tmp_path / "state"), **config})
    checks = run_checks(settings, list(senders))
    return exit_code(checks), [vars(check) for check in checks]


def only(checks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (check,) = [c for c in checks if c["name"] == name]
    return check


def test_healthy_setup_is_all_ok(healthy, tmp_path):
    code, checks = doctor(tmp_path, healthy, SENDER, "bob@example.com")
    assert code == 0
    assert {c["status"] for c in checks} == {"ok"}, [c for c in checks if c["status"] != "ok"]
    names = [c["name"] for c in checks]
    for expected in ("config", "aws.region", "aws.credentials", "ses.account", "ses.sandbox", "ses.quota",
                     "ses.configuration_set", "ses.event_destinations", "feedback.sqs", "state_dir"):
        assert expected in names
    assert [c["subject"] for c in checks if c["name"] == "ses.identity"] == [SENDER, "bob@example.com"]
    assert "max send rate 14/s" in only(checks, "ses.quota")["finding"]


def test_text_report_without_json(healthy, tmp_path):
    result = run_cli(["doctor", "--config", str(write_config(tmp_path, healthy, "doctor.yaml")),
                      "--sender", SENDER], relay_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith("0 warn, 0 fail")


@pytest.mark.parametrize(
    ("setup", "status", "hint"),
    [
        ("none", "fail", "create-email-identity --email-identity unverified.example"),
        ("pending", "fail", "finish the verification"),
        ("no_dkim", "warn", "DKIM"),
    ],
)
def test_sender_identity(healthy, fake_ses, tmp_path, setup, status, hint):
    if setup == "pending":
        fake_ses.add_identity("unverified.example", verified=False, dkim="PENDING")
    elif setup == "no_dkim":
        fake_ses.add_identity("unverified.example", dkim="NOT_STARTED")
    code, checks = in_process(tmp_path, healthy, "someone@unverified.example")
    check = only(checks, "ses.identity")
    assert check["status"] == status, check
    assert check["subject"] == "someone@unverified.example"
    assert hint in check["hint"]
    assert code == (1 if status == "fail" else 0)


def test_an_address_identity_is_enough_to_send(healthy, fake_ses, tmp_path):
    fake_ses.add_identity("ops@other.example")  # the address verified, not its domain
    code, checks = in_process(tmp_path, healthy, "ops@other.example")
    check = only(checks, "ses.identity")
    assert check["status"] == "warn", check  # sendable, but not DKIM-signed by other.example
    assert "verified (the address)" in check["finding"]
    assert code == 0


def test_missing_configuration_set_fails(healthy, tmp_path):
    healthy["ses"]["configuration_set"] = "no-such-set"
    code, checks = doctor(tmp_path, healthy, SENDER)
    check = only(checks, "ses.configuration_set")
    assert check["status"] == "fail"
    assert "create-configuration-set --configuration-set-name no-such-set" in check["hint"]
    assert "ses.event_destinations" not in [c["name"] for c in checks]
    assert code == 1


def test_configuration_set_without_bounce_and_complaint_destinations_warns(healthy, fake_ses, tmp_path):
    delivery_only = {**FEEDBACK_DESTINATION, "MatchingEventTypes": ["SEND", "DELIVERY"]}
    disabled = {**FEEDBACK_DESTINATION, "Name": "off", "Enabled": False}
    fake_ses.add_configuration_set("partial", event_destinations=[delivery_only, disabled])
    healthy["ses"]["configuration_set"] = "partial"
    code, checks = doctor(tmp_path, healthy, SENDER)
    check = only(checks, "ses.event_destinations")
    assert check["status"] == "warn"
    assert "BOUNCE and COMPLAINT" in check["finding"]
    assert "event destination" in check["hint"]
    assert code == 0  # the relay delivers; it only does not learn bounces from this set


def test_paused_configuration_set_fails(healthy, fake_ses, tmp_path):
    fake_ses.add_configuration_set(CONFIGURATION_SET, sending_enabled=False,
                                   event_destinations=[FEEDBACK_DESTINATION])
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "ses.configuration_set")["status"] == "fail"
    assert "--sending-enabled" in only(checks, "ses.configuration_set")["hint"]
    assert code == 1


def test_unreachable_sqs_queue_fails(healthy, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    healthy["feedback"]["sqs"] = {"queue_url": f"{closed}/123456789012/ses-feedback", "endpoint_url": closed}
    code, checks = doctor(tmp_path, healthy, SENDER)
    check = only(checks, "feedback.sqs")
    assert check["status"] == "fail"
    assert "unreachable" in check["finding"]
    assert "feedback.sqs.queue_url" in check["hint"]
    assert code == 1


def test_missing_sqs_queue_fails_and_a_queue_without_dead_letters_warns(healthy, moto, tmp_path):
    queue_url = healthy["feedback"]["sqs"]["queue_url"]
    healthy["feedback"]["sqs"]["queue_url"] = queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "feedback.sqs")["status"] == "fail"
    assert "does not exist" in only(checks, "feedback.sqs")["finding"]
    assert code == 1

    plain = sqs_client(moto).create_queue(QueueName="plain")["QueueUrl"]
    healthy["feedback"]["sqs"]["queue_url"] = plain
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "feedback.sqs")["status"] == "warn"
    assert "RedrivePolicy" in only(checks, "feedback.sqs")["hint"]
    assert code == 0


def test_no_credentials_fails_with_a_hint(healthy, tmp_path):
    env = relay_env(tmp_path, aws=False, AWS_EC2_METADATA_DISABLED="true",
                    AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    code, checks = doctor(tmp_path, healthy, SENDER, env=env)
    check = only(checks, "aws.credentials")
    assert check["status"] == "fail"
    assert "AWS_ACCESS_KEY_ID" in check["hint"]
    # What needs SES is reported as not checked, not as a second, misleading failure.
    assert only(checks, "ses.identity")["status"] == "warn"
    assert only(checks, "ses.configuration_set")["status"] == "warn"
    assert code == 1


@pytest.mark.parametrize(
    ("change", "name", "status", "code"),
    [
        ({"ProductionAccessEnabled": False}, "ses.sandbox", "warn", 0),
        ({"SendingEnabled": False}, "ses.account", "fail", 1),
        ({"EnforcementStatus": "PROBATION"}, "ses.account", "warn", 0),
        ({"SendQuota": {"Max24HourSend": 200.0, "SentLast24Hours": 200.0}}, "ses.quota", "fail", 1),
    ],
)
def test_account_state(healthy, fake_ses, tmp_path, change, name, status, code):
    fake_ses.account.update(change)
    got, checks = in_process(tmp_path, healthy, SENDER)
    check = only(checks, name)
    assert check["status"] == status, check
    assert check["status"] == "ok" or check["hint"]
    assert got == code


def test_get_account_denied_is_a_warning_and_the_other_checks_still_run(healthy, fake_ses, tmp_path):
    fake_ses.account_max_send_rate = None  # the fake answers 403 AccessDeniedException
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "ses.account")["status"] == "warn"
    assert "ses:GetAccount" in only(checks, "ses.account")["hint"]
    assert only(checks, "ses.identity")["status"] == "ok"
    assert code == 0


def test_unreachable_ses_fails(healthy, tmp_path):
    healthy["ses"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "ses.account")["status"] == "fail"
    assert "cannot reach SES" in only(checks, "ses.account")["finding"]
    assert only(checks, "ses.identity")["status"] == "warn"  # not checked
    assert code == 1


def test_sns_topic_outside_the_ses_region_warns(healthy, tmp_path):
    healthy["feedback"]["sns"] = {"enabled": True, "topic_arns": [TOPIC.replace("us-east-1", "eu-west-1")]}
    code, checks = in_process(tmp_path, healthy, SENDER)
    assert only(checks, "feedback.sns")["status"] == "warn"
    assert code == 0


def test_state_dir_not_writable_fails(healthy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state = blocker / "state"  # under a file: can never be created
    code, checks = doctor(tmp_path, healthy, SENDER, env=relay_env(tmp_path, SES_RELAY_STATE_DIR=str(state)))
    assert only(checks, "state_dir")["status"] == "fail"
    assert code == 1


def test_config_error_is_exit_2_with_a_json_report(tmp_path):
    code, checks = doctor(tmp_path, {"ses": {"no_such_key": 1}})
    assert code == 2
    assert checks == [only(checks, "config")]
    assert checks[0]["status"] == "fail"
    assert "ses.no_such_key" in checks[0]["finding"]


def test_bounces_published_to_a_topic_the_webhook_does_not_accept_warns(healthy, tmp_path):
    other = TOPIC.replace("ses-feedback", "other-topic")
    healthy["feedback"]["sns"] = {"enabled": True, "topic_arns": [other]}
    code, checks = in_process(tmp_path, healthy, SENDER)
    check = only(checks, "ses.event_destinations")
    assert check["status"] == "warn"
    assert "feedback.sns.topic_arns" in check["hint"]
    assert code == 0
