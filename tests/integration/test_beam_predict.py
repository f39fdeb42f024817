"""Batch scoring on Apache Beam (DirectRunner) against `vinted predict`: merged output, shards, dead letters."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import tiny_config, write_tiny_dataset

from vinted_classifier import data
from vinted_classifier.beam_predict import BeamPredictJob, merge_job_shards, run_beam_predict
from vinted_classifier.cli import main
from vinted_classifier.contract import LABELS_FILE, RunLabels, labels_path
from vinted_classifier.export import export_saved_model
from vinted_classifier.model import build_model
from vinted_classifier.precision import use_precision
from vinted_classifier.predict import predict_test_set
from vinted_classifier.utils import set_seed

pytest.importorskip("apache_beam", reason="the [beam] extra is not installed")

pytestmark = pytest.mark.slow
TWO_PROCESSES = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _make_run(cfg):
    """A run folder (model.keras, config.yaml, labels.json) and its export: the tiny model, untrained
    (what is compared is the two scoring paths on the same weights, not the model's quality)."""

    vocab = data.Vocabulary.from_labels(data.read_labels(cfg.data), cfg.data)
    set_seed(0)
    with use_precision("float32"):
        bundle = build_model(cfg.model, list(vocab.categories), list(vocab.tags), cfg.data.category_column)
    labels = RunLabels(
        cfg.data.category_column,
        list(vocab.categories),
        list(vocab.tags),
        [0.5, 0.45, 0.55][: len(vocab.tags)],
        cfg.model.image_size,
    )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    bundle.model.save(cfg.run_dir / "model.keras")
    (cfg.run_dir / "config.yaml").write_text(cfg.to_yaml())
    labels.save(cfg.run_dir / LABELS_FILE)
    version = export_saved_model(
        bundle.model, labels, cfg.export.saved_model_dir, cfg.export.model_name, model_cfg=cfg.model
    )
    return cfg.run_dir, version


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run, its SavedModel export, and a test set with one corrupt and one missing image."""
    root = tmp_path_factory.mktemp("beam")
    dataset = write_tiny_dataset(root / "tiny", n_test=9)
    cfg = tiny_config(dataset, root / "runs", "data.bad_images=skip")
    run_dir, version = _make_run(cfg)
    ids = pd.read_parquet(dataset / "test.parquet")["uuid"].tolist()
    corrupt, missing = ids[3], ids[6]
    raw = (dataset / f"{corrupt}.jpeg").read_bytes()
    (dataset / f"{corrupt}.jpeg").write_bytes(raw[: len(raw) // 3])  # a JPEG header, then nothing: undecodable
    (dataset / f"{missing}.jpeg").unlink()
    return cfg, run_dir, version, ids, corrupt, missing


def _split_input(ids: list[str], folder) -> str:
    """The test ids as two parquet files of 2-row row groups: the job is 5 row groups over 2 files."""
    folder.mkdir(parents=True)
    for part, chunk in enumerate((ids[:5], ids[5:])):
        table = pa.table({"uuid": pa.array(chunk, pa.string())})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=2)
    return str(folder / "part-*.parquet")


def test_two_worker_processes_write_what_vinted_predict_writes(exported, tmp_path):
    cfg, run_dir, version, ids, corrupt, missing = exported
    expected_path = tmp_path / "local" / "predictions.parquet"
    predict_test_set(run_dir, out_path=expected_path, bad_images="skip", rewrite="off")
    job = BeamPredictJob(
        saved_model=str(version),
        input_parquet=_split_input(ids, tmp_path / "input"),
        images=str(cfg.data.data_dir),
        out_path=str(tmp_path / "beam" / "predictions.parquet"),
        batch_size=4,
        rewrite="off",
    )
    result = run_beam_predict(job, TWO_PROCESSES)

    assert result.state == "DONE"
    expected, written = pd.read_parquet(expected_path), pd.read_parquet(job.out_path)
    kept = [uuid for uuid in ids if uuid not in (corrupt, missing)]
    assert written["uuid"].tolist() == kept  # input order restored after two workers shuffled it
    pd.testing.assert_frame_equal(written, expected)  # same codes, same flags, same dtypes, row for row
    assert pq.read_schema(job.out_path).equals(pq.read_schema(expected_path))
    detailed = pd.read_parquet(job.sibling("_detailed"))
    expected_detailed = pd.read_parquet(expected_path.with_name("predictions_detailed.parquet"))
    pd.testing.assert_frame_equal(
        detailed.drop(columns=[c for c in detailed if c.endswith("_probability")]),
        expected_detailed.drop(columns=[c for c in detailed if c.endswith("_probability")]),
    )
    for column in (c for c in detailed if c.endswith("_probability")):  # SavedModel vs Keras: float32 rounding
        pd.testing.assert_series_equal(detailed[column], expected_detailed[column], rtol=1e-4, atol=1e-6)

    rejected = pd.read_parquet(result.rejected_path)
    assert rejected["uuid"].tolist() == [corrupt, missing]  # input order
    reasons = dict(zip(rejected["uuid"], rejected["reason"], strict=True))
    assert reasons[corrupt].startswith("undecodable image: InvalidArgumentError")
    assert reasons[missing].startswith("missing image: none of [") and f"{missing}.jpeg" in reasons[missing]
    assert result.counters == {"images_read": len(ids) - 1, "images_scored": len(kept), "images_rejected": 2}
    assert result.rows_merged == len(kept)
    assert not (tmp_path / "beam" / "predictions_shards").exists()  # merged, then removed
    assert sorted(p.name for p in (tmp_path / "beam").iterdir()) == [
        "predictions.parquet",
        "predictions_detailed.parquet",
        "predictions_rejected.parquet",
    ]


def test_shards_keep_the_input_index_and_dead_letters_name_uuid_and_reason(exported, tmp_path):
    cfg, _, version, ids, corrupt, missing = exported
    job_ids = [ids[0], corrupt, ids[1], ids[0], missing, ids[2]]  # ids[0] twice: a duplicate uuid
    pq.write_table(pa.table({"uuid": job_ids}), tmp_path / "ids.parquet")
    out = tmp_path / "out" / "predictions.parquet"
    shard_folder = tmp_path / "out" / "predictions_shards"
    shard_folder.mkdir(parents=True)
    pq.write_table(pa.table({"index": [99]}), shard_folder / "rejected-00000-of-00001.parquet")  # an earlier job's
    job = BeamPredictJob(
        saved_model=str(version),
        input_parquet=str(tmp_path / "ids.parquet"),
        images=str(cfg.data.data_dir),
        out_path=str(out),
        batch_size=2,
        rewrite="off",
        shards_only=True,
    )
    result = run_beam_predict(job, ["--runner=DirectRunner", "--direct_num_workers=1"])

    assert result.out_path == str(shard_folder) and not out.exists()  # shards only: no merge
    shards = sorted(shard_folder.glob("*.parquet"))
    scored = pd.concat([pd.read_parquet(p) for p in shards if p.name.startswith("predictions-")]).sort_values("index")
    rejected = pd.concat([pd.read_parquet(p) for p in shards if p.name.startswith("rejected-")]).sort_values("index")
    assert list(zip(scored["index"], scored["uuid"], strict=True)) == [
        (0, ids[0]),
        (2, ids[1]),
        (3, ids[0]),
        (5, ids[2]),
    ]
    assert {"category1", "category2", "category1_name", "category1_probability"} <= set(scored.columns)
    assert list(zip(rejected["index"], rejected["uuid"], strict=True)) == [
        (1, corrupt),
        (4, missing),
    ]  # not the stale 99
    reasons = rejected["reason"].tolist()
    assert reasons[0].startswith("undecodable image: InvalidArgumentError")
    assert reasons[1].startswith("missing image: none of [") and f"{missing}.jpeg" in reasons[1]

    # The merge keeps a uuid on several rows out of the homework file and lists each of its rows.
    labels = RunLabels.load(labels_path(version))
    assert merge_job_shards(job, labels) == (2, 4)
    assert pd.read_parquet(out)["uuid"].tolist() == [ids[1], ids[2]]
    merged_rejected = pd.read_parquet(job.sibling("_rejected"))
    assert merged_rejected["uuid"].tolist() == [ids[0], corrupt, ids[0], missing]
    assert merged_rejected["reason"][0] == merged_rejected["reason"][2] == "duplicate uuid: on input rows [0, 3]"
    assert not shard_folder.exists()


def test_cli_runner_options_reach_beam_and_bad_input_is_named(exported, tmp_path, capsys):
    cfg, _, version, ids, corrupt, missing = exported
    bad = tmp_path / "ids.parquet"
    pd.DataFrame({"item": ["a", "b"]}).to_parquet(bad)
    common = [
        "predict",
        "--set",
        f"output_dir={cfg.output_dir}",
        "--set",
        f"data.data_dir={cfg.data.data_dir}",
        "--saved-model",
        str(version.parent),
        "--runner",
        "DirectRunner",
    ]
    assert main([*common, "--input", str(bad), "--out", str(tmp_path / "p.parquet")]) == 2
    assert f"{bad}: missing column 'uuid'; found ['item']" in capsys.readouterr().err
    out = tmp_path / "cli" / "predictions.parquet"
    assert main([*common, "--mixed-precision-rewrite", "off", "--out", str(out), "--direct_num_workers=1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("DONE: {'images_read': 8, 'images_scored': 7, 'images_rejected': 2}"), printed
    assert pd.read_parquet(out)["uuid"].tolist() == [u for u in ids if u not in (corrupt, missing)]
    assert pd.read_parquet(out.with_name("predictions_rejected.parquet"))["uuid"].tolist() == [corrupt, missing]
    sharded = tmp_path / "sharded" / "predictions.parquet"
    assert (
        main(
            [
                *common,
                "--mixed-precision-rewrite",
                "off",
                "--out",
                str(sharded),
                "--shards-only",
                "--batch-size",
                "3",
                "--direct_num_workers=1",
            ]
        )
        == 0
    )
    assert f"predictions {sharded.with_name('predictions_shards')}, rejected " in capsys.readouterr().out
    shards = sorted(p.name for p in sharded.with_name("predictions_shards").iterdir())
    assert shards and all(name.startswith(("predictions-", "rejected-")) for name in shards), shards
    assert not sharded.exists()
    with pytest.raises(SystemExit):
        main(["predict", "--direct_num_workers=2"])  # Beam options without --runner are an error
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err
