"""The release gate's pure parts: statistics, verdict rules, the labelled model config, file modes."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from tf_serving_compat.versions import parse_model_config_file
from vinted_classifier.config import ReleaseConfig
from vinted_classifier.contract import ASSETS_DIR, ASSETS_EXTRA_DIR
from vinted_classifier.release import checks as C
from vinted_classifier.release import rollout, staging
from vinted_classifier.release.report import format_table
from vinted_classifier.utils import write_json, write_parquet


def test_top_k_hits_and_tag_f1():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    y = np.array([0, 1, 0])
    np.testing.assert_array_equal(C.top_k_hits(y, p, 1), [1, 0, 0])
    np.testing.assert_array_equal(C.top_k_hits(y, p, 2), [1, 1, 0])
    truth = np.array([[1, 0], [1, 0], [0, 0]])
    flags = np.array([[1, 0], [0, 0], [1, 0]])
    np.testing.assert_allclose(C.tag_f1(truth, flags), [0.5, 1.0])  # tag 2: absent on both sides


def test_mcnemar_counts_and_exact_p_value():
    candidate = np.array([1, 1, 1, 1, 1, 0, 1, 1])
    served = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    result = C.mcnemar(candidate, served)
    assert (result["candidate_only"], result["served_only"]) == (5, 0)
    assert result["p_value"] == pytest.approx(2 / 32)  # two-sided exact binomial, 5 discordant pairs


def test_paired_bootstrap_separates_a_real_drop_from_noise():
    rng = np.random.default_rng(0)
    served = (rng.random(500) < 0.85).astype(float)
    worse = served * (rng.random(500) > 0.2)  # loses a fifth of its hits
    same = served.copy()
    same[:4] = 1 - same[:4]  # four rows flip: noise
    release = ReleaseConfig(bootstrap_samples=1000)

    def check(candidate):
        diff = C.paired_difference(
            lambda idx: candidate[idx].mean(axis=1) - served[idx].mean(axis=1), 500, samples=1000, confidence=0.95
        )
        return C.regression_check("vs served top-1", diff, release.regression_margin)

    drop = check(worse)
    assert drop.passed is False and drop.value == pytest.approx(worse.mean() - served.mean())
    assert "CI [" in drop.detail
    assert check(same).passed is True


def test_a_drop_inside_the_margin_or_the_noise_passes():
    assert C.regression_check("x", (-0.01, -0.03, -0.001), 0.02).passed is True  # within the margin
    assert C.regression_check("x", (-0.05, -0.12, 0.01), 0.02).passed is True  # interval reaches zero
    assert C.regression_check("x", (-0.05, -0.09, -0.01), 0.02).passed is False


def test_numerics_check_names_the_problem():
    good = C.numerics_check("held-out", np.array([[0.2, 0.8]]), np.array([[0.1]]))
    assert good.passed is True
    nan = C.numerics_check("black", np.array([[np.nan, 0.5]]), np.array([[0.1]]))
    assert nan.passed is False and nan.detail == "1 non-finite category values"
    unnormalised = C.numerics_check("white", np.array([[0.5, 0.6]]), np.array([[0.1]]))
    assert unnormalised.passed is False and "sum to 1" in unnormalised.detail


def test_slices_below_support_are_reported_not_gated():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.1]] * 2 + [[0.9, 0.1]] * 3)  # always category 0
    pred = C.Predictions(p, np.zeros((5, 1)), np.array([0.5]))
    release = ReleaseConfig(slice_min_support=3, slice_min_top1=0.5)
    found = C.slice_checks(y, pred, None, {"cc3=A": y == 0, "cc3=B": y == 1}, release)
    by_name = {c.name: c for c in found}
    small = by_name["slice cc3=A top-1"]
    assert small.passed is None and "2 rows < slice_min_support 3" in small.detail
    assert by_name["slice cc3=B top-1"].passed is False and by_name["slice cc3=B top-1"].value == 0.0


def test_cost_ratio_without_a_served_version_is_informative():
    assert C.ratio_check("cost size", 10.0, None, 1.5, "bytes").passed is None
    assert C.ratio_check("cost size", 20.0, 10.0, 1.5, "bytes").passed is False
    assert C.ratio_check("cost size", 12.0, 10.0, 1.5, "bytes").value == pytest.approx(1.2)


def test_report_table_lists_every_check_and_the_decision():
    report = {
        "checks": [
            C.Check("floor top-1", 0.9, 0.6, True).to_dict(),
            C.Check("numerics black", 1.0, 0.0, False, "1 non-finite").to_dict(),
        ],
        "decision": "blocked",
        "blocked_by": ["numerics black"],
        "pushed_version": None,
    }
    table = format_table(report)
    assert "floor top-1" in table and "FAIL" in table
    assert table.splitlines()[-1] == "decision: BLOCKED; failed: numerics black"


def test_labels_follow_push_canary_promote_and_rollback(tmp_path):
    root = tmp_path / "saved_model"
    for version in (1, 2, 3):
        (root / "m" / str(version)).mkdir(parents=True)
    rollout.record_push(root, "m", 1, canary=False, forced=False, report_file="r1")
    rollout.record_push(root, "m", 2, canary=True, forced=False, report_file="r2")
    config = parse_model_config_file(root / "serving_config" / "models.config")[0]
    assert config.labels == {"stable": 1, "canary": 2} and config.policy.versions == {1, 2}
    rollout.promote(root, "m")
    rollout.record_push(root, "m", 3, canary=False, forced=True, report_file="r3")
    config = parse_model_config_file(root / "serving_config" / "models.config")[0]
    assert config.labels == {"stable": 3} and config.policy.versions == {2, 3}  # previous stable stays loaded
    state = rollout.rollback(root, "m", remove=True)
    assert state["labels"] == {"stable": 2} and not (root / "m" / "3").exists()
    config = parse_model_config_file(root / "serving_config" / "models.config")[0]
    assert config.labels == {"stable": 2} and 3 not in config.policy.versions
    assert [e["event"] for e in state["events"]] == ["push", "canary", "promote", "push", "rollback"]
    rollout.rollback(root, "m")
    with pytest.raises(ValueError, match="no earlier released version to roll back to"):
        rollout.rollback(root, "m")


def test_promote_without_a_canary_is_refused(tmp_path):
    rollout.record_push(tmp_path, "m", 1, canary=False, forced=False, report_file="r")
    with pytest.raises(ValueError, match="no canary version to promote"):
        rollout.promote(tmp_path, "m")


def test_a_corrupt_state_file_is_named(tmp_path):
    path = rollout.state_path(tmp_path, "m")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="m.json is not valid JSON"):
        rollout.load_state(tmp_path, "m")


def test_atomic_writes_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        write_parquet(pd.DataFrame({"uuid": ["x"]}), tmp_path / "predictions.parquet")
    finally:
        os.umask(old)
    for name in ("metrics.json", "predictions.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_push_is_atomic_and_carries_the_candidate(tmp_path, monkeypatch):
    candidate = tmp_path / "staging" / "m" / "1"
    (candidate / ASSETS_EXTRA_DIR).mkdir(parents=True)
    (candidate / ASSETS_DIR).mkdir()
    (candidate / "saved_model.pb").write_bytes(b"graph")
    (candidate / ASSETS_DIR / "export.json").write_text(json.dumps({"version": 1, "precision": "float32"}))
    (candidate / ASSETS_EXTRA_DIR / "reference_stats.json").write_text('{"n": 3}')
    root = tmp_path / "served" / "m"
    pushed = staging.push(candidate, root, 7, {"release.json": {"decision": "pushed"}})
    assert pushed == root / "7" and (pushed / "saved_model.pb").read_bytes() == b"graph"
    assert json.loads((pushed / ASSETS_DIR / "export.json").read_text())["version"] == 7
    assert (pushed / ASSETS_EXTRA_DIR / "reference_stats.json").read_text() == '{"n": 3}'
    assert json.loads((pushed / ASSETS_EXTRA_DIR / "release.json").read_text()) == {"decision": "pushed"}
    with pytest.raises(FileExistsError, match="version 7 already exists"):
        staging.push(candidate, root, 7, {})

    def disk_full(path, payload):
        raise OSError("disk full")

    monkeypatch.setattr(staging, "write_json", disk_full)
    with pytest.raises(OSError, match="disk full"):
        staging.push(candidate, root, 8, {})
    assert sorted(p.name for p in root.iterdir()) == ["7"]  # no half version, no hidden leftovers
