"""Alert rules (promtool: syntax, firing and non-firing cases), thresholds, dashboard metric names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from vinted_classifier.config import MonitoringConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"(vinted_[a-z0-9_]+|:tensorflow:serving:[a-z_:]+)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("promtool not found in CI: .ci/run installs the Debian prometheus package")
    pytest.skip("promtool not installed (apt-get install prometheus); CI runs this test")


def test_rules_are_valid_and_fire_exactly_in_the_synthetic_cases():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=DEPLOY, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 13 rules found" in check.stdout
    result = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    config = subprocess.run([tool, "check", "config", "prometheus.yml"], cwd=DEPLOY, capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr  # the example scrape config loads the rules


def test_promtool_reports_a_rule_that_does_not_fire(tmp_path):
    """The harness can fail: the same tests against rules with a threshold nobody reaches."""
    tool = promtool()
    rules = (
        (DEPLOY / "alerts.yml")
        .read_text()
        .replace('vinted_drift_linf{feature="category"}) > 0.15', 'vinted_drift_linf{feature="category"}) > 0.95')
    )
    (tmp_path / "alerts.yml").write_text(rules)
    shutil.copy(DEPLOY / "alerts_test.yml", tmp_path)
    result = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "VintedCategoryDrift" in result.stdout + result.stderr


def _rules() -> dict[str, dict]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def test_drift_thresholds_equal_the_config_defaults():
    limits, rules = MonitoringConfig(), _rules()

    def threshold(alert: str) -> float:
        return float(re.search(r"\)\s*>\s*([0-9.]+)", rules[alert]["expr"]).group(1))

    assert threshold("VintedCategoryDrift") == limits.category_linf_threshold
    assert threshold("VintedTagRateDrift") == limits.tag_linf_threshold
    assert threshold("VintedInputDrift") == limits.js_threshold
    assert threshold("VintedConfidenceDrift") == limits.js_threshold
    for alert in (
        "VintedCategoryDrift",
        "VintedNonFiniteOutputs",
        "VintedServerErrors",
        "VintedLatencyP99High",
        "VintedModelStale",
        "VintedNoTraffic",
    ):
        assert rules[alert]["labels"]["severity"] in {"info", "warning", "critical"}, alert


def _exported_names() -> set[str]:
    """Every metric family the served app exports: TF Serving's and the watcher's (prometheus text)."""
    # Here: the watcher's module loads TensorFlow, which the other alert tests do without.
    from tf_serving_compat.monitoring import Metrics  # noqa: PLC0415
    from vinted_classifier.monitoring.metrics import ModelWatcher  # noqa: PLC0415

    metrics = Metrics()
    serving = SimpleNamespace(metrics=metrics, registry=SimpleNamespace(models={}, get=lambda name: None))
    ModelWatcher().attach(serving)
    text = metrics.exposition().decode()
    names = set(re.findall(r"^# TYPE (\S+) (\w+)$", text, re.MULTILINE))
    out = set()
    for name, kind in names:
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return out


def test_rules_and_dashboard_use_only_metrics_the_server_exports():
    exported = _exported_names()
    assert {
        "vinted_predictions_total",
        "vinted_model_age_seconds",
        "vinted_drift_js",
        "vinted_input_image_brightness_bucket",
    } <= exported
    in_rules = set(METRIC.findall(" ".join(rule["expr"] for rule in _rules().values())))
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    in_dashboard = set(METRIC.findall(" ".join(exprs)))
    assert in_rules - exported == set()
    assert in_dashboard - exported == set()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
