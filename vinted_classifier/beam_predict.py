"""Batch scoring on Apache Beam: ``vinted predict --runner NAME [beam pipeline options]``.

The same job as ``vinted predict`` (``predictions.parquet`` in the homework format, plus the
detailed file), but scored by the *exported SavedModel* in a Beam pipeline, so that it runs on
any Beam runner: the DirectRunner (``--direct_num_workers=2 --direct_running_mode=multi_processing``)
or PrismRunner here, Dataflow / Flink / Spark with their usual options, unchanged code.

Pipeline::

    uuids (parquet, any Beam filesystem) -> (position, uuid) -> Reshuffle
      -> read <images>/<uuid><ext>            --missing/empty/not an image--> rejected
      -> RunInference(SavedModel serving_default on the bytes, batched)
                                              --undecodable image---------> rejected
      -> one writer: rows sorted back to the input order, formatted by predict.format_predictions
    rejected -> <out stem>_rejected.parquet (uuid, reason)

A bad image never fails the job: a batch that fails is re-run image by image and only the images
that fail alone are rejected. Counters (namespace ``vinted``): images_read, images_scored,
images_rejected. Apache Beam is imported only when a pipeline is built (``pip install -e ".[beam]"``).
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "vinted"
REJECTED = "rejected"
REJECTED_SUFFIX = "_rejected"
DETAILED_SUFFIX = "_detailed"
# Leading bytes of the formats tf.io.decode_image reads (what the SavedModel's decode accepts).
IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP"}


@dataclass(frozen=True)
class BeamPredictJob:
    """Everything a worker needs, as plain strings (pickled to every worker)."""

    saved_model: str            # a version folder (holds saved_model.pb and assets/labels.json)
    input_parquet: str          # parquet with the id column, local or any Beam filesystem (gs://, s3://, hdfs://)
    images: str                 # folder of <uuid><ext> images, same
    out_path: str               # predictions parquet; <stem>_detailed / <stem>_rejected beside it
    id_column: str = "uuid"
    image_extensions: tuple[str, ...] = (".jpeg", ".jpg", ".png")
    batch_size: int = 32
    rewrite: str = "auto"       # host-aware mixed-precision rewrite on each worker (tf_serving_compat.host)
    detailed: bool = True

    def sibling(self, suffix: str) -> str:
        """``<out stem><suffix>.parquet`` beside the output, on whatever filesystem it lives."""
        stem = self.out_path[:-len(".parquet")] if self.out_path.endswith(".parquet") else self.out_path
        return f"{stem}{suffix}.parquet"


# --------------------------------------------------------------------------- inputs


def resolve_saved_model(path: str | Path) -> Path:
    """A SavedModel version folder: ``path`` itself, or the newest numeric version under it."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    from .export import existing_versions

    versions = existing_versions(path)
    if not versions:
        raise FileNotFoundError(f"no SavedModel at {path} (neither saved_model.pb nor numeric version folders); "
                                "run `vinted export` first")
    return path / str(versions[-1])


def read_ids(input_parquet: str, id_column: str) -> list[str]:
    """The uuids to score, in file order, from a parquet on any Beam filesystem; bad columns are named."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(input_parquet):
        raise FileNotFoundError(f"input parquet not found: {input_parquet}")
    with FileSystems.open(input_parquet) as handle:
        table = pq.read_table(io.BytesIO(handle.read()))
    if id_column not in table.column_names:
        raise ValueError(f"{input_parquet}: missing column {id_column!r}; found {table.column_names}")
    column = table.column(id_column)
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"{input_parquet}: column {id_column!r} must be strings, got {column.type}")
    if column.null_count:
        raise ValueError(f"{input_parquet}: column {id_column!r} has {column.null_count} null(s)")
    ids = column.to_pylist()
    seen, duplicates = set(), []
    for uuid in ids:
        if uuid in seen:
            duplicates.append(uuid)
        seen.add(uuid)
    if duplicates:
        raise ValueError(f"{input_parquet}: column {id_column!r} has duplicate ids {sorted(set(duplicates))[:5]}")
    return ids


def image_problem(raw: bytes) -> str | None:
    """Why these bytes cannot be an image the SavedModel decodes (cheap header check), or None."""
    if not raw:
        return "empty file"
    if not any(raw.startswith(magic) for magic in IMAGE_MAGIC):
        return f"not a JPEG/PNG/GIF/BMP image (starts with {raw[:8]!r})"
    return None


# --------------------------------------------------------------------------- the model


class _LoadedSignature:
    """The loaded SavedModel and its bytes signature (the module is kept so its variables live)."""

    def __init__(self, module, signature, category_output: str):
        self.module, self.signature, self.category_output = module, signature, category_output

    def probabilities(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        outputs = self.signature(image_bytes=tf.constant(images, dtype=tf.string))
        return (np.asarray(outputs[self.category_output], np.float32), np.asarray(outputs["tags"], np.float32))


def _model_handler_class():
    """Defined on first use, so that importing this module does not import Apache Beam."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class SavedModelBytesHandler(ModelHandler):
        """RunInference handler around the export's ``serving_default(image_bytes)``.

        Loads through ``tf.saved_model.load`` after the host-aware rewrite is set for this worker.
        A batch that fails (an undecodable image) is re-run one image at a time; an image that
        fails alone gets ``{"error": ...}`` instead of probabilities.
        """

        def __init__(self, saved_model: str, category_output: str, rewrite: str, batch_size: int):
            super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
            self._saved_model, self._category_output = saved_model, category_output
            self._rewrite, self._batch_size = rewrite, batch_size

        def load_model(self):
            import tensorflow as tf
            from tf_serving_compat.host import configure_rewrite

            decision = configure_rewrite(self._rewrite)
            log.info("worker loading %s: %s", self._saved_model, decision.describe())
            module = tf.saved_model.load(self._saved_model)
            return _LoadedSignature(module, module.signatures["serving_default"], self._category_output)

        def run_inference(self, batch, model, inference_args=None):
            import tensorflow as tf

            try:
                p_cat, p_tags = model.probabilities(list(batch))
                return [PredictionResult(None, {"category": c, "tags": t}) for c, t in zip(p_cat, p_tags)]
            except tf.errors.OpError:
                results = []
                for raw in batch:
                    try:
                        p_cat, p_tags = model.probabilities([raw])
                        results.append(PredictionResult(None, {"category": p_cat[0], "tags": p_tags[0]}))
                    except tf.errors.OpError as error:
                        reason = f"undecodable image: {type(error).__name__}: {error.message.splitlines()[0]}"
                        results.append(PredictionResult(None, {"error": reason}))
                return results

        def get_num_bytes(self, batch) -> int:
            return sum(len(raw) for raw in batch)

        def get_metrics_namespace(self) -> str:
            return COUNTER_NAMESPACE

    return SavedModelBytesHandler


def make_model_handler(job: BeamPredictJob, category_output: str):
    """Our ``ModelHandler`` for ``job``'s SavedModel (a fresh instance; picklable: strings only)."""
    return _model_handler_class()(job.saved_model, category_output, job.rewrite, job.batch_size)


# --------------------------------------------------------------------------- transforms


def _dofns():
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics import Metrics

    class ReadImageBytes(beam.DoFn):
        """(position, uuid) -> ((position, uuid), bytes); missing/empty/non-image -> rejected."""

        def __init__(self, images: str, extensions: tuple[str, ...]):
            self._images, self._extensions = images, tuple(extensions)
            self.read = Metrics.counter(COUNTER_NAMESPACE, "images_read")
            self.rejected = Metrics.counter(COUNTER_NAMESPACE, "images_rejected")

        def process(self, element):
            position, uuid = element
            paths = [FileSystems.join(self._images, f"{uuid}{ext}") for ext in self._extensions]
            found = next((path for path in paths if FileSystems.exists(path)), None)
            if found is None:
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, (position, uuid, f"missing image: none of {paths}"))
                return
            try:
                with FileSystems.open(found) as handle:
                    raw = handle.read()
            except Exception as error:  # noqa: BLE001 - an unreadable file is rejected, never fatal
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, (position, uuid, f"unreadable {found}: {error}"))
                return
            problem = image_problem(raw)
            if problem:
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, (position, uuid, f"{problem}: {found}"))
                return
            self.read.inc()
            yield (position, uuid), raw

    class SplitScored(beam.DoFn):
        """RunInference results -> (position, uuid, category probs, tag probs) or rejected."""

        def __init__(self):
            self.scored = Metrics.counter(COUNTER_NAMESPACE, "images_scored")
            self.rejected = Metrics.counter(COUNTER_NAMESPACE, "images_rejected")

        def process(self, element):
            (position, uuid), result = element
            if "error" in result.inference:
                self.rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, (position, uuid, result.inference["error"]))
                return
            self.scored.inc()
            yield position, uuid, result.inference["category"], result.inference["tags"]

    return ReadImageBytes, SplitScored


def _write_frame(frame, path: str) -> None:
    """Write a parquet atomically: locally by rename, elsewhere by one upload of a finished local file."""
    from apache_beam.io.filesystems import FileSystems

    from .utils import write_parquet

    if FileSystems.get_scheme(path) is None:
        write_parquet(frame, path)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "frame.parquet"
        write_parquet(frame, local)
        with FileSystems.create(path) as out, local.open("rb") as source:
            out.write(source.read())


def write_predictions(rows: list, job: BeamPredictJob, labels) -> int:
    """The single writer: rows back in input order, formatted exactly like ``vinted predict``."""
    from .predict import format_predictions

    rows = sorted(rows, key=lambda row: row[0])
    ids = [row[1] for row in rows]
    n_tags = len(labels.tags)
    p_cat = np.asarray([row[2] for row in rows], np.float32).reshape(len(rows), len(labels.categories))
    p_tags = np.asarray([row[3] for row in rows], np.float32).reshape(len(rows), n_tags)
    frame, detailed = format_predictions(ids, p_cat, p_tags, labels, job.id_column)
    _write_frame(frame, job.out_path)
    if job.detailed:
        _write_frame(detailed, job.sibling(DETAILED_SUFFIX))
    return len(frame)


def write_rejected(rows: list, job: BeamPredictJob) -> int:
    """The dead-letter file (uuid, reason), in input order; written (empty) even when nothing failed."""
    import pandas as pd

    rows = sorted(rows, key=lambda row: row[0])
    frame = pd.DataFrame({job.id_column: pd.array([row[1] for row in rows], dtype="string[pyarrow]"),
                          "reason": pd.array([row[2] for row in rows], dtype="string[pyarrow]")})
    _write_frame(frame, job.sibling(REJECTED_SUFFIX))
    return len(frame)


def build_pipeline(pipeline, job: BeamPredictJob, ids: list[str], labels) -> None:
    """Add the scoring transforms to ``pipeline`` (a ``beam.Pipeline``)."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    ReadImageBytes, SplitScored = _dofns()
    read = (pipeline
            | "Ids" >> beam.Create(list(enumerate(ids)))
            | "Spread" >> beam.Reshuffle()
            | "ReadImages" >> beam.ParDo(ReadImageBytes(job.images, job.image_extensions)).with_outputs(
                REJECTED, main="images"))
    scored = (read.images
              | "Score" >> RunInference(KeyedModelHandler(make_model_handler(job, labels.category_output)))
              | "Split" >> beam.ParDo(SplitScored()).with_outputs(REJECTED, main="scored"))
    _ = (scored.scored
         | "AllScored" >> beam.combiners.ToList()
         | "WritePredictions" >> beam.Map(write_predictions, job, labels))
    _ = ((read[REJECTED], scored[REJECTED])
         | "Rejected" >> beam.Flatten()
         | "AllRejected" >> beam.combiners.ToList()
         | "WriteRejected" >> beam.Map(write_rejected, job))


@dataclass(frozen=True)
class BeamPredictResult:
    out_path: str
    rejected_path: str
    counters: dict[str, int]
    state: str


def run_beam_predict(job: BeamPredictJob, beam_args: list[str]) -> BeamPredictResult:
    """Build and run the pipeline with ``beam_args`` (``--runner=...`` and the runner's options)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from .runs import RunLabels

    labels = RunLabels.load(Path(job.saved_model) / "assets" / "labels.json")
    ids = read_ids(job.input_parquet, job.id_column)
    if not ids:
        raise ValueError(f"{job.input_parquet}: no ids to score")
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job, ids, labels)
    result = pipeline.run()
    state = result.wait_until_finish()
    counters = {name: 0 for name in ("images_read", "images_scored", "images_rejected")}
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        if counter.key.metric.name in counters:
            counters[counter.key.metric.name] += counter.committed or 0
    log.info("beam predict %s: %s", state, counters)
    return BeamPredictResult(job.out_path, job.sibling(REJECTED_SUFFIX), counters, str(state))


def predict_with_beam(cfg, *, runner: str, beam_args: list[str], out_path: str, data_dir: str | None = None,
                      input_parquet: str | None = None, images: str | None = None, saved_model: str | None = None,
                      rewrite: str | None = None, batch_size: int | None = None,
                      detailed: bool = True) -> BeamPredictResult:
    """``vinted predict --runner``: a job from the run config (data folder, export) and the CLI's overrides."""
    data_cfg = cfg.data.model_copy(update={"data_dir": Path(data_dir)} if data_dir else {})
    job = BeamPredictJob(
        saved_model=str(resolve_saved_model(saved_model or Path(cfg.export.saved_model_dir) / cfg.export.model_name)),
        input_parquet=str(input_parquet or Path(data_cfg.data_dir) / data_cfg.test_file),
        images=str(images or data_cfg.images), out_path=str(out_path), id_column=data_cfg.id_column,
        image_extensions=tuple(data_cfg.image_extensions), batch_size=batch_size or cfg.train.batch_size,
        rewrite=rewrite or cfg.inference.mixed_precision_rewrite, detailed=detailed)
    return run_beam_predict(job, [f"--runner={runner}", *beam_args])
