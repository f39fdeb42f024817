"""Batch scoring on Apache Beam (DirectRunner, 2 worker processes) against `vinted predict`."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import tiny_config, write_tiny_dataset

pytest.importorskip("apache_beam", reason="the [beam] extra is not installed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained run, its SavedModel export, and a test set with one corrupt and one missing image."""
    from vinted_classifier.export import export_run
    from vinted_classifier.train import train

    root = tmp_path_factory.mktemp("beam")
    dataset = write_tiny_dataset(root / "tiny", n_test=9)
    cfg = tiny_config(dataset, root / "runs", "data.bad_images=skip")
    run_dir = train(cfg).run_dir
    version = export_run(run_dir, cfg.export.saved_model_dir, cfg.export.model_name)
    ids = pd.read_parquet(dataset / "test.parquet")["uuid"].tolist()
    corrupt, missing = ids[3], ids[6]
    raw = (dataset / f"{corrupt}.jpeg").read_bytes()
    (dataset / f"{corrupt}.jpeg").write_bytes(raw[: len(raw) // 3])  # a JPEG header, then nothing: undecodable
    (dataset / f"{missing}.jpeg").unlink()
    return cfg, run_dir, version, ids, corrupt, missing


def test_beam_direct_runner_writes_what_vinted_predict_writes(exported, tmp_path):
    from vinted_classifier.beam_predict import BeamPredictJob, run_beam_predict
    from vinted_classifier.predict import predict_test_set

    cfg, run_dir, version, ids, corrupt, missing = exported
    expected_path = tmp_path / "local" / "predictions.parquet"
    predict_test_set(run_dir, out_path=expected_path, bad_images="skip", rewrite="off")
    job = BeamPredictJob(saved_model=str(version), input_parquet=str(cfg.data.data_dir / "test.parquet"),
                         images=str(cfg.data.data_dir), out_path=str(tmp_path / "beam" / "predictions.parquet"),
                         batch_size=4, rewrite="off")
    result = run_beam_predict(job, ["--runner=DirectRunner", "--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"])

    assert result.state == "DONE"
    expected, written = pd.read_parquet(expected_path), pd.read_parquet(job.out_path)
    kept = [uuid for uuid in ids if uuid not in (corrupt, missing)]
    assert written["uuid"].tolist() == kept  # input order restored after two workers shuffled it
    pd.testing.assert_frame_equal(written, expected)  # same codes, same flags, same dtypes
    assert pq.read_schema(job.out_path).equals(pq.read_schema(expected_path))
    detailed = pd.read_parquet(job.sibling("_detailed"))
    expected_detailed = pd.read_parquet(expected_path.with_name("predictions_detailed.parquet"))
    assert list(detailed.columns) == list(expected_detailed.columns)
    pd.testing.assert_series_equal(detailed["category1_name"], expected_detailed["category1_name"])

    rejected = pd.read_parquet(result.rejected_path)
    assert rejected["uuid"].tolist() == [corrupt, missing]  # input order
    reasons = dict(zip(rejected["uuid"], rejected["reason"]))
    assert reasons[corrupt].startswith("undecodable image: InvalidArgumentError")
    assert reasons[missing].startswith("missing image: none of [") and f"{missing}.jpeg" in reasons[missing]
    assert result.counters == {"images_read": len(ids) - 1, "images_scored": len(kept), "images_rejected": 2}


def test_cli_runner_options_reach_beam_and_bad_input_is_named(exported, tmp_path, capsys):
    from vinted_classifier.cli import main

    cfg, _, version, ids, corrupt, missing = exported
    bad = tmp_path / "ids.parquet"
    pd.DataFrame({"item": ["a", "b"]}).to_parquet(bad)
    common = ["predict", "--set", f"output_dir={cfg.output_dir}", "--set", f"data.data_dir={cfg.data.data_dir}",
              "--saved-model", str(version.parent), "--runner", "DirectRunner"]
    assert main([*common, "--input", str(bad), "--out", str(tmp_path / "p.parquet")]) == 2
    assert f"{bad}: missing column 'uuid'; found ['item']" in capsys.readouterr().err
    out = tmp_path / "cli" / "predictions.parquet"
    assert main([*common, "--mixed-precision-rewrite", "off", "--out", str(out), "--direct_num_workers=1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("DONE: {'images_read': 8, 'images_scored': 7, 'images_rejected': 2}"), printed
    assert pd.read_parquet(out)["uuid"].tolist() == [u for u in ids if u not in (corrupt, missing)]
    assert pd.read_parquet(out.with_name("predictions_rejected.parquet"))["uuid"].tolist() == [corrupt, missing]
    with pytest.raises(SystemExit):
        main(["predict", "--direct_num_workers=2"])  # Beam options without --runner are an error
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err
