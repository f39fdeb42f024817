"""The export's reference statistics and ``vinted drift`` on a batch vs a shifted copy (tiny trained model)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vinted_classifier.export import export_run
    from vinted_classifier.train import train

    root = tmp_path_factory.mktemp("drift")
    dataset = write_tiny_dataset(root / "tiny", n_per_category=8, n_test=12)
    cfg = tiny_config(dataset, root / "runs")
    run_dir = train(cfg).run_dir
    version = export_run(run_dir, root / "saved_model", "my_model")
    return dataset, run_dir, version


def shifted_copy(dataset, out, drop_category: str | None = None, scale: float = 0.5, darken: float = 0.5):
    """Test images darker and smaller, optionally without one category (by the tiny set's colour)."""
    from PIL import Image, ImageEnhance

    out.mkdir()
    ids = pd.read_parquet(dataset / "test.parquet")["uuid"].astype(str)
    kept = []
    for index, uuid_ in enumerate(ids):
        if drop_category is not None and ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"][index % 3] == drop_category:
            continue
        with Image.open(dataset / f"{uuid_}.jpeg") as image:
            small = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
            ImageEnhance.Brightness(small).enhance(darken).save(out / f"{uuid_}.jpeg", quality=95)
        kept.append(uuid_)
    pd.DataFrame({"uuid": kept}).to_parquet(out / "test.parquet", index=False)
    return out


def test_export_carries_reference_statistics(exported):
    dataset, run_dir, version = exported
    doc = json.loads((version / "assets.extra" / "reference_stats.json").read_text())
    assert doc["schema_version"] == 1 and doc["source"]["split"] == "holdout"
    assert doc["categories"] == ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"]
    assert doc["rows"] == doc["source"]["images"] == sum(doc["category_counts"]) > 0
    assert sum(doc["numeric"]["width"]["counts"]) == doc["rows"]
    assert doc["numeric"]["width"]["edges"][0] == 0.0 and doc["created_utc"]
    assert (run_dir / "reference_stats.json").is_file()


def test_vinted_drift_reports_the_shift_it_was_given(exported, tmp_path, capsys):
    from vinted_classifier.cli import main

    dataset, _, version = exported
    same = main(["drift", "--against", str(version), "--parquet", str(dataset / "test.parquet"),
                 "--out", str(tmp_path / "same")])
    assert same == 0
    baseline = pd.read_csv(tmp_path / "same" / "drift.csv").set_index("feature")
    shifted = shifted_copy(dataset, tmp_path / "shifted")
    assert main(["drift", "--against", str(version.parent), "--images", str(shifted),
                 "--out", str(tmp_path / "shift")]) == 0
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
    from vinted_classifier.cli import main

    dataset, _, version = exported
    pd.DataFrame({"uuid": ["nope"]}).to_parquet(tmp_path / "ids.parquet")
    assert main(["drift", "--against", str(version), "--parquet", str(tmp_path / "ids.parquet"),
                 "--image-dir", str(dataset)]) == 2
    assert "1 uuid(s) without an image" in capsys.readouterr().err
    assert main(["drift", "--against", str(tmp_path), "--images", str(dataset)]) == 2
    assert "neither an export version" in capsys.readouterr().err
