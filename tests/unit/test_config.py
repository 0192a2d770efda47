"""Config: defaults, YAML file, SES_RELAY_* environment overrides, one-line errors naming key and source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from relay import config as config_module
from relay.config import (
    SES_MAX_MESSAGE_SIZE,
    Config,
    ConfigError,
    default_state_dir,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.yaml"


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A host's /etc/ses-relay/config.yaml must never leak into these tests."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "no-such-config.yaml")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ=environ or {})
    return str(failure.value)


# -- defaults ------------------------------------------------------------------------------------


def test_defaults_without_a_file_have_the_documented_shape():
    config = load_config(None, environ={})
    assert config == Config()
    assert config.smtp.listen == ["127.0.0.1:2525"]
    assert config.http.listen == "127.0.0.1:9025"
    assert config.smtp.max_message_size == 41943040 == SES_MAX_MESSAGE_SIZE
    assert config.smtp.max_recipients == 50
    assert config.smtp.allowed_networks == ["127.0.0.0/8", "::1/128"]
    assert config.suppression.backend == "sqlite"
    assert config.suppression.on_suppressed == "reject"
    assert config.delivery.mode == "fallback"  # SES first, the spool when SES cannot take it now
    assert config.ses.dry_run is False
    assert config.ses.max_send_rate == "auto"
    assert config.logging.format == "json"
    assert config.logging.level == "info"
    assert config.state_dir is None


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), environ={}) == Config()
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml"), environ={}) == Config()


def test_config_is_frozen():
    config = Config()
    with pytest.raises(ValidationError):
        config.smtp.max_recipients = 3  # type: ignore[misc]


# -- file and environment ------------------------------------------------------------------------


def test_yaml_file_values_are_used_and_the_rest_stays_default(tmp_path):
    path = write(
        tmp_path,
        """
smtp:
  listen: ["127.0.0.1:2600", "[::1]:2600"]
  max_recipients: 20
  allowed_networks: ["10.0.0.0/8"]
ses:
  region: eu-central-1
  configuration_set: transactional
  tags: {app: billing, env: prod-1}
  max_send_rate: 14
suppression:
  backend: memory
  on_suppressed: drop
http:
  listen: null
logging:
  format: text
  level: debug
""",
    )
    config = load_config(path, environ={})
    assert config.smtp.listen == ["127.0.0.1:2600", "[::1]:2600"]
    assert config.smtp.max_recipients == 20
    assert config.smtp.allowed_networks == ["10.0.0.0/8"]
    assert config.smtp.max_message_size == SES_MAX_MESSAGE_SIZE
    assert config.ses.region == "eu-central-1"
    assert config.ses.configuration_set == "transactional"
    assert config.ses.tags == {"app": "billing", "env": "prod-1"}
    assert config.ses.max_send_rate == 14
    assert config.suppression.backend == "memory"
    assert config.suppression.on_suppressed == "drop"
    assert config.http.listen is None
    assert (config.logging.format, config.logging.level) == ("text", "debug")


def test_environment_overrides_are_parsed():
    config = load_config(
        None,
        environ={
            "SES_RELAY_SES__REGION": "eu-west-1",
            "SES_RELAY_SMTP__MAX_RECIPIENTS": "10",
            "SES_RELAY_SMTP__LISTEN": '["127.0.0.1:2626"]',
            "SES_RELAY_SES__DRY_RUN": "true",
            "SES_RELAY_STATE_DIR": "/from/env",
            "SES_RELAY_EVENT_LOOP": "asyncio",
            "SES_RELAY_NOT_A_KEY": "ignored",
            "UNRELATED": "x",
        },
    )
    assert config.ses.region == "eu-west-1"
    assert config.smtp.max_recipients == 10
    assert isinstance(config.smtp.max_recipients, int)
    assert config.smtp.listen == ["127.0.0.1:2626"]
    assert config.ses.dry_run is True
    # Top-level keys take SES_RELAY_<KEY>; other names without SECTION__ are not config.
    assert config.state_dir == Path("/from/env") == config.resolved_state_dir
    assert config.event_loop == "asyncio"


@pytest.mark.parametrize("value", ["no", "yes", "off", "true", "null", "~", "2024", "1e3", "[a]", "{a: b}"])
def test_a_text_key_from_the_environment_is_the_text_as_written(value):
    """YAML would turn `no` into False and `2024` into an int: a configuration set may be named so."""
    config = load_config(
        None,
        environ={
            "SES_RELAY_SES__CONFIGURATION_SET": value,
            "SES_RELAY_SMTP__HOSTNAME": "relay2024",
            "SES_RELAY_STATE_DIR": value,
        },
    )
    assert config.ses.configuration_set == value
    assert config.smtp.hostname == "relay2024"
    assert config.state_dir == Path(value)


def test_an_empty_environment_variable_means_null():
    assert load_config(None, environ={"SES_RELAY_SES__CONFIGURATION_SET": ""}).ses.configuration_set is None


def test_a_mixed_key_from_the_environment_is_still_parsed():
    """max_send_rate is a number, 'auto' or null: YAML decides which."""
    assert load_config(None, environ={"SES_RELAY_SES__MAX_SEND_RATE": "14"}).ses.max_send_rate == 14
    assert load_config(None, environ={"SES_RELAY_SES__MAX_SEND_RATE": "auto"}).ses.max_send_rate == "auto"
    assert load_config(None, environ={"SES_RELAY_SES__MAX_SEND_RATE": "null"}).ses.max_send_rate is None


def test_memory_budget_must_hold_two_copies_of_the_largest_message():
    message = config_error(None, environ={"SES_RELAY_SMTP__MEMORY_BUDGET": str(50 * 1024 * 1024)})
    assert "smtp.memory_budget" in message and "max_message_size" in message
    config = load_config(None, environ={"SES_RELAY_SMTP__MEMORY_BUDGET": "2228224",
                                        "SES_RELAY_SMTP__MAX_MESSAGE_SIZE": "1048576"})
    assert config.smtp.memory_budget == 2228224  # 2.125 MiB: the smallest allowed
    message = config_error(None, environ={"SES_RELAY_SMTP__MEMORY_BUDGET": "2228223",
                                          "SES_RELAY_SMTP__MAX_MESSAGE_SIZE": "1048576"})
    assert "smtp.memory_budget" in message


def test_environment_beats_the_file_key_by_key(tmp_path):
    path = write(tmp_path, "smtp:\n  max_recipients: 20\n  hostname: file.example\nses:\n  region: us-west-2\n")
    config = load_config(path, environ={"SES_RELAY_SMTP__MAX_RECIPIENTS": "7"})
    assert config.smtp.max_recipients == 7
    assert config.smtp.hostname == "file.example"  # sibling keys from the file survive the merge
    assert config.ses.region == "us-west-2"


def test_load_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SES_RELAY_SMTP__MAX_RECIPIENTS", "3")
    assert load_config(None).smtp.max_recipients == 3


# -- errors: every one a ConfigError naming the key path and the source ---------------------------


@pytest.mark.parametrize(
    ("text", "key_path", "words"),
    [
        ("bogus: 1\n", "bogus", "unknown key"),
        ("smtp:\n  lisen: ['127.0.0.1:25']\n", "smtp.lisen", "unknown key"),
        ("smtp:\n  tls:\n    certt: /x\n", "smtp.tls.certt", "unknown key"),
        ("smtp:\n  max_recipients: many\n", "smtp.max_recipients", "integer"),
        ("smtp:\n  max_message_size: 0\n", "smtp.max_message_size", "greater than 0"),
        (f"smtp:\n  max_message_size: {SES_MAX_MESSAGE_SIZE + 1}\n", "smtp.max_message_size", "less than or equal"),
        ("smtp:\n  listen: [localhost]\n", "smtp.listen", "HOST:PORT"),
        ("smtp:\n  listen: ['127.0.0.1:70000']\n", "smtp.listen", "out of range"),
        ("smtp:\n  listen: []\n", "smtp.listen", "at least one"),
        ("http:\n  listen: localhost\n", "http.listen", "HOST:PORT"),
        ("smtp:\n  allowed_networks: ['300.1.1.1/8']\n", "smtp.allowed_networks", "300.1.1.1/8"),
        ("http:\n  admin_allowed_networks: ['10.0.0.0/33']\n", "http.admin_allowed_networks", "10.0.0.0/33"),
        ("ses:\n  tags: {team: 'a b'}\n", "ses.tags", "'a b'"),
        ("ses:\n  tags: {'bad.name': x}\n", "ses.tags", "bad.name"),
        ("ses:\n  max_send_rate: -1\n", "ses.max_send_rate", ">= 0"),
        ("delivery:\n  bounce_from: bounces\n", "delivery.bounce_from", "no @domain"),
        ("delivery:\n  mode: direct\nsmtp:\n  max_recipients: 51\n", "smtp.max_recipients", "spool or fallback"),
        ("delivery:\n  mode: queue\n", "delivery.mode", "direct"),
        ("logging:\n  format: xml\n", "logging.format", "json"),
        ("smtp: 5\n", "smtp", "valid dictionary"),
    ],
)
def test_file_errors_name_the_key_path_and_the_file(tmp_path, text, key_path, words):
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert key_path in message
    assert words in message


def test_several_errors_are_reported_one_per_line(tmp_path):
    message = config_error(write(tmp_path, "smtp:\n  lisen: x\n  max_recipients: many\nfoo: 1\n"))
    lines = message.splitlines()
    assert len(lines) == 3
    assert any("smtp.lisen" in line for line in lines)
    assert any("smtp.max_recipients" in line for line in lines)
    assert any("foo" in line and "unknown key" in line for line in lines)


def test_environment_errors_name_the_key_path_and_the_environment():
    message = config_error(None, environ={"SES_RELAY_SMTP__MAX_RECIPIENTS": "abc"})
    assert "smtp.max_recipients" in message
    assert "environment" in message
    message = config_error(None, environ={"SES_RELAY_SMTP__LISEN": "127.0.0.1:25"})
    assert "smtp.lisen" in message and "unknown key" in message and "environment" in message


def test_environment_variable_conflicting_with_a_scalar_is_an_error():
    message = config_error(None, environ={"SES_RELAY_SES__REGION": "x", "SES_RELAY_SES__REGION__SUB": "y"})
    assert "SES_RELAY_SES__REGION" in message


def test_yaml_syntax_error_has_the_line_number(tmp_path):
    path = write(tmp_path, "smtp:\n  max_recipients: 5\n  listen: [unclosed\nhttp: {}\n")
    message = config_error(path)
    assert str(path) in message
    assert "YAML syntax error" in message
    assert "line " in message
    assert "\n" not in message


def test_top_level_list_is_an_error(tmp_path):
    path = write(tmp_path, "- smtp\n- ses\n")
    message = config_error(path)
    assert str(path) in message and "mapping" in message and "list" in message


def test_top_level_scalar_is_an_error(tmp_path):
    path = write(tmp_path, "just words\n")
    assert "mapping" in config_error(path)


def test_explicit_path_that_does_not_exist_is_an_error_not_defaults(tmp_path):
    path = tmp_path / "typo.yaml"
    message = config_error(path)
    assert str(path) in message
    assert "cannot read" in message


def test_directory_as_config_path_is_an_error(tmp_path):
    message = config_error(tmp_path)
    assert str(tmp_path) in message and "cannot read" in message


def test_non_utf8_file_is_an_error(tmp_path):
    path = write(tmp_path, b"smtp:\n  hostname: caf\xe9\xff\n")
    message = config_error(path)
    assert str(path) in message
    assert "UTF-8" in message


def test_default_path_is_read_when_it_exists(tmp_path, monkeypatch):
    path = write(tmp_path, "smtp:\n  max_recipients: 4\n", "system.yaml")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None, environ={}).smtp.max_recipients == 4


# -- state directory -----------------------------------------------------------------------------


def test_state_dir_from_ses_relay_state_dir_first(monkeypatch, tmp_path):
    monkeypatch.setenv("SES_RELAY_STATE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("STATE_DIRECTORY", "/from/systemd")
    assert default_state_dir() == tmp_path / "mine"


def test_state_dir_from_systemd_state_directory_takes_the_first_entry(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/ses-relay:/var/lib/other")
    assert default_state_dir() == Path("/var/lib/ses-relay")
    monkeypatch.setenv("STATE_DIRECTORY", "/srv/state")
    assert default_state_dir() == Path("/srv/state")


def test_state_dir_for_root_is_var_lib(monkeypatch):
    monkeypatch.setattr(config_module.os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/ses-relay")


def test_state_dir_for_a_user_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setattr(config_module.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "ses-relay"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "ses-relay"


def test_derived_paths_follow_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SES_RELAY_STATE_DIR", str(tmp_path / "s"))
    config = load_config(None, environ={})
    assert config.resolved_state_dir == tmp_path / "s"
    assert config.suppression_path == tmp_path / "s" / "suppression.db"
    assert config.dry_run_dir == tmp_path / "s" / "dry-run"


def test_configured_state_dir_and_suppression_path_win(monkeypatch, tmp_path):
    monkeypatch.setenv("SES_RELAY_STATE_DIR", str(tmp_path / "env"))
    path = write(tmp_path, f"state_dir: {tmp_path / 'file'}\n")
    config = load_config(path, environ={})
    assert config.suppression_path == tmp_path / "file" / "suppression.db"
    assert config.dry_run_dir == tmp_path / "file" / "dry-run"
    path = write(tmp_path, f"suppression:\n  path: {tmp_path / 'x.db'}\n", "other.yaml")
    config = load_config(path, environ={})
    assert config.suppression_path == tmp_path / "x.db"
    assert config.dry_run_dir == tmp_path / "env" / "dry-run"


# -- config.example.yaml -------------------------------------------------------------------------


def model_key_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Leaf key paths of the Config model; dict-valued fields (ses.tags) count as leaves."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= model_key_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def data_key_paths(data: dict[str, Any], leaves: set[str], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in leaves:
            paths |= data_key_paths(value, leaves, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_model_key_paths_match_the_dumped_defaults():
    leaves = model_key_paths(Config)
    assert "ses.tags" in leaves and "smtp.tls.cert" in leaves and "state_dir" in leaves
    assert data_key_paths(Config().model_dump(), leaves) == leaves


def test_config_example_loads_and_documents_every_key():
    config = load_config(EXAMPLE, environ={})
    assert isinstance(config, Config)
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    leaves = model_key_paths(Config)
    documented = data_key_paths(data, leaves)
    missing = sorted(leaves - documented)
    assert not missing, f"config.example.yaml does not document: {missing}"
    assert documented <= leaves
