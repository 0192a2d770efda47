"""Config checks for the limits, the PROXY listeners and the public HTTP listener (#11)."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, load_config

SNS = {"sns": {"enabled": True, "topic_arns": ["arn:aws:sns:us-east-1:123456789012:ses-feedback"]}}


def load(**overrides):
    return load_config(None, environ={}, overrides=overrides)


def test_defaults():
    smtp = load().smtp
    assert (smtp.max_connections_per_client, smtp.max_transactions_per_connection) == (50, 1000)
    assert (smtp.data_timeout, smtp.max_header_count, smtp.max_header_bytes) == (600.0, 1000, 1048576)
    assert (smtp.proxy_listen, smtp.trusted_proxies) == ([], [])
    assert load().http.public_listen is None


def test_a_proxy_listener_needs_trusted_proxies():
    with pytest.raises(ConfigError, match="smtp.proxy_listen needs smtp.trusted_proxies"):
        load(smtp={"proxy_listen": ["0.0.0.0:2526"]})
    assert load(smtp={"proxy_listen": ["0.0.0.0:2526"], "trusted_proxies": ["10.0.0.0/8"]}).smtp.proxy_listen


@pytest.mark.parametrize("smtp, message", [
    ({"trusted_proxies": ["not-a-cidr"]}, "smtp.trusted_proxies"),
    ({"proxy_listen": ["2526"], "trusted_proxies": ["10.0.0.0/8"]}, "smtp.proxy_listen"),
    ({"proxy_timeout": 1}, "smtp.proxy_timeout"),
    ({"data_timeout": 0}, "smtp.data_timeout"),
    ({"max_header_count": 0}, "smtp.max_header_count"),
])
def test_bad_values_name_their_key(smtp, message):
    with pytest.raises(ConfigError, match=message):
        load(smtp=smtp)


def test_auth_in_clear_is_refused_on_a_public_proxy_listener(tmp_path):
    users = tmp_path / "users"
    users.write_text("")
    with pytest.raises(ConfigError, match="0.0.0.0:2526"):
        load(smtp={"proxy_listen": ["0.0.0.0:2526"], "trusted_proxies": ["10.0.0.0/8"],
                   "auth": {"users_file": str(users)}, "tls": {"require_for_auth": False}})


def test_sns_may_be_served_on_the_public_listener_alone():
    config = load(http={"listen": None, "public_listen": "0.0.0.0:9026"}, feedback=SNS)
    assert config.http.public_listen == "0.0.0.0:9026"
    with pytest.raises(ConfigError, match="http.public_listen"):
        load(http={"listen": None}, feedback=SNS)
    with pytest.raises(ConfigError, match="http.public_listen"):
        load(http={"public_listen": "nowhere"})
