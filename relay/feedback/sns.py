"""Amazon SNS HTTP(S) message verification.

Every message posted to /sns must prove it came from SNS: its signature (SignatureVersion 1 = RSA-SHA1,
2 = RSA-SHA256) over the documented string-to-sign is checked against the certificate at
SigningCertURL, which must be an https URL on sns.<region>.amazonaws.com(.cn) ending in .pem. Only the
configured topic ARNs are accepted, and the topic is checked before any outbound request is made, so a
forged message for another topic cannot make the relay fetch anything.

The certificate fetcher and the HTTP GET used to confirm subscriptions are injected: production uses
`https_get` (TLS-verified aiohttp); tests pass their own. There is no configuration switch that relaxes
any check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HttpGet = Callable[[str], Awaitable[bytes]]

_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_SNS_HOST = re.compile(r"sns\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?")
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_.-]{1,256}")
MAX_CERTIFICATE_BYTES = 16 * 1024
FUTURE_SKEW_SECONDS = 300  # clocks differ; a message from further in the future is refused


class SnsVerificationError(Exception):
    """`reason` is a metric label from a closed set; the message says what exactly failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def topic_region(arn: str) -> str | None:
    match = _TOPIC_ARN.fullmatch(arn)
    return match.group(1) if match else None


def sns_url_region(url: str, *, pem: bool) -> str:
    """Validate an SNS-owned URL (SigningCertURL, SubscribeURL); returns its region."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SnsVerificationError("cert_url", f"malformed URL {url!r}") from None
    host = parts.hostname or ""
    match = _SNS_HOST.fullmatch(host)
    if (
        parts.scheme != "https"
        or match is None
        or parts.username
        or parts.password
        or port not in (None, 443)
    ):
        raise SnsVerificationError("cert_url", f"not an https URL on sns.<region>.amazonaws.com: {url!r}")
    if pem and not parts.path.endswith(".pem"):
        raise SnsVerificationError("cert_url", f"certificate URL does not end in .pem: {url!r}")
    return match.group(1)


def string_to_sign(message: dict[str, Any]) -> bytes:
    fields = SIGNED_FIELDS[message["Type"]]
    parts = []
    for name in fields:
        if name == "Subject" and name not in message:
            continue  # Subject is signed only when present
        parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode("utf-8")


def _parse_timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SnsVerificationError("malformed", f"bad Timestamp {value!r}") from None


async def https_get(url: str, *, limit: int = MAX_CERTIFICATE_BYTES, time_limit: float = 10.0) -> bytes:
    """GET over TLS with certificate verification, bounded in size and time."""
    client_timeout = aiohttp.ClientTimeout(total=time_limit)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise OSError(f"GET {url}: HTTP {response.status}")
            body = await response.content.read(limit + 1)
            if len(body) > limit:
                raise OSError(f"GET {url}: more than {limit} bytes")
            return body


class CertificateCache:
    """SigningCertURL -> RSA public key; SNS rotates certificates rarely, so a small cache serves."""

    def __init__(self, fetch: HttpGet, max_entries: int = 32) -> None:
        self._fetch = fetch
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._max = max_entries
        self._lock = asyncio.Lock()

    async def public_key(self, url: str) -> rsa.RSAPublicKey:
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
            return key
        async with self._lock:  # one fetch per URL even when a burst of messages arrives
            key = self._keys.get(url)
            if key is None:
                key = await self._load(url)
                self._keys[url] = key
                while len(self._keys) > self._max:
                    self._keys.popitem(last=False)
        return key

    async def _load(self, url: str) -> rsa.RSAPublicKey:
        try:
            pem = await self._fetch(url)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise SnsVerificationError("cert_fetch", f"cannot fetch {url}: {exc}") from None
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsVerificationError("cert_fetch", f"{url} is not a PEM certificate") from None
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsVerificationError("cert_fetch", f"{url}: not an RSA certificate")
        return key


class SnsVerifier:
    def __init__(
        self,
        topic_arns: list[str],
        *,
        fetch_certificate: HttpGet = https_get,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic_arns = frozenset(topic_arns)
        self._certificates = CertificateCache(fetch_certificate)
        self._max_age = max_age
        self._clock = clock

    async def verify(self, message: Any) -> dict[str, Any]:
        """Return the message when it is authentic, fresh and for one of our topics; else raise."""
        if not isinstance(message, dict):
            raise SnsVerificationError("malformed", "not a JSON object")
        kind = message.get("Type")
        if kind not in SIGNED_FIELDS:
            raise SnsVerificationError("malformed", f"unknown message Type {kind!r}")
        for name in SIGNED_FIELDS[kind] + ("Signature", "SignatureVersion", "SigningCertURL"):
            if name == "Subject" and name not in message:
                continue
            if not isinstance(message.get(name), str):
                raise SnsVerificationError("malformed", f"{kind} without a string {name}")
        # The topic first: nothing is fetched on behalf of a topic we do not serve.
        topic = message["TopicArn"]
        if topic not in self.topic_arns:
            raise SnsVerificationError("unknown_topic", f"topic {topic} is not in feedback.sns.topic_arns")
        version = message["SignatureVersion"]
        if version not in _HASHES:
            raise SnsVerificationError("signature_version", f"unsupported SignatureVersion {version!r}")
        cert_region = sns_url_region(message["SigningCertURL"], pem=True)
        if cert_region != topic_region(topic):
            raise SnsVerificationError("cert_url", "certificate region does not match the topic's region")
        sent = _parse_timestamp(message["Timestamp"])
        now = self._clock()
        if now - sent > self._max_age:
            raise SnsVerificationError(
                "stale", f"message from {message['Timestamp']} is older than {self._max_age:.0f}s"
            )
        if sent - now > FUTURE_SKEW_SECONDS:
            raise SnsVerificationError("stale", f"message timestamp {message['Timestamp']} is in the future")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise SnsVerificationError("bad_signature", "Signature is not base64") from None
        key = await self._certificates.public_key(message["SigningCertURL"])
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), _HASHES[version]())
        except InvalidSignature:
            raise SnsVerificationError("bad_signature", "signature does not match the message") from None
        if kind != "Notification" and sns_url_region(message["SubscribeURL"], pem=False) != cert_region:
            raise SnsVerificationError("cert_url", "SubscribeURL region does not match the topic's region")
        return message

