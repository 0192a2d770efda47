"""moto's server as a subprocess over HTTP: a local SES/SQS/DynamoDB/SNS that boto3 and the relay call."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from testkit.net import free_port, wait_for_port

SENDER_DOMAIN = "example.com"  # verified by MotoServer.verify_domain, so tests can send From it


class MotoServer:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port = port
        self.process = process
        self.endpoint_url = f"http://127.0.0.1:{port}"

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def verify_domain(self, domain: str = SENDER_DOMAIN) -> None:
        import boto3

        client = boto3.client("ses", region_name="us-east-1", endpoint_url=self.endpoint_url,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.verify_domain_identity(Domain=domain)

    def raw_messages(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=10) as response:
            return json.load(response)["ses"]["RawMessage"]


@contextmanager
def run_moto_server() -> Iterator[MotoServer]:
    """`python -m moto.server` on a free loopback port, stopped on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield MotoServer(port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
