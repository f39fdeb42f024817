"""Batch scoring on Apache Beam: ``vinted predict --runner NAME [beam pipeline options]``.

The same job as ``vinted predict`` (``predictions.parquet`` in the homework format, plus the
detailed file), scored by the *exported SavedModel* in a Beam pipeline that runs unchanged on the
DirectRunner (``--direct_num_workers=2 --direct_running_mode=multi_processing``), Dataflow, Flink or
Spark. Nothing collects the job in one place: the driver reads parquet footers only, and rows flow
from row-group reads to sharded parquet sinks.

Pipeline (``vinted_classifier.beam.transforms``)::

    input parquet(s): one element per slice of <= 50k rows of a row group (footers only, read by the launcher)
      -> ids with their global row index          --null id--------------------> rejected
      -> image bytes through Beam's FileSystems   --missing/empty/not an image-> rejected
      -> RunInference(SavedModel serving_default on the bytes, batched)
                                                  --undecodable image----------> rejected
      -> formatted rows, one pyarrow table per ~1k rows (``predict.format_predictions``)
      -> WriteToParquetBatched: <out stem>_shards/predictions-SSSSS-of-NNNNN.parquet (``index`` + detailed columns)
    rejected -> WriteToParquet: <out stem>_shards/rejected-SSSSS-of-NNNNN.parquet (index, uuid, reason)

No step shuffles per-row data: each worker runs the whole chain on its slices. Then, unless
``shards_only``, ``beam.merge`` streams the shards into the homework's single ordered files (``<out>``,
``<out stem>_detailed``, ``<out stem>_rejected``) in bounded memory, moving a uuid found on several
rows to the rejected file, and removes the shards. Counters (namespace ``vinted``): images_read, images_scored,
images_rejected.
Apache Beam is imported only when a pipeline is built (``pip install -e ".[beam]"``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .beam.inputs import open_parquet, plan_row_groups
from .beam.merge import MergedOutput, find_duplicates, merge_shards
from .contract import DEFAULT_ID_COLUMN, RunLabels, labels_path
from .export import existing_versions
from .predict import format_predictions

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "vinted"
REJECTED_SUFFIX = "_rejected"
DETAILED_SUFFIX = "_detailed"
SHARDS_SUFFIX = "_shards"
PREDICTION_SHARDS, REJECTED_SHARDS = "predictions", "rejected"
COUNTERS = ("images_read", "images_scored", "images_rejected")


@dataclass(frozen=True)
class BeamPredictJob:
    """Everything a worker needs, as plain strings (pickled to every worker)."""

    saved_model: str  # a version folder (holds saved_model.pb and assets/labels.json)
    input_parquet: str  # parquet file or glob with the id column, local or any Beam filesystem
    images: str  # folder of <uuid><ext> images, same
    out_path: str  # predictions parquet; <stem>_detailed / _rejected / _shards beside it
    id_column: str = DEFAULT_ID_COLUMN
    image_extensions: tuple[str, ...] = (".jpeg", ".jpg", ".png")
    batch_size: int = 32
    rewrite: str = "auto"  # host-aware mixed-precision rewrite on each worker (hostinfo)
    detailed: bool = True
    shards_only: bool = False  # keep the sharded output (index-keyed) and skip the single-file merge
    share_model: bool = False  # one model per machine shared by its SDK worker processes (Beam's large_model)
    threads_per_worker: int = 0  # TensorFlow intra/inter-op threads per worker process; 0: TensorFlow's default

    def sibling(self, suffix: str) -> str:
        """``<out stem><suffix>.parquet`` beside the output, on whatever filesystem it lives."""
        return f"{self._stem()}{suffix}.parquet"

    def shard_folder(self) -> str:
        return f"{self._stem()}{SHARDS_SUFFIX}"

    def shard_prefix(self, kind: str) -> str:
        """``<shard folder>/<kind>``; Beam appends ``-SSSSS-of-NNNNN.parquet`` (local paths and URLs alike)."""
        return f"{self.shard_folder()}/{kind}"

    def _stem(self) -> str:
        return self.out_path[: -len(".parquet")] if self.out_path.endswith(".parquet") else self.out_path


def resolve_saved_model(path: str | Path) -> Path:
    """A SavedModel version folder: ``path`` itself, or the newest numeric version under it."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = existing_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"no SavedModel at {path} (neither saved_model.pb nor numeric version folders); run `vinted export` first"
        )
    return path / str(versions[-1])


# --------------------------------------------------------------------------- schemas


def _file_schema(frame):
    """The schema ``utils.write_parquet`` gives ``frame`` (strings as ``string``, pandas metadata kept)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return pa.schema(
        [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema],
        metadata=table.schema.metadata,
    )


def output_schemas(labels, id_column: str):
    """(homework file schema, detailed file schema, shard schema = index + detailed columns, no metadata)."""
    one = np.full((1, len(labels.categories)), 1.0 / len(labels.categories), np.float32)
    frame, detailed = format_predictions(["x"], one, np.zeros((1, len(labels.tags)), np.float32), labels, id_column)
    homework, detail = _file_schema(frame), _file_schema(detailed)
    shard = pa.schema([pa.field("index", pa.int64()), *detail]).remove_metadata()
    return homework, detail, shard


def rejected_schemas(id_column: str):
    """(rejected file schema as ``vinted predict``-style pandas strings, rejected shard schema)."""
    frame = pd.DataFrame(
        {id_column: pd.array([], dtype="string[pyarrow]"), "reason": pd.array([], dtype="string[pyarrow]")}
    )
    file_schema = _file_schema(frame)
    return file_schema, pa.schema([pa.field("index", pa.int64()), *file_schema]).remove_metadata()


# --------------------------------------------------------------------------- the pipeline


def make_model_handler(job: BeamPredictJob, category_output: str):
    """Our ``ModelHandler`` for ``job``'s SavedModel (a fresh instance; picklable: strings only)."""
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    from .beam.transforms import SavedModelBytesHandler  # noqa: PLC0415

    return SavedModelBytesHandler(
        job.saved_model,
        category_output,
        job.rewrite,
        job.batch_size,
        share_model=job.share_model,
        threads=job.threads_per_worker,
    )


def build_pipeline(pipeline, job: BeamPredictJob, row_groups: list, labels) -> None:
    """Add the scoring transforms to ``pipeline`` (a ``beam.Pipeline``); ``row_groups`` from ``plan_row_groups``."""
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    import apache_beam as beam  # noqa: PLC0415
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: PLC0415

    from .beam import transforms as t  # noqa: PLC0415

    _, _, shard_schema = output_schemas(labels, job.id_column)
    _, rejected_shard_schema = rejected_schemas(job.id_column)
    ids = (
        pipeline
        | "RowGroupSlices" >> beam.Create(row_groups)  # with a reshuffle: the slices spread over workers
        | "ReadIds" >> beam.ParDo(t.ReadSliceIds(job.id_column)).with_outputs(t.REJECTED, main="ids")
    )
    read = ids.ids | "ReadImages" >> beam.ParDo(t.ReadImageBytes(job.images, job.image_extensions)).with_outputs(
        t.REJECTED, main="images"
    )
    scored = (
        read.images
        | "Score" >> RunInference(KeyedModelHandler(make_model_handler(job, labels.category_output)))
        | "Format"
        >> beam.ParDo(t.FormatScoredRows(labels, job.id_column, shard_schema)).with_outputs(t.REJECTED, main="tables")
    )
    _ = scored.tables | "WritePredictionShards" >> beam.io.WriteToParquetBatched(
        job.shard_prefix(PREDICTION_SHARDS), shard_schema, file_name_suffix=".parquet"
    )
    _ = (
        (ids[t.REJECTED], read[t.REJECTED], scored[t.REJECTED])
        | "Rejected" >> beam.Flatten()
        | "RejectedRecords" >> beam.Map(t.rejected_record, job.id_column)
        | "WriteRejectedShards"
        >> beam.io.WriteToParquet(job.shard_prefix(REJECTED_SHARDS), rejected_shard_schema, file_name_suffix=".parquet")
    )


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class BeamPredictResult:
    out_path: str  # the merged predictions file, or the shard folder when shards_only
    rejected_path: str  # the merged dead-letter file, or its shard glob when shards_only
    counters: dict[str, int]
    state: str
    rows_merged: int | None = None


def shard_paths(job: BeamPredictJob, kind: str) -> list[str]:
    """The finished shards of one kind (Beam names them ``<kind>-SSSSS-of-NNNNN.parquet``)."""
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    pattern = f"{job.shard_prefix(kind)}-*-of-*.parquet"
    return sorted(meta.path for meta in FileSystems.match([pattern])[0].metadata_list)


def clear_shards(job: BeamPredictJob) -> None:
    """Remove shards a previous job left in this job's shard folder (a merge must read this job's only)."""
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    stale = shard_paths(job, PREDICTION_SHARDS) + shard_paths(job, REJECTED_SHARDS)
    if stale:
        log.info("removing %d shard(s) of an earlier job from %s", len(stale), job.shard_folder())
        FileSystems.delete(stale)


def _shard_rows(paths: list[str]) -> int:
    """Rows in these parquet files, from their footers."""
    total = 0
    for path in paths:
        with open_parquet(path) as parquet:
            total += parquet.metadata.num_rows
    return total


def merge_job_shards(job: BeamPredictJob, labels) -> tuple[int, int]:
    """The homework's single ordered files from the shards (bounded memory), then the shards are removed.

    A uuid scored on several input rows is left out of the predictions and listed on each of its rows
    in the rejected file (the homework file has one row per uuid). Returns (predictions, rejected) rows.
    """
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    homework, detail, _ = output_schemas(labels, job.id_column)
    rejected_file, rejected_shard = rejected_schemas(job.id_column)
    outputs = [MergedOutput(job.out_path, homework)]
    if job.detailed:
        outputs.append(MergedOutput(job.sibling(DETAILED_SUFFIX), detail))
    predictions = shard_paths(job, PREDICTION_SHARDS)
    duplicates = find_duplicates(predictions, job.id_column)
    with tempfile.TemporaryDirectory(prefix="vinted-dups-") as scratch:
        extra = []
        if duplicates:
            log.warning("%d row(s) hold a uuid that is on several rows; they go to the rejected file", len(duplicates))
            extra = [str(Path(scratch) / "duplicates.parquet")]
            indexes = sorted(duplicates)
            pq.write_table(
                pa.table(
                    [
                        pa.array(indexes, pa.int64()),
                        pa.array([duplicates[i][0] for i in indexes]),
                        pa.array([duplicates[i][1] for i in indexes]),
                    ],
                    schema=rejected_shard,
                ),
                extra[0],
            )
        scored = merge_shards(predictions, outputs, drop=set(duplicates))
        dead = merge_shards(
            shard_paths(job, REJECTED_SHARDS) + extra, [MergedOutput(job.sibling(REJECTED_SUFFIX), rejected_file)]
        )
    FileSystems.delete([job.shard_folder()])
    return scored, dead


def _counters(result) -> dict[str, int]:
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    from apache_beam.metrics.metric import MetricsFilter  # noqa: PLC0415

    counters = dict.fromkeys(COUNTERS, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        if counter.key.metric.name in counters:
            counters[counter.key.metric.name] += counter.committed or 0
    return counters


def run_beam_predict(job: BeamPredictJob, beam_args: list[str]) -> BeamPredictResult:
    """Build and run the pipeline with ``beam_args`` (``--runner=...`` and the runner's options), then merge."""
    # Apache Beam is an optional extra ([beam]): imported only when a job runs, so the CLI works without it.
    import apache_beam as beam  # noqa: PLC0415
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    labels = RunLabels.load(labels_path(job.saved_model))
    row_groups = plan_row_groups(job.input_parquet, job.id_column)
    clear_shards(job)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(pipeline, job, row_groups, labels)
    result = pipeline.run()
    state = str(result.wait_until_finish())
    counters = _counters(result)
    log.info("beam predict %s: %s", state, counters)
    if job.shards_only:
        return BeamPredictResult(job.shard_folder(), job.shard_prefix(REJECTED_SHARDS) + "-*.parquet", counters, state)
    predictions_before = _shard_rows(shard_paths(job, PREDICTION_SHARDS))
    if predictions_before != counters["images_scored"]:
        raise RuntimeError(
            f"the shards in {job.shard_folder()} hold {predictions_before} predictions but the job "
            f"scored {counters['images_scored']} (incomplete shards, or another job wrote there)"
        )
    scored, _ = merge_job_shards(job, labels)
    return BeamPredictResult(job.out_path, job.sibling(REJECTED_SUFFIX), counters, state, scored)


def predict_with_beam(
    cfg,
    *,
    runner: str,
    beam_args: list[str],
    out_path: str,
    data_dir: str | None = None,
    input_parquet: str | None = None,
    images: str | None = None,
    saved_model: str | None = None,
    rewrite: str | None = None,
    batch_size: int | None = None,
    detailed: bool = True,
    shards_only: bool = False,
    share_model: bool = False,
    threads_per_worker: int = 0,
) -> BeamPredictResult:
    """``vinted predict --runner``: a job from the run config (data folder, export) and the CLI's overrides."""
    data_cfg = cfg.data.model_copy(update={"data_dir": Path(data_dir)} if data_dir else {})
    job = BeamPredictJob(
        saved_model=str(resolve_saved_model(saved_model or Path(cfg.export.saved_model_dir) / cfg.export.model_name)),
        input_parquet=str(input_parquet or Path(data_cfg.data_dir) / data_cfg.test_file),
        images=str(images or data_cfg.images),
        out_path=str(out_path),
        id_column=data_cfg.id_column,
        image_extensions=tuple(data_cfg.image_extensions),
        batch_size=batch_size or cfg.train.batch_size,
        rewrite=rewrite or cfg.inference.mixed_precision_rewrite,
        detailed=detailed,
        shards_only=shards_only,
        share_model=share_model,
        threads_per_worker=threads_per_worker,
    )
    return run_beam_predict(job, [f"--runner={runner}", *beam_args])
