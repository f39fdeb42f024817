"""bench/serve_load.py against a server subprocess on a free loopback port: smoke mode, loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from serve_helpers import PROJECT, V1_BIAS, install_version, subprocess_env, template

pytestmark = pytest.mark.slow


def test_load_test_smoke_mode(tmp_path):
    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "bench" / "serve_load.py"),
            "--smoke",
            "--model_base_path",
            str(base),
            "--json",
            str(report_file),
        ],
        cwd=PROJECT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert time.monotonic() - started < 120
    report = json.loads(report_file.read_text())
    assert report["requests_ok"] == 40 and report["errors"] == 0
    assert report["server_started_here"] is True and report["url"].startswith("http://127.0.0.1:")
    assert report["throughput_rps"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p90"] <= report["latency_ms"]["p99"]
    assert report["server_rss_mb_before"] > 0 and report["server_rss_mb_after"] > 0


def test_load_test_refuses_non_loopback_targets():
    completed = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "serve_load.py"), "--url", "http://10.1.2.3:9000"],
        cwd=PROJECT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "must point at 127.0.0.1" in completed.stderr
