"""A fresh venv with only `pip install <repo>` (no extras) runs the relay with every optional part on.

The test venv has every extra installed, so a module that only a test dependency pulls in (as moto
pulled in cryptography) is invisible there and a ModuleNotFoundError in a user's install. Here the
relay runs as the installed console script, in a venv that has nothing but what pyproject declares,
with the SNS webhook, the SQS poller and the DynamoDB store enabled against moto's server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from testkit.moto_server import MotoServer
from testkit.net import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600  # seconds; a cold pip cache downloads every dependency
READY_TIMEOUT = 60
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
TABLE = "clean-install-suppression"

# pytest-timeout counts the module fixture's venv build (pip may download every dependency) in the test.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 180)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the relay and its declared dependencies only; built once for the module (~30-60 s)."""
    base = tmp_path_factory.mktemp("clean-install")
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the shared checkout.
    source = base / "src"
    source.mkdir()
    shutil.copytree(ROOT / "relay", source / "relay", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    if made.returncode != 0:  # like require_tool: the venv module (python3-venv) is missing
        message = f"python -m venv failed: {made.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      str(source)], timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, f"pip install <repo> failed:\n{installed.stderr[-3000:]}"
    return venv


def _child_env(venv: Path) -> dict[str, str]:
    """This test's environment (the autouse fixture's dummy AWS credentials) minus anything that would
    let the child see the developer's packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("SES_RELAY_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _readyz(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_clean_install_serves_with_sns_sqs_and_dynamodb(clean_venv: Path, moto: MotoServer,
                                                         tmp_path: Path) -> None:
    queue_url = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint_url).create_queue(
        QueueName="ses-feedback")["QueueUrl"]
    http_port = free_port()
    config = {
        "state_dir": str(tmp_path / "state"),
        "smtp": {"listen": [f"127.0.0.1:{free_port()}"], "shutdown_grace": 5},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "ses": {"endpoint_url": moto.endpoint_url, "region": "us-east-1", "max_send_rate": None},
        "suppression": {"backend": "dynamodb",
                        "dynamodb": {"table": TABLE, "endpoint_url": moto.endpoint_url, "region": "us-east-1"}},
        "feedback": {"sns": {"enabled": True, "topic_arns": [TOPIC_ARN]},
                     "sqs": {"queue_url": queue_url, "endpoint_url": moto.endpoint_url, "region": "us-east-1",
                             "wait_time": 1}},
        "logging": {"level": "info", "format": "json"},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    script = str(clean_venv / "bin" / "ses-relay")
    env = _child_env(clean_venv)

    created = _run([script, "suppression", "create-table", "--config", str(config_path)], env=env, cwd=tmp_path,
                   timeout=60)
    assert created.returncode == 0, created.stderr

    stderr_path = tmp_path / "serve.stderr"
    with open(stderr_path, "w") as stderr, open(tmp_path / "serve.stdout", "w") as stdout:
        # cwd is tmp_path: the checkout's relay/ must not be importable by accident.
        process = subprocess.Popen([script, "serve", "--config", str(config_path)], env=env, cwd=tmp_path,
                                   stdout=stdout, stderr=stderr)
    try:
        status = None
        deadline = time.monotonic() + READY_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            status = _readyz(f"http://127.0.0.1:{http_port}/readyz")
            if status == 200:
                break
            time.sleep(0.2)
        assert process.poll() is None, (
            f"ses-relay serve exited with {process.returncode}:\n{stderr_path.read_text()[-3000:]}")
        assert status == 200, f"/readyz answered {status}:\n{stderr_path.read_text()[-3000:]}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, stderr_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in stderr_path.read_text()
