"""boto3 clients aimed at the loopback fakes, for a test's own calls (not the relay's)."""

from __future__ import annotations

from typing import Any

from testkit.fake_ses import FakeSES


def sesv2_client(fake: FakeSES, **config: Any) -> Any:
    """A stock sesv2 client on `fake` with the test credentials and exactly one HTTP attempt per call.

    total_max_attempts=1: botocore's "max_attempts" counts *retries*, so max_attempts=1 would mean two
    attempts, and a retried reset or 429 would hide the fault under test. `config` adds Config options.
    """
    import boto3
    import botocore.config

    return boto3.client(
        "sesv2",
        region_name="us-east-1",
        endpoint_url=fake.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
    )
