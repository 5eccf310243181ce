"""The one-host stack (deploy/compose), checked offline: no public image can be pulled here.

The file is validated against the Compose Specification's JSON schema (the copy check-jsonschema
ships); its Prometheus configuration with promtool; its Grafana step is run as written on the
repository's dashboard; and every safegen setting it sets is a real, valid setting.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.settings_env import settings_from_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "safegen-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
EXPECTED_SERVICES = {"safegen", "redis", "prometheus", "grafana", "minio"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (relative to the file)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = source
    return found


def test_compose_file_follows_the_compose_specification() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_stack_has_every_part_and_its_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= EXPECTED_SERVICES
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert (COMPOSE_DIR / source).exists(), f"{name}: {source} (for {target}) is missing"
        # Published ports stay on the host's loopback.
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"
    # The alert rules and the dashboard are the repository's, not copies.
    prometheus = mounts(services["prometheus"])
    assert (COMPOSE_DIR / prometheus["/etc/prometheus/alerts.yml"]).resolve() == ALERTS
    assert any((COMPOSE_DIR / s).resolve() == DASHBOARD
               for svc in services.values() for s in mounts(svc).values())


def test_safegen_service_settings_and_hardening(compose: dict[str, Any]) -> None:
    safegen = compose["services"]["safegen"]
    environment = safegen["environment"]
    # ${VAR:-default} takes its default when the variable is unset (as in a fresh checkout).
    values = {k: v.split(":-", 1)[1].rstrip("}") if v.startswith("${") else v
              for k, v in environment.items()}
    settings = settings_from_env(values)
    assert settings.rate_limit_storage == "redis://redis:6379/0"
    assert "SAFEGEN_API_KEYS" not in environment  # the key comes from a secret file
    (secret,) = safegen["secrets"]
    assert environment["SAFEGEN_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    assert safegen["build"] == {**safegen["build"], "context": "../..", "dockerfile": "Dockerfile"}
    assert safegen["read_only"] is True
    assert safegen["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in safegen["security_opt"]
    assert "/models" in {v.split(":")[1] for v in safegen["volumes"]}
    # Stopping waits for the whole drain (up to 3 x the grace) before a SIGKILL.
    assert float(safegen["stop_grace_period"].removesuffix("s")) >= 3 * settings.shutdown_grace_s


def test_prometheus_config_loads_the_alert_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package")
    prometheus = compose["services"]["prometheus"]
    config_path = next(t for t in mounts(prometheus) if t.endswith("prometheus.yml"))
    config = yaml.safe_load((COMPOSE_DIR / mounts(prometheus)[config_path]).read_text("utf-8"))
    # Laid out as the container sees it: the rules beside the config, the key file where the
    # secret is mounted (here a stand-in file).
    for target, source in mounts(prometheus).items():
        shutil.copy(COMPOSE_DIR / source, tmp_path / Path(target).name)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "safegen"  # the rules watch up{job="safegen"}
    assert job["static_configs"][0]["targets"] == ["safegen:8000"]
    key_file = job["authorization"]["credentials_file"]
    assert key_file == f"/run/secrets/{prometheus['secrets'][0]}"
    (tmp_path / "key").write_text("stand-in\n", encoding="utf-8")
    job["authorization"]["credentials_file"] = str(tmp_path / "key")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    check = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr


def test_grafana_gets_the_dashboard_bound_to_the_provisioned_data_source(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    step = services["grafana-dashboards"]
    assert step["entrypoint"] == ["sh", "-c"]
    (script,) = step["command"]
    # Run the step as written (Compose turns $$ into $), with its paths under tmp_path.
    source, output = tmp_path / "src", tmp_path / "dashboards"
    source.mkdir()
    output.mkdir()
    shutil.copy(DASHBOARD, source / DASHBOARD.name)
    script = script.replace("$$", "$").replace("/src/", f"{source}/")
    script = script.replace("/dashboards/", f"{output}/")
    subprocess.run(["sh", "-c", script], check=True, timeout=60)
    (written,) = output.iterdir()
    dashboard = json.loads(written.read_text(encoding="utf-8"))

    datasources = yaml.safe_load((COMPOSE_DIR / "grafana" / "datasources.yml").read_text("utf-8"))
    (prometheus,) = datasources["datasources"]
    queried = [d for d in _datasource_refs(dashboard) if d.get("type") == "prometheus"]
    assert queried
    assert {d["uid"] for d in queried} == {prometheus["uid"]}
    assert "${" not in written.read_text(encoding="utf-8")  # no import input left unresolved
    assert prometheus["url"] == "http://prometheus:9090"

    grafana = services["grafana"]
    provider_dir = yaml.safe_load((COMPOSE_DIR / "grafana" / "dashboards.yml").read_text("utf-8"))
    path = provider_dir["providers"][0]["options"]["path"]
    assert f"grafana-dashboards:{path}:ro" in grafana["volumes"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{path}/{written.name}"
    )


def _datasource_refs(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [r for v in node.values() for r in _datasource_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _datasource_refs(v)]
    return []
