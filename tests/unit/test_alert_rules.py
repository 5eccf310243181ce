"""The monitoring assets in deploy/ are valid and cannot drift from ``safegen.metrics``.

promtool (Debian's ``prometheus`` package) checks and unit-tests the rules; the metric names,
label names and recording-rule names used by the rules and the Grafana dashboard are checked
against the metrics the code actually registers.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import start_http_server

from safegen.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "alerts.yml"
RULES_TEST = PROM_DIR / "alerts_test.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "safegen-dashboard.json"

# Labels every scraped series carries (target labels) or that histograms add themselves.
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("_sum", "_count")}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*")
SELECTOR = re.compile(r"(?<![\w:])(safegen_\w+)\s*\{([^}]*)\}")
MATCHER_NAME = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$job": ".*", "$instance": ".*"}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package "
                    "(apt-get install -y --no-install-recommends prometheus)")
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool")


def run_promtool(promtool: str, *args: str) -> None:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


def series_labels() -> dict[str, set[str]]:
    """Every series name the service exposes, mapped to its label names."""
    metrics = Metrics()
    # prometheus_client has no public accessor for a parent metric's label names.
    labels = {w.describe()[0].name: set(w._labelnames) for w in vars(metrics).values()
              if hasattr(w, "_labelnames")}
    out: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            out[family.name + suffix] = labels.get(family.name, set()) | extra
    return out


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [n["expr"] for n in walk(board["panels"]) if "expr" in n]
    exprs += [n["expr"] for n in walk(board["annotations"]) if "expr" in n]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def identifiers(expr: str) -> set[str]:
    return set(IDENT.findall(STRING.sub('""', expr)))


def all_exprs() -> list[str]:
    return [rule["expr"] for rule in rules()] + dashboard_exprs()


def test_rules_pass_promtool_check(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(RULES))


def test_rules_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(RULES_TEST))


def test_example_prometheus_config_is_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "config", str(PROM_CONFIG))


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    records = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):  # Grafana's own function: check its selector
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        records.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run_promtool(promtool, "check", "rules", str(path))


def test_every_referenced_metric_exists() -> None:
    exposed = series_labels()
    used = {name for expr in all_exprs() for name in identifiers(expr)
            if name.startswith("safegen_")}
    assert used, "no safegen_* metric found: the extraction is broken"
    unknown = used - exposed.keys()
    assert not unknown, f"not in safegen.metrics: {sorted(unknown)}"


def selector_problems(exprs: list[str]) -> tuple[int, list[str]]:
    """(label matchers checked, problems): each ``safegen_x{label=...}`` names a label of x."""
    exposed = series_labels()
    checked, problems = 0, []
    for expr in exprs:
        for name, matchers in SELECTOR.findall(STRING.sub('""', expr)):
            labels = set(MATCHER_NAME.findall(matchers))
            checked += len(labels)
            unknown = labels - exposed.get(name, set()) - TARGET_LABELS
            if unknown:
                problems.append(f"{name} has no label {sorted(unknown)} in: {expr}")
    return checked, problems


def grouping_problems(exprs: list[str]) -> tuple[int, list[str]]:
    """(grouping labels checked, problems): ``by (...)``/``on (...)`` name labels that exist
    on the metrics (or the recording rules' metrics) the expression reads."""
    exposed = series_labels()
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}

    def underlying(expr: str) -> set[str]:
        names = identifiers(expr)
        metrics = {n for n in names if n in exposed}
        for name in names & recorded.keys():
            metrics |= underlying(recorded[name])
        return metrics

    checked, problems = 0, []
    for expr in exprs:
        allowed = TARGET_LABELS | {"le"}
        allowed = allowed.union(*(exposed[m] for m in underlying(expr)))
        for group in GROUPING.findall(expr):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            checked += len(labels)
            if not labels <= allowed:
                problems.append(f"unknown labels {sorted(labels - allowed)} in: {expr}")
    return checked, problems


def used_recording_rules(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in identifiers(expr) if ":" in name}


def test_selectors_use_existing_labels() -> None:
    checked, problems = selector_problems(all_exprs())
    assert not problems, problems
    assert checked >= 10, f"only {checked} label matchers found: the extraction is broken"


def test_grouping_labels_exist() -> None:
    checked, problems = grouping_problems(all_exprs())
    assert not problems, problems
    assert checked >= 10, f"only {checked} grouping labels found: the extraction is broken"


def test_recording_rules_used_are_defined() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = used_recording_rules(all_exprs())
    assert used, "no recording rule is used: the extraction is broken"
    assert used <= recorded, f"undefined recording rules: {sorted(used - recorded)}"


def test_the_checks_catch_a_planted_mistake() -> None:
    """Each check above, fed one wrong expression, reports it (they cannot pass by matching
    nothing)."""
    wrong_label = 'sum(rate(safegen_uploads_total{outcome="failure"}[5m]))'  # label is "result"
    assert selector_problems([wrong_label])[1]
    assert not selector_problems(['rate(safegen_uploads_total{result="failure"}[5m])'])[1]
    wrong_group = "sum by (route, bucket) (rate(safegen_http_requests_total[5m]))"
    assert grouping_problems([wrong_group])[1]
    assert not grouping_problems(["sum by (route) (rate(safegen_http_requests_total[5m]))"])[1]
    assert used_recording_rules(["safegen:not_defined:ratio5m > 0"]) == {
        "safegen:not_defined:ratio5m"}


def test_every_alert_is_documented_and_unit_tested() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"page", "warning"}, name
        assert alert["annotations"]["summary"].strip(), name
        assert "Check first" in alert["annotations"]["description"], name
        assert name in tested, f"{name} has no promtool unit test in {RULES_TEST.name}"
        assert name in docs, f"{name} is not explained in docs/monitoring.md"


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    refs = [n["datasource"] for n in walk(board) if isinstance(n.get("datasource"), dict)]
    prom = [r for r in refs if r["type"] == "prometheus"]
    assert prom, "no Prometheus datasource reference"
    assert all(r["uid"] == "${DS_PROMETHEUS}" for r in prom), "datasource not bound to the input"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_upload_failure_rate_is_front_and_centre() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    first = min(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    largest = max(panels, key=lambda p: p["gridPos"]["w"] * p["gridPos"]["h"])
    assert first is largest
    assert "upload failure" in first["title"].lower()
    assert all('result="failure"' in t["expr"] for t in first["targets"])


def test_every_exposed_metric_is_on_the_dashboard() -> None:
    shown = {name for expr in dashboard_exprs() for name in identifiers(expr)}
    missing = {f.name for f in Metrics().registry.collect()
               if not any(f.name + suffix in shown for suffix in SUFFIXES[f.type])}
    assert not missing, f"metrics without a dashboard panel: {sorted(missing)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_real_prometheus_scrapes_the_service_metrics_and_evaluates_the_rules(
    tmp_path: Path,
) -> None:
    """A real Prometheus scrapes a real ``Metrics`` registry: names match, rules evaluate."""
    metrics = Metrics()
    for wrapper in vars(metrics).values():  # one child per labelled metric, so all are exposed
        if getattr(wrapper, "_labelnames", ()):
            wrapper.labels(*["x"] * len(wrapper._labelnames))
    exporter, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "safegen", "static_configs": [
            {"targets": [f"127.0.0.1:{exporter.server_port}"]}]}],
    }))
    with (tmp_path / "prometheus.log").open("w") as log:
        server = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/db",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def wait_for(query: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                response = client.get("/api/v1/query", params={"query": query})
            except httpx.TransportError:  # not listening yet
                response = None
            # 503 while the TSDB starts; an empty result until the data is there.
            if response is not None and response.status_code == 200:
                result = response.json()["data"]["result"]
                if result:
                    return list(result)
            time.sleep(0.2)
        pytest.fail(f"no result for {query!r}; log: {(tmp_path / 'prometheus.log').read_text()}")

    try:
        wait_for('up{job="safegen"} == 1')
        metrics.uploads.labels(result="failure").inc(10)
        metrics.uploads.labels(result="success").inc(10)
        wait_for('ALERTS{alertname="SafegenUploadFailureRatioHigh",alertstate="pending"}')
        wait_for('ALERTS{alertname="SafegenNotReady",alertstate="pending"}')  # ready is still 0
        stored = set(client.get("/api/v1/label/__name__/values").json()["data"])
        used = {name for expr in all_exprs() for name in identifiers(expr)
                if name.startswith("safegen_")}
        assert used <= stored, f"not scraped: {sorted(used - stored)}"
        groups = client.get("/api/v1/rules").json()["data"]["groups"]
        broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                  if r["health"] != "ok"]
        assert not broken
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
        exporter.shutdown()
        exporter.server_close()
