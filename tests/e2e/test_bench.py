"""Benchmarks: the harness pieces, and every benchmark's smoke mode produces well-formed results.

No timing thresholds here: the machine is shared and speed is what the benchmarks report,
not what the tests check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness, run_all

PROJECT = Path(__file__).resolve().parents[2]


def test_interleaved_alternates_order_and_counts_rounds():
    calls = []
    times = harness.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_row_ratio_and_goal_direction():
    up = harness.row("x", "faster", 30.0, "img/s", baseline_name="base", baseline_value=10.0, goal=2.0)
    assert up["ratio"] == pytest.approx(3.0) and up["goal_met"] is True
    down = harness.row("x", "memory", 1.2, "MiB", baseline_value=1.0, goal=1.1, higher_is_better=False)
    assert down["goal_met"] is False
    assert set(harness.ROW_FIELDS) <= set(up)
    paired = harness.ratio_rows("x", "r", "b", {"v": [1.0, 2.0, 4.0], "w": [2.0, 2.0, 2.0]}, 8, "v", "w")
    assert paired["value"] == pytest.approx(4.0) and paired["ratio"] == pytest.approx(1.0)


def test_peak_rss_of_child_sees_its_allocation(tmp_path):
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3)"
    small = harness.peak_rss_of([sys.executable, "-c", "import time; time.sleep(0.3)"], timeout=60)
    big = harness.peak_rss_of([sys.executable, "-c", code], timeout=60, log_path=tmp_path / "log")
    assert small["returncode"] == 0 and big["returncode"] == 0
    assert big["peak_rss_mb"] > small["peak_rss_mb"] + 250
    assert big["polled_peak_mb"] > 0


def test_peak_rss_of_kills_at_timeout():
    result = harness.peak_rss_of([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert result["returncode"] != 0 and result["seconds"] < 30


def test_markdown_report(tmp_path):
    report = {
        "date": "2025-01-01T00:00:00+00:00",
        "command": "python -m bench.run_all",
        "total_seconds": 60,
        "machine": harness.machine(),
        "benchmarks": {
            "demo": {
                "rows": [
                    harness.row(
                        "demo", "thing", 2.0, "img/s", baseline_name="other", baseline_value=1.0, goal=1.5, note="a | b"
                    )
                ],
                "error": None,
                "seconds": 1.0,
                "loadavg_1m": {"before": 0.1, "after": 0.2},
            }
        },
    }
    path = tmp_path / "b.md"
    harness.write_markdown(report, path, titles={"demo": "Demo"}, notes={"demo": "Some notes."})
    text = path.read_text()
    assert "| thing | 2.00 img/s | other | 1.00 img/s | 2.00× | ≥ 1.5× ✅ | a \\| b |" in text
    assert "python -m bench.run_all" in text and report["machine"]["cpu_model"] in text
    assert "Some notes." in text and "Goals at a glance" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_smoke_benchmark(name, tmp_path):
    out = tmp_path / "out"
    docs_before = run_all.DOCS.stat().st_mtime_ns if run_all.DOCS.is_file() else None
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--smoke", "--only", name, "--out", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((out / "results.json").read_text())
    result = report["benchmarks"][name]
    assert result["error"] is None, result["error"]
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert result["rows"], "no result rows"
    for r in result["rows"]:
        assert set(harness.ROW_FIELDS) <= set(r), r
        assert r["bench"] == name and r["name"] and r["unit"]
        if r["unit"] == "score":  # accuracies of tiny untrained models may be 0
            assert 0 <= r["value"] <= 1, r
        else:
            assert r["value"] > 0, r
        for key in ("baseline_value", "ratio"):
            assert r[key] is None or r[key] > 0, r
    assert (out / "benchmarks.md").is_file()
    assert report["machine"]["logical_cores"] >= 1
    # smoke mode never touches the committed report
    assert (run_all.DOCS.stat().st_mtime_ns if run_all.DOCS.is_file() else None) == docs_before
