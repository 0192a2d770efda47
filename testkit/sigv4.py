"""Recompute the SigV4 signature of a request the fake SES recorded, with stock botocore.

The relay signs with its own subclass of botocore's signer (relay.ses.client._SigV4); checking its
output against the unmodified upstream signer is what shows the override still signs correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from testkit.fake_ses import RecordedRequest

TEST_CREDENTIALS = ("testing", "testing")  # what tests/conftest.py puts in the environment
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/(?P<service>[a-z0-9]+)/aws4_request, "
    r"SignedHeaders=(?P<signed_headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header."""

    access_key: str
    date: str  # YYYYMMDD, the credential scope's day
    region: str
    service: str
    signed_headers: str  # "host;x-amz-date;..." as sent
    signature: str

    @property
    def signed_header_names(self) -> list[str]:
        return self.signed_headers.split(";")


def parse_authorization(header: str) -> Authorization:
    """Split a SigV4 Authorization header; AssertionError naming the header when it is not one."""
    match = _AUTHORIZATION.fullmatch(header)
    assert match is not None, f"not a SigV4 Authorization header: {header!r}"
    return Authorization(match["key"], match["date"], match["region"], match["service"],
                         match["signed_headers"], match["signature"])


def _stock_request(recorded: RecordedRequest, endpoint_url: str, signed: Authorization) -> AWSRequest:
    """The recorded request rebuilt for botocore: only the headers it says it signed, its own timestamp."""
    headers = {name: value for name, value in recorded.headers.items()
               if name.lower() in signed.signed_header_names}
    request = AWSRequest(method=recorded.method, url=endpoint_url + recorded.path, headers=headers,
                         data=recorded.raw_body)
    request.context["timestamp"] = recorded.headers["X-Amz-Date"]
    return request


def botocore_signature(recorded: RecordedRequest, endpoint_url: str, *, region: str = "us-east-1",
                       service: str = "ses", credentials: tuple[str, str] = TEST_CREDENTIALS) -> str:
    """The signature stock botocore computes for the recorded request with the scope the test expects.

    The scope (key, region, service) comes from the arguments, not from the header: a request signed
    for the wrong region or with the wrong key gets a different signature, so it does not verify.
    """
    signed = parse_authorization(recorded.headers["Authorization"])
    request = _stock_request(recorded, endpoint_url, signed)
    auth = SigV4Auth(Credentials(*credentials), service, region)
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


def botocore_signed_headers(recorded: RecordedRequest, endpoint_url: str) -> str:
    """The SignedHeaders list stock botocore would choose for the recorded request."""
    signed = parse_authorization(recorded.headers["Authorization"])
    auth = SigV4Auth(Credentials(*TEST_CREDENTIALS), "ses", "us-east-1")  # the choice depends on neither
    return auth.signed_headers(auth.headers_to_sign(_stock_request(recorded, endpoint_url, signed)))
