"""The container image: the real Dockerfile, built with buildah and run against moto's server.

There is no Docker daemon and no reachable registry on the test machines, so the test makes its base
image: `debootstrap --variant=minbase` of Debian bookworm with python3 and python3-venv, with the
host's CA bundle copied in (pip inside the build then trusts the same roots as pip on the host),
imported into buildah's store and passed to the Dockerfile as BASE. The rootfs tarball is cached under
/var/tmp keyed by a hash of those inputs, so local reruns skip debootstrap; a clean CI machine makes it.
The image itself is built from scratch on every run (no layer cache): that build is what is tested.

The relay then runs from the image (its own ENTRYPOINT + CMD, its own user) with `--network host`, so
it reaches moto on 127.0.0.1. It listens on free loopback ports rather than the image's 0.0.0.0:2525:
the host's network is shared, a fixed port may be taken, and 0.0.0.0 would open it beyond loopback.
The image's own listen defaults are checked in tests/unit/test_deploy_manifests.py.

buildah runs images as root only (rootless needs subuid set-up CI does not do): as another user, or
without buildah, the tests skip, except with CI=true, where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.net import free_port
from testkit.serve import MESSAGE, http_get, port_open, smtp_send
from testkit.tools import require_tool
from testkit.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE = Path("/var/tmp/ses-relay-test-base")
BASE_FORMAT = "1"  # bump when the way the base is made changes, so stale caches are not reused
IMAGE_UID = 10001
STATE_DIR = "/var/lib/ses-relay"

# Generous bounds for network-bound steps on a 2-core machine; the module's own timeout is their sum.
DEBOOTSTRAP_TIMEOUT = 600
BUILD_TIMEOUT = 600
STEP_TIMEOUT = 120
pytestmark = pytest.mark.timeout(DEBOOTSTRAP_TIMEOUT + BUILD_TIMEOUT + 4 * STEP_TIMEOUT)


def require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("buildah with --isolation chroot needs root (CI runs as root)")
        pytest.skip("buildah with --isolation chroot needs root")


def run(args: list[str], timeout: float = STEP_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def base_key() -> str:
    inputs = {"format": BASE_FORMAT, "suite": SUITE, "mirror": MIRROR, "variant": "minbase",
              "packages": BASE_PACKAGES, "ca": hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def unmount_under(path: Path) -> None:
    """debootstrap mounts /proc and /sys inside the target; one that failed may leave them mounted, and
    removing the tree must never reach through them into the host's."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def base_rootfs(key: str) -> Path:
    """The cached rootfs tarball for `key`, made with debootstrap when missing."""
    tarball = CACHE / key / "rootfs.tar"
    if tarball.exists():
        return tarball
    debootstrap = require_tool("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=CACHE, prefix="make-"))
    try:
        rootfs = work / "rootfs"
        run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
             MIRROR], timeout=DEBOOTSTRAP_TIMEOUT)
        shutil.copyfile(CA_BUNDLE, rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        run(["tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), "."])
        tarball.parent.mkdir(exist_ok=True)
        os.replace(work / "rootfs.tar", tarball)  # complete or absent: an interrupted run leaves no cache
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def image_exists(buildah: str, name: str) -> bool:
    return subprocess.run([buildah, "inspect", "--type", "image", name], capture_output=True,
                          timeout=STEP_TIMEOUT).returncode == 0


def base_image(buildah: str) -> str:
    key = base_key()
    name = f"localhost/ses-relay-test-base:{key}"
    if not image_exists(buildah, name):
        tarball = base_rootfs(key)
        container = run([buildah, "from", "scratch"]).stdout.strip()
        try:
            run([buildah, "add", container, str(tarball), "/"])
            run([buildah, "commit", "--quiet", container, name])
        finally:
            subprocess.run([buildah, "rm", container], capture_output=True, timeout=STEP_TIMEOUT)
    return name


@dataclass
class Image:
    buildah: str
    name: str
    config: dict[str, Any]  # the Docker-format config: User, Env, Entrypoint, Cmd, Healthcheck, ...
    timings: dict[str, float]


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    require_root()
    buildah = require_tool("buildah")
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = base_image(buildah)
    timings["base"] = time.monotonic() - started
    name = f"localhost/ses-relay-test:{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    # --format docker: the OCI format has no HEALTHCHECK (buildah drops it with a warning).
    run([buildah, "bud", "--isolation", "chroot", "--format", "docker", "--pull=never",
         "--build-arg", f"BASE={base}", "-t", name, "-f", str(ROOT / "Dockerfile"), str(ROOT)],
        timeout=BUILD_TIMEOUT)
    timings["build"] = time.monotonic() - started
    try:
        inspected = json.loads(run([buildah, "inspect", "--type", "image", name]).stdout)
        print(f"container image: base {timings['base']:.0f} s, build {timings['build']:.0f} s")
        yield Image(buildah, name, inspected["Docker"]["config"], timings)
    finally:
        subprocess.run([buildah, "rmi", "--force", name], capture_output=True, timeout=STEP_TIMEOUT)


@pytest.fixture
def container(image: Image) -> Iterator[str]:
    name = f"ses-relay-test-{uuid.uuid4().hex[:12]}"
    run([image.buildah, "from", "--pull=never", "--name", name, image.name])
    try:
        yield name
    finally:
        subprocess.run([image.buildah, "rm", name], capture_output=True, timeout=STEP_TIMEOUT)


def buildah_run(image: Image, container: str, env: dict[str, str], command: list[str]) -> list[str]:
    flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
    return [image.buildah, "run", "--isolation", "chroot", "--network", "host", *flags, container, "--", *command]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name in field 2 may hold spaces: the parent pid follows its closing ')'.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def relay_process(buildah_pid: int) -> int | None:
    """The relay's python process under `buildah run` (buildah's chroot helpers sit in between)."""
    for pid in descendants(buildah_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name.startswith("python") and b"serve" in argv:
            return pid
    return None


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_image_runs_as_a_fixed_non_root_user(image: Image):
    user = image.config["User"]
    assert user == f"{IMAGE_UID}:{IMAGE_UID}"
    assert user.split(":")[0] not in ("", "0", "root")


def test_image_declares_ports_volume_healthcheck_and_exec_form(image: Image):
    config = image.config
    assert set(config["ExposedPorts"]) == {"2525/tcp", "9025/tcp"}
    assert set(config["Volumes"]) == {STATE_DIR}
    assert f"SES_RELAY_STATE_DIR={STATE_DIR}" in config["Env"]
    assert config["Entrypoint"] == ["ses-relay"] and config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"][0] == "CMD"  # exec form: no shell needed in the image
    assert config["StopSignal"] == "SIGTERM"


def test_relay_from_the_image_sends_through_moto_and_stops_on_sigterm(image, container, moto, tmp_path):
    smtp_port, http_port = free_port(), free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SES_RELAY_SES__REGION": "us-east-1",
        "SES_RELAY_SES__ENDPOINT_URL": moto.endpoint_url,
        "SES_RELAY_SES__MAX_SEND_RATE": "",  # moto has no GetAccount
        "SES_RELAY_SMTP__LISTEN": f'["127.0.0.1:{smtp_port}"]',
        "SES_RELAY_SMTP__HOSTNAME": "relay.test",
        "SES_RELAY_HTTP__LISTEN": f"127.0.0.1:{http_port}",
    }
    healthcheck = buildah_run(image, container, {"SES_RELAY_HTTP__LISTEN": env["SES_RELAY_HTTP__LISTEN"]},
                              image.config["Healthcheck"]["Test"][1:])
    stderr_path = tmp_path / "relay.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(buildah_run(image, container, env, image.config["Entrypoint"] + image.config["Cmd"]),
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT)

    def output() -> str:
        return stderr_path.read_text(errors="replace")[-5000:]

    try:
        wait_until(lambda: process.poll() is not None or (port_open(smtp_port) and port_open(http_port)),
                   timeout=STEP_TIMEOUT, message="the relay in the container never listened")
        assert process.poll() is None, f"the relay exited with {process.returncode}\n{output()}"
        assert http_get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200, output()

        pid = relay_process(process.pid)
        assert pid is not None, output()
        assert uid_of(pid) == IMAGE_UID  # the image's USER, not root
        # The suppression store is open in the state directory, written by that user.
        state = Path(f"/proc/{pid}/root{STATE_DIR}/suppression.db").stat()
        assert state.st_uid == IMAGE_UID

        health = subprocess.run(healthcheck, capture_output=True, text=True, timeout=STEP_TIMEOUT)
        assert health.returncode == 0, health.stderr

        code, reply = smtp_send(smtp_port, ["bob@example.org"])
        assert code == 250, reply
        (stored,) = moto.raw_messages()
        assert stored["raw_data"].encode() == MESSAGE

        os.kill(pid, signal.SIGTERM)
        assert process.wait(timeout=STEP_TIMEOUT) == 0, output()  # buildah run passes on the relay's code
        assert '"event":"stopped"' in output().replace(" ", "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    # With the relay gone the same command reports unhealthy: it does check something.
    down = subprocess.run(healthcheck, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert down.returncode != 0
