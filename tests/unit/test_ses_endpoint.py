"""The SES endpoint is botocore's answer, computed in a child process: it must equal what a boto3 client gets."""

from __future__ import annotations

import boto3
import pytest

from relay.metrics import RelayMetrics
from relay.ses.client import SesSender
from relay.ses.endpoint import resolve
from relay.startup import StartupError


def boto3_answer(region: str) -> tuple[str, str, str]:
    client = boto3.Session(region_name=region).client("sesv2", region_name=region)
    return client.meta.endpoint_url, client.meta.region_name, client.meta.service_model.signing_name


@pytest.mark.parametrize(
    "region, env",
    [
        ("eu-west-1", {}),
        ("us-east-1", {"AWS_USE_FIPS_ENDPOINT": "true"}),
        ("ap-southeast-2", {"AWS_USE_DUALSTACK_ENDPOINT": "true"}),
        ("cn-north-1", {}),
        ("us-east-1", {"AWS_ENDPOINT_URL_SESV2": "http://127.0.0.1:4566/"}),
        ("us-east-1", {"AWS_ENDPOINT_URL": "http://127.0.0.1:4567"}),
    ],
)
def test_child_resolves_what_a_boto3_client_would(monkeypatch, region, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    endpoint = resolve(region, None)
    url, signing_region, signing_name = boto3_answer(region)
    assert (endpoint.url, endpoint.region, endpoint.signing_name) == (url.rstrip("/"), signing_region, signing_name)
    if "AWS_ENDPOINT_URL_SESV2" in env or "AWS_ENDPOINT_URL" in env:
        assert endpoint.url.startswith("http://127.0.0.1:456")
    else:
        assert endpoint.url.startswith("https://email")


def test_explicit_endpoint_url_is_used_as_given_without_a_child(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # a child would fail on this
    endpoint = resolve("eu-west-1", "http://127.0.0.1:9/")
    assert (endpoint.url, endpoint.region, endpoint.signing_name) == ("http://127.0.0.1:9", "eu-west-1", "ses")


@pytest.mark.parametrize(
    "region, env, needle",
    [
        ("us-east-1", {"AWS_PROFILE": "no-such-profile"}, "AWS profile not found: no-such-profile"),
        ("not a region!", {}, "AWS configuration error"),
    ],
)
def test_child_failure_is_one_line_startup_error(monkeypatch, region, env, needle):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StartupError) as caught:
        resolve(region, None)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def sender(region: str | None) -> SesSender:
    return SesSender(region=region, endpoint_url=None, configuration_set=None, tags={}, max_send_rate=None,
                     connect_timeout=1, request_timeout=1, max_connections=1, metrics=RelayMetrics())


@pytest.mark.parametrize("configured, expected", [(None, "eu-west-2"), ("ap-south-1", "ap-south-1")])
def test_region_and_credentials_come_from_the_aws_profile(monkeypatch, tmp_path, configured, expected):
    """The boto3 chain: a named profile's region and keys, unless ses.region says otherwise."""
    (tmp_path / "config").write_text("[profile mail]\nregion = eu-west-2\n")
    (tmp_path / "credentials").write_text("[mail]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "mail")
    ses = sender(configured)
    ses._resolve()
    assert ses.region == expected
    assert ses.url == f"https://email.{expected}.amazonaws.com/v2/email/outbound-emails"
    assert ses._frozen.access_key == "AKIDPROFILE"
    assert ses.readiness() == (False, "not started")  # credentials found; the HTTP pool starts in start()
