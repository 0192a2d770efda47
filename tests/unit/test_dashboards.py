"""deploy/alerts.yaml and deploy/grafana-dashboard.json: valid for promtool, unit-tested, and asking only for
metrics the relay really exposes (names read from a real relay's /metrics after it sent one message)."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from relay.spool.store import STATES
from testkit.messages import plain_message
from testkit.tools import require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "alerts.yaml"
ALERT_TESTS = DEPLOY / "alerts_test.yaml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
# Series Prometheus makes itself for every target: not the relay's to expose.
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, replaced by values of the kind Grafana puts there.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "${datasource}": "prometheus", "$job": "ses-relay",
                     "$instance": ".*"}


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def grafana_substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard: panel targets, and the selectors of variable queries."""
    queries = [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            queries.append(match.group(1))
    return [grafana_substituted(query) for query in queries]


def alert_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once strings, label matchers, ranges, grouping
    labels, function and aggregation calls and keywords are taken out."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {word for word in words if word not in {"and", "or", "unless", "bool", "offset"}}


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass():
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("threshold", "wrong", "alert"), [
    ('bounce_rate{job="ses-relay"} >= 0.025', 'bounce_rate{job="ses-relay"} >= 0.035', "SesRelayBounceRateHigh"),
    ('oldest_age_seconds{job="ses-relay"} > 3600', 'oldest_age_seconds{job="ses-relay"} > 3400',
     "SesRelaySpoolOldestAgeHigh"),
    ("    > 0.2\n", "    > 0.15\n", "SesRelayDeliveriesDeferred"),
    ('result="deferred"}[15m])) >= 10', 'result="deferred"}[15m])) >= 5', "SesRelayDeliveriesDeferred"),
])
def test_alert_unit_tests_catch_a_wrong_threshold(tmp_path, threshold, wrong, alert):
    # The near misses in alerts_test.yaml sit just past each threshold: moving it must break a test.
    shutil.copy(ALERT_TESTS, tmp_path)
    text = ALERTS.read_text()
    assert text.count(threshold) == 1
    (tmp_path / ALERTS.name).write_text(text.replace(threshold, wrong))
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and alert in result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert names <= tested


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool has no offline query checker, but it parses every rule's expression: wrap each query in one.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": query} for index, query in enumerate(dashboard_queries())
    ]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_layout_and_datasource():
    board = dashboard()
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert board["uid"] == "ses-relay"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    cells = [(panel["gridPos"]["x"] + dx, panel["gridPos"]["y"] + dy) for panel in panels
             for dx in range(panel["gridPos"]["w"]) for dy in range(panel["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"


def test_metric_names_are_found_in_expressions():
    expr = ('sum by (job, instance) (rate(ses_relay_a_total{code!~"x|y"}[5m])) / ignoring(code) '
            'ses_relay_b_count > 0.05 and on (instance) histogram_quantile(0.9, rate(c_bucket[1m])) or up == 0')
    assert metric_names(expr) == {"ses_relay_a_total", "ses_relay_b_count", "c_bucket", "up"}


def exposed_metric_names(metrics_text: str) -> set[str]:
    """Sample names on /metrics, plus the series every declared family can have (labelled counters
    show no sample before their first increment, histograms have _bucket/_sum/_count)."""
    names = set()
    suffixes = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["", "_sum", "_count"], "info": [""], "untyped": [""]}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + suffix for suffix in suffixes[kind])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def test_families_without_samples_count_as_exposed():
    text = ("# TYPE ses_relay_deliveries_total counter\n"
            "# TYPE ses_relay_spool_messages gauge\n"
            "# TYPE ses_relay_ses_request_duration_seconds histogram\n"
            "ses_relay_ready 1.0\n")
    assert exposed_metric_names(text) == {
        "ses_relay_deliveries_total", "ses_relay_spool_messages", "ses_relay_ses_request_duration_seconds_bucket",
        "ses_relay_ses_request_duration_seconds_sum", "ses_relay_ses_request_duration_seconds_count",
        "ses_relay_ready"}


@pytest.fixture
def relay_metrics_text(relay_factory, fake_ses) -> str:
    # fallback (the default) opens the spool, so its gauges and delivery counters are on /metrics; in direct
    # mode there is no spool to report on. The message goes straight to SES: the delivery counters have no
    # sample yet, only their declaration, which exposed_metric_names counts.
    relay = relay_factory(fake_ses.endpoint_url, delivery={"mode": "fallback"})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("alice@example.com", ["bob@example.org"], plain_message())
    with urllib.request.urlopen(f"{relay.http_url}/metrics", timeout=10) as response:
        return response.read().decode()


def test_every_queried_metric_is_one_the_relay_exposes(relay_metrics_text):
    exposed = exposed_metric_names(relay_metrics_text)
    assert "ses_relay_messages_sent_total" in exposed  # the message went through
    assert {"ses_relay_spool_messages", "ses_relay_spool_oldest_age_seconds", "ses_relay_deliveries_total"} <= exposed
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        used = set().union(*(metric_names(query) for query in queries))
        assert used, source
        assert sorted(used - exposed - PROMETHEUS_SERIES) == [], f"{source} queries metrics the relay lacks"


def test_queried_spool_states_are_real_states():
    # A typo in a label value (state="dead_letter") matches nothing and an alert never fires: no name check
    # would see it.
    states = set()
    for query in dashboard_queries() + alert_queries():
        for selector in re.findall(r"ses_relay_spool_messages\{([^}]*)\}", query):
            for values in re.findall(r'state=~?"([^"]*)"', selector):
                states.update(values.split("|"))
    assert "dead" in states
    assert states <= set(STATES)
