"""Beam scoring without a model: row-group planning, the image header check, paths, the pipeline graph,
and the bounded-memory merge of index-keyed shards."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vinted_classifier.beam import merge
from vinted_classifier.beam.inputs import RowGroupSlice, image_problem, plan_row_groups, slice_rows_for
from vinted_classifier.beam.merge import MergedOutput, find_duplicates, merge_shards
from vinted_classifier.beam_predict import BeamPredictJob, build_pipeline, resolve_saved_model
from vinted_classifier.contract import DEFAULT_CATEGORY_COLUMN, RunLabels

pytest.importorskip("apache_beam", reason="the [beam] extra is not installed")


def _parquet(path, frame: pd.DataFrame, row_group_size: int | None = None) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size)
    return str(path)


def test_row_groups_are_numbered_across_files_in_path_order(tmp_path):
    _parquet(tmp_path / "part-1.parquet", pd.DataFrame({"uuid": ["d", "e"]}))
    _parquet(tmp_path / "part-0.parquet", pd.DataFrame({"uuid": ["a", "b", "c"]}), row_group_size=2)
    slices = plan_row_groups(str(tmp_path / "part-*.parquet"), "uuid")
    first, second = str(tmp_path / "part-0.parquet"), str(tmp_path / "part-1.parquet")
    assert slices == [RowGroupSlice(first, 0, 0, 2), RowGroupSlice(first, 1, 2, 1), RowGroupSlice(second, 0, 3, 2)]


def test_slices_read_their_rows_with_global_indexes_and_reject_null_ids(tmp_path):
    # apache_beam is the optional [beam] extra: this module skips without it (importorskip above).
    from vinted_classifier.beam.transforms import REJECTED, ReadSliceIds  # noqa: PLC0415

    path = _parquet(tmp_path / "ids.parquet", pd.DataFrame({"uuid": ["a", "b", None, "d", "e"]}), row_group_size=5)
    out = list(ReadSliceIds("uuid").process(RowGroupSlice(path, 0, 11, 3, 1)))  # rows 1..3, global 11..13
    assert out[0] == (11, "b") and out[2] == (13, "d")
    assert out[1].tag == REJECTED and out[1].value == (12, None, f"null uuid at row 12 of {path}")


def test_large_row_groups_are_cut_into_slices(tmp_path):
    path = _parquet(tmp_path / "ids.parquet", pd.DataFrame({"uuid": [f"u{i}" for i in range(7)]}), row_group_size=5)
    assert plan_row_groups(path, "uuid", slice_rows=2) == [
        RowGroupSlice(path, 0, 0, 2, 0),
        RowGroupSlice(path, 0, 2, 2, 2),
        RowGroupSlice(path, 0, 4, 1, 4),
        RowGroupSlice(path, 1, 5, 2, 0),
    ]


def test_work_items_grow_with_the_job_within_bounds():
    assert [slice_rows_for(n) for n in (10, 3_003, 100_000, 10_000_000, 100_000_000)] == [32, 32, 391, 39_063, 50_000]


def test_row_group_planning_names_bad_inputs(tmp_path):
    path = _parquet(tmp_path / "ids.parquet", pd.DataFrame({"item": ["a"]}))
    with pytest.raises(ValueError, match=r"ids.parquet: missing column 'uuid'; found \['item'\]"):
        plan_row_groups(path, "uuid")
    path = _parquet(tmp_path / "ints.parquet", pd.DataFrame({"uuid": [1, 2]}))
    with pytest.raises(ValueError, match="ints.parquet: column 'uuid' must be strings, got int64"):
        plan_row_groups(path, "uuid")
    path = _parquet(tmp_path / "empty.parquet", pd.DataFrame({"uuid": pd.Series([], dtype="string")}))
    with pytest.raises(ValueError, match="empty.parquet: no ids to score"):
        plan_row_groups(path, "uuid")
    with pytest.raises(FileNotFoundError, match="input parquet not found: .*missing.parquet"):
        plan_row_groups(str(tmp_path / "missing.parquet"), "uuid")


def test_image_header_check():
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, format=fmt)
        assert image_problem(buffer.getvalue()) is None
    assert image_problem(b"") == "empty file"
    assert image_problem(b"<html>oops</html>") == "not a JPEG/PNG/GIF/BMP image (starts with b'<html>oo')"


def test_saved_model_resolution_and_output_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel at .*run `vinted export` first"):
        resolve_saved_model(tmp_path)
    for version in ("1", "10", "2", ".export-11-abc"):
        (tmp_path / version).mkdir()
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert resolve_saved_model(tmp_path) == tmp_path / "10"  # newest numeric version
    assert resolve_saved_model(tmp_path / "10") == tmp_path / "10"
    job = BeamPredictJob("m", "in.parquet", "imgs", "gs://bucket/out/predictions.parquet")
    assert job.sibling("_rejected") == "gs://bucket/out/predictions_rejected.parquet"
    assert job.shard_prefix("rejected") == "gs://bucket/out/predictions_shards/rejected"


def test_importing_the_cli_and_beam_module_does_not_import_beam():
    code = "import sys, vinted_classifier.cli, vinted_classifier.beam_predict; print('apache_beam' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- the pipeline graph


def _labels():
    return RunLabels(DEFAULT_CATEGORY_COLUMN, ["A", "B", "C"], ["floral", "checker"], [0.5, 0.4], (40, 32))


def _graph(tmp_path, n_ids: int):
    """Every applied transform of the scoring pipeline for an input of ``n_ids`` uuids in 3 row groups."""
    # apache_beam is the optional [beam] extra: this module skips without it (importorskip above).
    import apache_beam as beam  # noqa: PLC0415

    tmp_path.mkdir(exist_ok=True)
    path = _parquet(
        tmp_path / "ids.parquet",
        pd.DataFrame({"uuid": [f"id{i}" for i in range(n_ids)]}),
        row_group_size=-(-n_ids // 3),
    )
    job = BeamPredictJob("model", path, str(tmp_path), str(tmp_path / "out" / "predictions.parquet"))
    pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
    build_pipeline(pipeline, job, plan_row_groups(path, "uuid"), _labels())
    applied = []

    class Collect(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            applied.append(node)

        def enter_composite_transform(self, node):
            applied.append(node)

    pipeline.visit(Collect())
    return applied


def test_no_step_holds_the_whole_job(tmp_path):
    # apache_beam is the optional [beam] extra: this module skips without it (importorskip above).
    import apache_beam as beam  # noqa: PLC0415

    applied = _graph(tmp_path, 300)
    names = [node.full_label for node in applied]
    kinds = {type(node.transform).__name__ for node in applied if node.transform is not None}
    # Nothing combines all rows into one list (ToList is a CombineGlobally) ...
    assert not {"ToList", "CombineGlobally"} & kinds, kinds
    assert not [name for name in names if "ToList" in name or "ToDict" in name], names
    # ... and the only values the launcher puts in the graph are row-group descriptors and the sinks'
    # one-element initialisation (``WriteImpl``'s DoOnce), never the ids.
    created = [node.transform.values for node in applied if isinstance(node.transform, beam.Create)]
    slices = [values for values in created if all(isinstance(v, RowGroupSlice) for v in values)]
    assert [len(values) for values in slices] == [12]  # 3 x 100 ids / 32
    assert all(tuple(values) == (None,) for values in created if not isinstance(values[0], RowGroupSlice)), created
    stages = {"RowGroupSlices", "ReadIds", "ReadImages", "Score", "WritePredictionShards", "WriteRejectedShards"}
    assert stages <= set(names)
    # No per-row shuffle: the only GroupByKeys are Create's reshuffle of the slices and the sinks' own
    # grouping of per-bundle file names.
    grouping = [node.full_label for node in applied if type(node.transform).__name__ == "GroupByKey"]
    assert grouping and all(
        name.split("/")[0] in {"RowGroupSlices", "WritePredictionShards", "WriteRejectedShards"} for name in grouping
    ), grouping
    # A ten times larger job builds the same graph (same transforms, same Create sizes).
    assert [node.full_label for node in _graph(tmp_path / "big", 3000)] == names


# --------------------------------------------------------------------------- the merge


def _shard(path, indexes, values) -> str:
    table = pa.table(
        {
            "index": pa.array(indexes, pa.int64()),
            "uuid": pa.array([f"u{i}" for i in indexes]),
            "value": pa.array(values, pa.float32()),
        }
    )
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize("fan_in", [32, 4])  # 18 runs: merged in one pass, or in passes of 4 runs
def test_merge_restores_the_input_order_in_small_chunks(tmp_path, monkeypatch, fan_in):
    monkeypatch.setattr(merge, "FAN_IN", fan_in)
    monkeypatch.setattr(merge, "RUN_ROW_GROUP", 8)

    rng = np.random.default_rng(0)
    order = rng.permutation(1000)
    order = order[order % 7 != 0]  # rejected rows leave gaps in the indexes
    shards = [_shard(tmp_path / f"s{k}.parquet", part, part * 0.5) for k, part in enumerate(np.array_split(order, 3))]
    out, narrow = tmp_path / "out" / "all.parquet", tmp_path / "out" / "narrow.parquet"
    full_schema = pa.schema([("uuid", pa.string()), ("value", pa.float32())], metadata={b"k": b"v"})
    rows = merge_shards(
        shards,
        [MergedOutput(str(out), full_schema), MergedOutput(str(narrow), pa.schema([("uuid", pa.string())]))],
        chunk_rows=50,
        read_rows=16,
    )  # 18 sorted runs, merged 16 rows at a time
    expected = np.sort(order)
    assert rows == len(expected)
    merged = pq.read_table(out)
    assert merged.column("uuid").to_pylist() == [f"u{i}" for i in expected]
    np.testing.assert_array_equal(merged.column("value").to_numpy(), (expected * 0.5).astype(np.float32))
    assert merged.schema.metadata == {b"k": b"v"}
    assert pq.read_table(narrow).column_names == ["uuid"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["all.parquet", "narrow.parquet"]  # no temp files left
    kept = merge_shards(
        shards,
        [MergedOutput(str(narrow), pa.schema([("uuid", pa.string())]))],
        chunk_rows=50,
        read_rows=16,
        drop={int(expected[0]), int(expected[-1])},
    )
    assert kept == len(expected) - 2
    assert pq.read_table(narrow).column("uuid").to_pylist() == [f"u{i}" for i in expected[1:-1]]


def test_duplicates_are_found_across_shards_and_read_batches(tmp_path, monkeypatch):
    def shard(name, pairs):
        table = pa.table({"index": pa.array([i for i, _ in pairs], pa.int64()), "uuid": [u for _, u in pairs]})
        pq.write_table(table, tmp_path / name)
        return str(tmp_path / name)

    unique = [(i, f"u{i:03d}") for i in range(100)]
    shards = [
        shard("a.parquet", unique[:50] + [(100, "u007"), (101, "x"), (102, "x")]),
        shard("b.parquet", unique[50:] + [(103, "u007"), (104, "u090")]),
    ]
    found = find_duplicates(shards, "uuid", chunk_rows=20, read_rows=3)  # duplicates straddle runs and batches
    monkeypatch.setattr(merge, "FAN_IN", 3)
    assert find_duplicates(shards, "uuid", chunk_rows=9, read_rows=2) == found  # 13 runs, merged in 3 passes
    assert found == {
        7: ("u007", "duplicate uuid: on input rows [7, 100, 103]"),
        100: ("u007", "duplicate uuid: on input rows [7, 100, 103]"),
        103: ("u007", "duplicate uuid: on input rows [7, 100, 103]"),
        90: ("u090", "duplicate uuid: on input rows [90, 104]"),
        104: ("u090", "duplicate uuid: on input rows [90, 104]"),
        101: ("x", "duplicate uuid: on input rows [101, 102]"),
        102: ("x", "duplicate uuid: on input rows [101, 102]"),
    }
    assert find_duplicates([shard("c.parquet", unique)], "uuid", chunk_rows=7, read_rows=2) == {}


def test_merge_refuses_an_index_claimed_by_two_shards(tmp_path):
    shards = [_shard(tmp_path / "a.parquet", [0, 2], [0, 0]), _shard(tmp_path / "b.parquet", [1, 2], [0, 0])]
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="input index 2 .*appears in more than one shard"):
        merge_shards(shards, [MergedOutput(str(out), pa.schema([("uuid", pa.string())]))])
    assert not out.exists()
    bad = _shard(tmp_path / "c.parquet", [0], [0])
    pq.write_table(pq.read_table(bad).drop_columns(["index"]), bad)
    with pytest.raises(ValueError, match="c.parquet: shard has no 'index' column"):
        merge_shards([bad], [MergedOutput(str(out), pa.schema([("uuid", pa.string())]))])
