"""SNS signature verification with a test CA: every forgery, alteration and replay is refused."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.feedback.sns import SnsVerificationError, SnsVerifier, string_to_sign
from testkit.sns_signer import CERT_URL, REGION, TOPIC_ARN, FakeSns


@pytest.fixture
def sns() -> FakeSns:
    return FakeSns()


def verify(sns: FakeSns, message, **kwargs):
    verifier = SnsVerifier([TOPIC_ARN], fetch_certificate=sns.http_get, **kwargs)
    return asyncio.run(verifier.verify(message))


def reason_of(sns: FakeSns, message, **kwargs) -> str:
    with pytest.raises(SnsVerificationError) as failure:
        verify(sns, message, **kwargs)
    return failure.value.reason


@pytest.mark.parametrize("version", ["1", "2"])
def test_valid_notification_verifies(sns, version):
    message = sns.notification({"notificationType": "Delivery"}, version=version, subject="hello")
    assert verify(sns, message) is message
    assert sns.fetched == [CERT_URL]


def test_subscription_confirmation_verifies(sns):
    message = sns.subscription_confirmation()
    assert verify(sns, message)["Token"] == message["Token"]


def test_string_to_sign_matches_documented_order(sns):
    message = sns.notification("m", subject="s")
    expected = (f"Message\nm\nMessageId\n{message['MessageId']}\nSubject\ns\nTimestamp\n{message['Timestamp']}\n"
                f"TopicArn\n{TOPIC_ARN}\nType\nNotification\n")
    assert string_to_sign(message) == expected.encode()


@pytest.mark.parametrize("field,value", [("Message", '{"notificationType": "Bounce"}'), ("MessageId", "other"),
                                         ("Subject", "changed"), ("Type", "SubscriptionConfirmation")])
def test_altered_message_is_refused(sns, field, value):
    message = sns.notification("original", subject="s")
    message[field] = value
    assert reason_of(sns, message) in {"bad_signature", "malformed"}


def test_signature_by_another_key_is_refused(sns):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = sns.sign({k: v for k, v in sns.notification("x").items()
                        if k not in ("Signature", "SignatureVersion")}, key=other)
    assert reason_of(sns, message) == "bad_signature"


def test_unknown_topic_is_refused_without_any_fetch(sns):
    message = sns.notification("x", topic_arn="arn:aws:sns:us-east-1:999999999999:attacker")
    assert reason_of(sns, message) == "unknown_topic"
    assert sns.fetched == []


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/cert.pem",  # not https
    "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com/cert.txt",
    "https://user@sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    "https://sns.eu-west-1.amazonaws.com/cert.pem",  # region differs from the topic's
])
def test_bad_certificate_urls_are_refused_before_fetching(sns, url):
    message = sns.notification("x")
    message["SigningCertURL"] = url
    assert reason_of(sns, message) == "cert_url"
    assert sns.fetched == []


def test_replayed_old_message_is_refused(sns):
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    assert reason_of(sns, sns.notification("x", timestamp=old)) == "stale"
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert reason_of(sns, sns.notification("x", timestamp=future)) == "stale"


def test_unsupported_signature_version_and_missing_fields(sns):
    message = sns.notification("x")
    message["SignatureVersion"] = "3"
    assert reason_of(sns, message) == "signature_version"
    message = sns.notification("x")
    del message["Signature"]
    assert reason_of(sns, message) == "malformed"
    assert reason_of(sns, ["not", "a", "dict"]) == "malformed"
    assert reason_of(sns, {**sns.notification("x"), "Type": "Surprise"}) == "malformed"


def test_confirmation_with_foreign_subscribe_url_is_refused(sns):
    message = sns.subscription_confirmation(subscribe_url="https://evil.example/?Action=ConfirmSubscription")
    assert reason_of(sns, message) == "cert_url"


def test_certificate_is_fetched_once_and_cached(sns):
    verifier = SnsVerifier([TOPIC_ARN], fetch_certificate=sns.http_get)

    async def many():
        await asyncio.gather(*(verifier.verify(sns.notification(str(i))) for i in range(20)))

    asyncio.run(many())
    assert sns.fetched == [CERT_URL]


def test_certificate_fetch_failure_and_garbage_certificate(sns):
    sns.certificates.clear()
    assert reason_of(sns, sns.notification("x")) == "cert_fetch"
    sns.certificates[CERT_URL] = b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"
    assert reason_of(sns, sns.notification("x")) == "cert_fetch"


def test_region_constant_is_used_consistently():
    assert f"sns.{REGION}." in CERT_URL and f":sns:{REGION}:" in TOPIC_ARN
