"""systemd/ses-relay.service must parse cleanly: systemd-analyze reports unknown keys only as warnings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import require_tool

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
