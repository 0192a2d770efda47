"""Where SESv2 is for a region, as botocore resolves it, asked of a short-lived child process.

Why a child: resolving an endpoint means building a botocore client, which loads the sesv2 service
model and botocore's endpoint data, ~11 MB that Python never gives back to the OS (a sixth of the
relay's memory, for a value read once at start). The child runs exactly the client set-up a boto3
user gets (region, FIPS/dual-stack settings, AWS_ENDPOINT_URL_SESV2 and the config file's endpoint
settings) and prints the answer; the relay keeps only the answer.

An explicit ses.endpoint_url needs no child: botocore would use it as given.

    python -m relay.ses.endpoint REGION   ->  {"url": ..., "region": ..., "signing_name": ...}
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from relay.startup import StartupError

CHILD_TIMEOUT = 60.0  # seconds; the child only reads files and environment
DEFAULT_SIGNING_NAME = "ses"  # SESv2's SigV4 service name


@dataclass(frozen=True)
class Endpoint:
    url: str  # without a trailing slash
    region: str  # the region requests are signed for
    signing_name: str


def resolve(region: str, endpoint_url: str | None) -> Endpoint:
    if endpoint_url:
        return Endpoint(endpoint_url.rstrip("/"), region, DEFAULT_SIGNING_NAME)
    try:
        child = subprocess.run(
            [sys.executable, "-m", "relay.ses.endpoint", region],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartupError(f"cannot resolve the SES endpoint for {region}: {exc}") from None
    if child.returncode != 0:
        reason = child.stderr.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise StartupError(reason[0])
    try:
        answer = json.loads(child.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StartupError(f"cannot resolve the SES endpoint for {region}: unexpected output") from None
    return Endpoint(
        answer["url"].rstrip("/"), answer["region"], answer["signing_name"] or DEFAULT_SIGNING_NAME
    )


def _main(region: str) -> int:
    import boto3
    import botocore.exceptions

    try:
        client = boto3.Session(region_name=region).client("sesv2", region_name=region)
    except botocore.exceptions.ProfileNotFound as exc:
        print(f"AWS profile not found: {exc.kwargs.get('profile')}", file=sys.stderr)
        return 1
    except botocore.exceptions.BotoCoreError as exc:
        print(f"AWS configuration error: {exc}", file=sys.stderr)
        return 1
    meta = client.meta
    answer = {
        "url": meta.endpoint_url,
        "region": meta.region_name,
        "signing_name": meta.service_model.signing_name,
    }
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m relay.ses.endpoint REGION", file=sys.stderr)
        sys.exit(2)
    sys.exit(_main(sys.argv[1]))
