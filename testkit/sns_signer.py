"""A stand-in for Amazon SNS's signing side: a test key and certificate, and messages signed with them.

The string-to-sign is written here independently of relay.feedback.sns (from the SNS documentation),
so a mistake there is caught rather than mirrored.
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGION = "us-east-1"
TOPIC_ARN = f"arn:aws:sns:{REGION}:123456789012:ses-feedback"
CERT_URL = f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"

_NOTIFICATION_KEYS = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
_CONFIRMATION_KEYS = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class FakeSns:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate_pem = _self_signed(self.key, "sns.amazonaws.com")
        self.fetched: list[str] = []  # every URL the relay fetched (certificates, SubscribeURLs)
        self.certificates = {CERT_URL: self.certificate_pem}

    async def http_get(self, url: str) -> bytes:
        """Injected into the relay in place of its https fetcher."""
        self.fetched.append(url)
        if url in self.certificates:
            return self.certificates[url]
        if "Action=ConfirmSubscription" in url:
            return b"<ConfirmSubscriptionResponse/>"
        raise OSError(f"404 for {url}")

    def sign(self, message: dict[str, Any], *, version: str = "1",
             key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        keys = _NOTIFICATION_KEYS if message["Type"] == "Notification" else _CONFIRMATION_KEYS
        text = "".join(f"{k}\n{message[k]}\n" for k in keys if k in message)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(text.encode(), padding.PKCS1v15(), digest)
        return {**message, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode(),
                "SigningCertURL": message.get("SigningCertURL", CERT_URL)}

    def notification(self, ses_event: dict[str, Any] | str, *, topic_arn: str = TOPIC_ARN,
                     version: str = "1", timestamp: datetime.datetime | None = None,
                     subject: str | None = None) -> dict[str, Any]:
        when = timestamp or datetime.datetime.now(datetime.UTC)
        message = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic_arn,
            "Message": ses_event if isinstance(ses_event, str) else json.dumps(ses_event),
            "Timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "UnsubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:x",
        }
        if subject is not None:
            message["Subject"] = subject
        return self.sign(message, version=version)

    def subscription_confirmation(self, *, topic_arn: str = TOPIC_ARN,
                                  subscribe_url: str | None = None) -> dict[str, Any]:
        token = uuid.uuid4().hex
        when = datetime.datetime.now(datetime.UTC)
        message = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic_arn,
            "Message": f"You have chosen to subscribe to the topic {topic_arn}.",
            "SubscribeURL": subscribe_url or (f"https://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription"
                                              f"&TopicArn={topic_arn}&Token={token}"),
            "Timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        return self.sign(message)
