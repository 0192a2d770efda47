"""The shared test support package: one import direction, and helpers that fail when they should."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from testkit.fake_ses import SEND_EMAIL_PATH, RecordedRequest
from testkit.sigv4 import botocore_signature, botocore_signed_headers, parse_authorization
from testkit.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def test_nothing_imports_conftest_and_neither_bench_nor_testkit_imports_tests() -> None:
    """conftest.py holds fixtures only; shared helpers live in testkit, which bench/ may use too."""
    wrong = []
    for folder in ("tests", "bench", "testkit"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module, line in _imported_modules(path):
                parts = module.split(".")
                if "conftest" in parts or (folder != "tests" and parts[0] == "tests"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


def test_wait_until_returns_once_the_predicate_holds() -> None:
    calls = []
    wait_until(lambda: calls.append(None) or len(calls) >= 3, timeout=10.0)
    assert len(calls) == 3


def test_wait_until_raises_with_the_message_when_the_predicate_never_holds() -> None:
    with pytest.raises(AssertionError, match="queue never drained"):
        wait_until(lambda: False, timeout=0.1, message="queue never drained")


def _recorded(region: str = "us-east-1", body: bytes = b'{"a": 1}') -> RecordedRequest:
    """A request signed by stock botocore, as the fake SES would have recorded it."""
    url = "http://127.0.0.1:1" + SEND_EMAIL_PATH
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("testing", "testing"), "ses", region).add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = "127.0.0.1:1"
    return RecordedRequest("POST", SEND_EMAIL_PATH, headers, None, None, raw_body=body)


def test_sigv4_recomputation_verifies_a_stock_signature() -> None:
    recorded = _recorded()
    signed = parse_authorization(recorded.headers["Authorization"])
    assert (signed.access_key, signed.region, signed.service) == ("testing", "us-east-1", "ses")
    assert botocore_signed_headers(recorded, "http://127.0.0.1:1") == signed.signed_headers
    assert botocore_signature(recorded, "http://127.0.0.1:1") == signed.signature


def test_sigv4_recomputation_rejects_a_changed_body_and_a_foreign_scope() -> None:
    tampered = _recorded()
    tampered.raw_body = b'{"a": 2}'
    assert botocore_signature(tampered, "http://127.0.0.1:1") != parse_authorization(
        tampered.headers["Authorization"]).signature
    elsewhere = _recorded(region="eu-west-1")
    assert botocore_signature(elsewhere, "http://127.0.0.1:1") != parse_authorization(
        elsewhere.headers["Authorization"]).signature


def test_parse_authorization_names_a_header_that_is_not_sigv4() -> None:
    with pytest.raises(AssertionError, match="Basic"):
        parse_authorization("Basic dXNlcjpwYXNz")
