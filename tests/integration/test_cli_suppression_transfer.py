"""The suppression CLI end to end: import, export, sync from SES (fake, throttled) and add --to-ses."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from testkit.fake_ses import FakeSES


def run_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=120)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "SES_RELAY_STATE_DIR": str(tmp_path / "state")}


def test_import_reports_bad_rows_and_export_round_trips(env, tmp_path):
    source = tmp_path / "list.csv"
    source.write_text("emailAddress,reason\njane@example.org,BOUNCE\nnot-an-address,BOUNCE\nAngry@Example.org,complaint\n")
    result = run_cli("suppression", "import", str(source), env=env)
    assert result.returncode == 1  # a row was skipped: say so in the exit code
    assert "line 3" in result.stderr
    assert "imported 2, skipped 1" in result.stdout
    exported = run_cli("suppression", "export", "-", env=env)
    assert exported.returncode == 0
    assert exported.stdout.splitlines() == ["emailAddress,reason", "Angry@Example.org,COMPLAINT",
                                            "jane@example.org,BOUNCE"]
    jsonl = run_cli("suppression", "export", str(tmp_path / "out.jsonl"), env=env)
    assert jsonl.returncode == 0
    fresh = {**env, "SES_RELAY_STATE_DIR": str(tmp_path / "other")}
    again = run_cli("suppression", "import", str(tmp_path / "out.jsonl"), env=fresh)
    assert (again.returncode, again.stdout.strip()) == (0, "imported 2, skipped 0")
    assert run_cli("suppression", "check", "angry@example.org", env=fresh).returncode == 0


def test_import_from_stdin(env):
    result = run_cli("suppression", "import", "-", "--format", "csv", env=env,
                     stdin="emailAddress,reason\nx@example.org,BOUNCE\n")
    assert result.returncode == 0, result.stderr
    assert run_cli("suppression", "check", "x@example.org", env=env).returncode == 0


def test_sync_from_ses_and_add_to_ses(env):
    with FakeSES(suppression_rate=1.0) as fake:
        now = time.time()
        for index in range(5):
            fake.suppressed[f"listed{index}@example.org"] = ("BOUNCE" if index % 2 else "COMPLAINT", now)
        env = {**env, "SES_RELAY_SES__ENDPOINT_URL": fake.endpoint_url, "SES_RELAY_SES__REGION": "us-east-1"}
        synced = run_cli("suppression", "sync", env=env)
        assert synced.returncode == 0, synced.stderr
        assert "synced 5 entries" in synced.stdout
        check = run_cli("suppression", "check", "listed1@example.org", env=env)
        assert check.returncode == 0 and "BOUNCE" in check.stdout and "ses-sync" in check.stdout
        assert all(r.outcome != "TooManyRequestsException" for r in fake.requests)

        added = run_cli("suppression", "add", "new@example.org", "--reason", "COMPLAINT", "--to-ses", env=env)
        assert added.returncode == 0, added.stderr
        assert fake.suppressed["new@example.org"][0] == "COMPLAINT"
        assert run_cli("suppression", "check", "new@example.org", env=env).returncode == 0
        manual = run_cli("suppression", "add", "m@example.org", "--to-ses", env=env)
        assert manual.returncode == 1 and "BOUNCE or COMPLAINT" in manual.stderr
        assert "m@example.org" not in fake.suppressed


def test_a_failed_export_keeps_the_previous_file_and_a_good_one_replaces_it(env, tmp_path):
    """Before: FILE was truncated before the store was opened, so a failing export destroyed the last backup."""
    backup = tmp_path / "backup.csv"
    previous = b"emailAddress,reason\r\nkept@example.org,BOUNCE\r\n"
    backup.write_bytes(previous)
    (tmp_path / "not-a-db").mkdir()
    broken = {**env, "SES_RELAY_SUPPRESSION__PATH": str(tmp_path / "not-a-db")}  # a directory: unopenable
    failed = run_cli("suppression", "export", str(backup), env=broken)
    assert failed.returncode == 1 and "directory" in failed.stderr
    assert backup.read_bytes() == previous
    assert run_cli("suppression", "add", "new@example.org", "--reason", "BOUNCE", env=env).returncode == 0
    done = run_cli("suppression", "export", str(backup), env=env)
    assert done.returncode == 0, done.stderr
    assert backup.read_text().splitlines() == ["emailAddress,reason", "new@example.org,BOUNCE"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.csv", "not-a-db", "state"]  # no temporary left
