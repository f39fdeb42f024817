"""The export's reference statistics and ``vinted drift`` on a batch vs a shifted copy (tiny trained model)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from helpers import tiny_config, write_tiny_dataset

from vinted_classifier.cli import main
from vinted_classifier.contract import DEFAULT_MODEL_NAME, reference_stats_path
from vinted_classifier.export import export_run
from vinted_classifier.monitoring.reference import model_fingerprint, run_reference_files
from vinted_classifier.monitoring.report import batch_images, drift_demo, drift_report, shifted_copy, thresholds_from
from vinted_classifier.runs import load_run
from vinted_classifier.train import train

pytestmark = pytest.mark.slow  # trains and exports a tiny model (~40 s on 2 cores)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    dataset = write_tiny_dataset(root / "tiny", n_per_category=8, n_test=12)
    ids = pd.read_parquet(dataset / "test.parquet")["uuid"].astype(str)
    categories = ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"]  # the tiny set draws test item i in colour i % 3
    pd.DataFrame({"uuid": ids, "cc3": [categories[i % 3] for i in range(len(ids))]}).to_parquet(
        dataset / "test_labels.parquet", index=False
    )
    cfg = tiny_config(dataset, root / "runs")
    run_dir = train(cfg).run_dir
    version = export_run(run_dir, root / "saved_model", DEFAULT_MODEL_NAME)
    return dataset, run_dir, version, cfg


def test_export_carries_reference_statistics(exported):
    dataset, run_dir, version, _ = exported
    doc = json.loads(reference_stats_path(version).read_text())
    assert doc["schema_version"] == 1 and doc["source"]["split"] == "holdout"
    assert doc["categories"] == ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"]
    assert doc["rows"] == doc["source"]["images"] == sum(doc["category_counts"]) > 0
    assert sum(doc["numeric"]["width"]["counts"]) == doc["rows"]
    assert doc["numeric"]["width"]["edges"][0] == 0.0 and doc["created_utc"]
    # Training wrote it from its held-out scoring, for this model; the export carries that file.
    run_doc = json.loads((run_dir / "reference_stats.json").read_text())
    assert run_doc == doc and doc["source"]["model"] == model_fingerprint(run_dir)


def test_a_reference_for_another_model_is_computed_again_from_the_images(exported, tmp_path):
    _, run_dir, _, _ = exported
    stale = tmp_path / "run"
    shutil.copytree(run_dir, stale)
    written = json.loads((stale / "reference_stats.json").read_text())
    (stale / "reference_stats.json").write_text(json.dumps(dict(written, source={**written["source"], "model": "old"})))
    cfg, labels, model = load_run(stale)
    path = run_reference_files(model, labels, cfg, stale)["reference_stats.json"]
    again = json.loads(path.read_text())
    assert again["source"]["model"] == model_fingerprint(stale)
    # The model over the image files predicts what training's stored features gave: the same statistics.
    for field in ("rows", "category_counts", "tag_counts", "numeric"):
        assert again[field] == written[field], field


def test_vinted_drift_reports_the_shift_it_was_given(exported, tmp_path, capsys):
    dataset, _, version, cfg = exported
    same = main(
        [
            "drift",
            "--against",
            str(version),
            "--parquet",
            str(dataset / "test.parquet"),
            "--out",
            str(tmp_path / "same"),
        ]
    )
    assert same == 0
    baseline = pd.read_csv(tmp_path / "same" / "drift.csv").set_index("feature")

    shifted, shift = shifted_copy(cfg, tmp_path / "shifted", drop_category=None)
    assert shift == {"images": 12, "darken": 0.5, "scale": 0.5, "dropped_category": None}
    assert (
        main(["drift", "--against", str(version.parent), "--images", str(shifted), "--out", str(tmp_path / "shift")])
        == 0
    )
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "shift" / "drift.csv").set_index("feature")
    # 40x30 -> 20x15 stays in the first size bin [0, 64); the brightness halves: mostly disjoint bins.
    assert table.loc["brightness", "drift"] and table.loc["brightness", "value"] > baseline.loc["brightness", "value"]
    assert table.loc["brightness", "value"] > 0.5
    assert "DRIFT in" in printed and "brightness" in printed
    assert (tmp_path / "shift" / "drift.png").stat().st_size > 0
    report = json.loads((tmp_path / "shift" / "drift.json").read_text())
    assert report["images"] == 12 and report["unreadable"] == []


def test_vinted_drift_errors_name_what_is_missing(exported, tmp_path, capsys):
    dataset, _, version, cfg = exported
    pd.DataFrame({"uuid": ["nope"]}).to_parquet(tmp_path / "ids.parquet")
    assert (
        main(
            [
                "drift",
                "--against",
                str(version),
                "--parquet",
                str(tmp_path / "ids.parquet"),
                "--image-dir",
                str(dataset),
            ]
        )
        == 2
    )
    assert "1 uuid(s) without an image" in capsys.readouterr().err
    assert main(["drift", "--against", str(tmp_path), "--images", str(dataset)]) == 2
    assert "neither an export version" in capsys.readouterr().err


def test_drift_demo_removes_a_category_and_reads_a_run_folder_too(exported, tmp_path):
    dataset, run_dir, version, cfg = exported
    table, figure, shift = drift_demo(cfg, version, tmp_path / "demo")
    assert shift["dropped_category"] in {"BLOUSES", "CASUAL_DRESSES", "SHIRTS"}
    assert shift["images"] == 8  # 4 of the 12 test items are in each category
    assert list(table.columns) == [
        "feature",
        "distance",
        "value (test set)",
        "threshold",
        "drift (test set)",
        "value (shifted)",
        "drift (shifted)",
    ]
    shifted_rows = table.set_index("feature")
    assert shifted_rows.loc["brightness", "drift (shifted)"]
    assert figure.is_file()
    # The run folder answers like its export: same reference file, the Keras model instead of the SavedModel.
    paths = batch_images(images=tmp_path / "demo" / "shifted_test")
    from_run = drift_report(run_dir, paths, thresholds_from(cfg.monitoring))
    from_export = drift_report(version, paths, thresholds_from(cfg.monitoring))
    assert from_run.batch.category_counts.tolist() == from_export.batch.category_counts.tolist()
    assert from_run.table["value"].round(6).tolist() == from_export.table["value"].round(6).tolist()
