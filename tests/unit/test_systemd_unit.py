"""systemd/ses-relay.service: it parses cleanly (systemd-analyze reports unknown keys only as warnings),
its hardening keeps `systemd-analyze security` exposure <= 2.0, and the relay still works under the
hardening that can be reproduced without a running systemd (MemoryDenyWriteExecute)."""

from __future__ import annotations

import ctypes
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.app import PARTS_STOP_TIMEOUT
from relay.config import Config
from relay.runner import EXIT_WAIT
from testkit.net import free_port
from testkit.serve import STARTUP_TIMEOUT, STOP_TIMEOUT, port_open, relay_env, serve_config, smtp_send
from testkit.tools import require_tool
from testkit.waiting import wait_until

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ses-relay.service"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "ses-relay.service"
    path.write_text(unit_text)
    return subprocess.run([require_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True,
                          timeout=60)


def unit_with_local_binary() -> str:
    # verify checks that ExecStart exists: point it at the ses-relay installed for the tests.
    return UNIT.read_text().replace("/usr/local/bin/ses-relay", shutil.which("ses-relay") or "/missing/ses-relay")


def test_unit_verifies_without_warnings(tmp_path):
    result = verify(unit_with_local_binary(), tmp_path)
    assert (result.returncode, result.stderr.strip()) == (0, "")


def test_verification_would_catch_a_typo(tmp_path):
    result = verify(unit_with_local_binary().replace("ProtectHome=", "ProtectHoem="), tmp_path)
    assert "Unknown key" in result.stderr


def test_unit_keeps_the_relay_contract():
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/ses-relay serve\n" in text
    assert "StateDirectory=ses-relay" in text  # the relay reads $STATE_DIRECTORY
    assert "RestartPreventExitStatus=2" in text  # config errors exit 2 and must not loop
    assert "KillSignal=SIGTERM" in text
    assert "DynamicUser=yes" in text


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_waits_for_readiness_and_reloads_with_sighup():
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"]  # relay/notify.py sends READY=1 once SMTP listens
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # relay/reload.py
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split()  # $NOTIFY_SOCKET is an AF_UNIX socket


def test_stop_timeout_outlasts_the_relays_bounded_stop():
    # Relay.stop: the SMTP drain (shutdown_grace), then the other parts; relay.runner: leftover tasks
    # and threads get EXIT_WAIT each. systemd must not SIGKILL a relay that is still finishing.
    seconds = float(directives(UNIT.read_text())["TimeoutStopSec"][0])
    assert seconds > Config().smtp.shutdown_grace + PARTS_STOP_TIMEOUT + 2 * EXIT_WAIT


MAX_EXPOSURE = 2.0


def exposure(unit_text: str, tmp_path: Path) -> float:
    path = tmp_path / "ses-relay.service"
    path.write_text(unit_text)
    # --offline: analyse the file itself, without asking a running systemd (there is none in CI).
    result = subprocess.run([require_tool("systemd-analyze"), "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for ses-relay\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_exposure_is_at_most_two(tmp_path):
    assert exposure(unit_with_local_binary(), tmp_path) <= MAX_EXPOSURE


def test_exposure_check_would_catch_lost_hardening(tmp_path):
    text = unit_with_local_binary()
    weakened = "\n".join(line for line in text.splitlines()
                         if not line.startswith(("SystemCallFilter=", "ProtectProc=", "PrivateUsers=")))
    assert exposure(weakened, tmp_path) > MAX_EXPOSURE


# MemoryDenyWriteExecute=yes, reproduced without systemd: Linux >= 6.3 has the same rule as a process
# flag (prctl PR_SET_MDWE), inherited across execve, which newer systemd versions use for this setting.
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
UNDER_MDWE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE: ' + os.strerror(ctypes.get_errno()))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)
# Under the flag: a writable+executable mapping must be refused (or the test proves nothing), and the
# parts of the relay that load native code must work: the SNS signature check (cryptography/OpenSSL),
# an ssl context with the system roots (the HTTPS call to SES), uvloop.
NATIVE_CODE_CHECKS = """
import asyncio, mmap, ssl
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("a W+X mapping was allowed: the flag is not in force")
except PermissionError:
    pass
import uvloop
from relay.feedback.sns import SnsVerifier
from testkit.sns_signer import TOPIC_ARN, FakeSns
sns = FakeSns()
verifier = SnsVerifier([TOPIC_ARN], fetch_certificate=sns.http_get)
message = sns.notification({"notificationType": "Bounce"})
assert uvloop.run(verifier.verify(message)) is message
ssl.create_default_context().load_default_certs()
print("ok")
"""


def mdwe_supported() -> bool:
    return ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


@pytest.fixture
def under_mdwe() -> list[str]:
    if sys.platform != "linux" or not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    return [sys.executable, "-c", UNDER_MDWE]


def test_native_code_works_without_writable_executable_memory(under_mdwe):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([*under_mdwe, "-c", NATIVE_CODE_CHECKS], capture_output=True, text=True,
                            timeout=60, cwd=root)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def test_relay_serves_without_writable_executable_memory(under_mdwe, tmp_path, fake_ses):
    smtp_port, http_port = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config(smtp_port, http_port, fake_ses.endpoint_url)))
    stderr = tmp_path / "serve.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen([*under_mdwe, "-m", "relay", "serve", "--config", str(config)],
                                   env=relay_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: process.poll() is not None or port_open(smtp_port), timeout=STARTUP_TIMEOUT,
                       message="serve did not listen")
            assert process.poll() is None, stderr.read_text()
            assert smtp_send(smtp_port, ["bob@example.org"])[0] == 250
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=STOP_TIMEOUT) == 0, stderr.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert '"event_loop":"uvloop"' in stderr.read_text()  # the loop the unit runs with
    assert len(fake_ses.message_ids) == 1
