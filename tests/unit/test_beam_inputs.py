"""beam_predict's inputs: the uuid parquet, the image header check, the export and output paths."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from vinted_classifier.beam_predict import BeamPredictJob, image_problem, read_ids, resolve_saved_model

pytest.importorskip("apache_beam", reason="the [beam] extra is not installed")


def _parquet(tmp_path, frame: pd.DataFrame):
    path = tmp_path / "ids.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def test_read_ids_keeps_file_order_and_names_bad_columns(tmp_path):
    assert read_ids(_parquet(tmp_path, pd.DataFrame({"uuid": ["c", "a", "b"]})), "uuid") == ["c", "a", "b"]
    path = _parquet(tmp_path, pd.DataFrame({"uuid": ["a", "b", "a"]}))
    with pytest.raises(ValueError, match=r"ids.parquet: column 'uuid' has duplicate ids \['a'\]"):
        read_ids(path, "uuid")
    path = _parquet(tmp_path, pd.DataFrame({"uuid": ["a", None]}))
    with pytest.raises(ValueError, match=r"column 'uuid' has 1 null\(s\)"):
        read_ids(path, "uuid")
    path = _parquet(tmp_path, pd.DataFrame({"uuid": [1, 2]}))
    with pytest.raises(ValueError, match="column 'uuid' must be strings, got int64"):
        read_ids(path, "uuid")
    with pytest.raises(FileNotFoundError, match="input parquet not found: .*missing.parquet"):
        read_ids(str(tmp_path / "missing.parquet"), "uuid")


def test_image_header_check():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    assert image_problem(buffer.getvalue()) is None
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert image_problem(buffer.getvalue()) is None
    assert image_problem(b"") == "empty file"
    assert image_problem(b"<html>oops</html>") == "not a JPEG/PNG/GIF/BMP image (starts with b'<html>oo')"


def test_saved_model_resolution_and_sibling_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel at .*run `vinted export` first"):
        resolve_saved_model(tmp_path)
    for version in ("1", "10", "2", ".export-11-abc"):
        (tmp_path / version).mkdir()
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert resolve_saved_model(tmp_path) == tmp_path / "10"  # newest numeric version
    assert resolve_saved_model(tmp_path / "10") == tmp_path / "10"
    job = BeamPredictJob("m", "in.parquet", "imgs", "gs://bucket/out/predictions.parquet")
    assert job.sibling("_rejected") == "gs://bucket/out/predictions_rejected.parquet"


def test_importing_the_cli_and_beam_module_does_not_import_beam():
    code = ("import sys, vinted_classifier.cli, vinted_classifier.beam_predict; "
            "print('apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
