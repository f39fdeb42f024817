"""The DoFns and the ModelHandler of the Beam scoring pipeline (this module imports Apache Beam).

Elements, stage by stage (one fused stage per worker: no per-row data is shuffled):
  RowGroupSlice -> (index, uuid) -> ((index, uuid), image bytes) -> RunInference -> pyarrow tables
  of formatted rows (sharded parquet sink); every rejected row -> (index, uuid, reason).
"""

from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from hostinfo import configure_rewrite

from ..contract import DEFAULT_SIGNATURE, TAGS_OUTPUT
from ..predict import format_predictions
from .inputs import image_problem, open_parquet

log = logging.getLogger(__name__)
COUNTER_NAMESPACE = "vinted"
REJECTED = "rejected"


def _rejected(index: int, uuid, reason: str):
    return beam.pvalue.TaggedOutput(REJECTED, (index, uuid, reason))


class ReadSliceIds(beam.DoFn):
    """RowGroupSlice -> (index, uuid) for each of its rows (only the id column is read); a null id is rejected."""

    def __init__(self, id_column: str):
        self._id_column = id_column

    def process(self, piece):
        with open_parquet(piece.path) as parquet:
            column = parquet.read_row_group(piece.row_group, columns=[self._id_column]).column(0)
        for index, uuid in enumerate(column.slice(piece.offset, piece.num_rows).to_pylist(), piece.first_index):
            if uuid is None:
                yield _rejected(index, None, f"null {self._id_column} at row {index} of {piece.path}")
            else:
                yield index, uuid


class ReadImageBytes(beam.DoFn):
    """(index, uuid) -> ((index, uuid), bytes) through Beam's FileSystems; missing/empty/non-image -> rejected.

    One open per element in the common case (the first extension exists); ``exists`` is asked only
    after every open failed, to tell a missing file from an unreadable one.
    """

    def __init__(self, images: str, extensions: tuple[str, ...]):
        self._images, self._extensions = images, tuple(extensions)
        self.read = Metrics.counter(COUNTER_NAMESPACE, "images_read")
        self.rejected = Metrics.counter(COUNTER_NAMESPACE, "images_rejected")

    def _read_first(self, uuid: str) -> tuple[str | None, bytes | None, str | None]:
        paths = [FileSystems.join(self._images, f"{uuid}{ext}") for ext in self._extensions]
        errors = []
        for path in paths:
            try:
                with FileSystems.open(path) as handle:
                    return path, handle.read(), None
            except Exception as error:  # noqa: BLE001 - not found or unreadable: decided below
                errors.append((path, error))
        existing = [(path, failure) for path, failure in errors if FileSystems.exists(path)]
        if existing:
            path, failure = existing[0]
            return path, None, f"unreadable {path}: {type(failure).__name__}: {failure}"
        return None, None, f"missing image: none of {paths}"

    def process(self, element):
        index, uuid = element
        path, raw, problem = self._read_first(uuid)
        if problem is None:
            problem = image_problem(raw)
            problem = problem and f"{problem}: {path}"
        if problem:
            self.rejected.inc()
            yield _rejected(index, uuid, problem)
            return
        self.read.inc()
        yield (index, uuid), raw


class _LoadedSignature:
    """The loaded SavedModel and its bytes signature (the module is kept so its variables live)."""

    def __init__(self, module, signature, category_output: str):
        self.module, self.signature, self.category_output = module, signature, category_output

    def probabilities(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.signature(image_bytes=tf.constant(images, dtype=tf.string))
        return np.asarray(outputs[self.category_output], np.float32), np.asarray(outputs[TAGS_OUTPUT], np.float32)


class SavedModelBytesHandler(ModelHandler):
    """RunInference handler around the export's ``serving_default(image_bytes)``.

    Loads through ``tf.saved_model.load`` after the host-aware rewrite is set for this worker.
    ``share_model`` (Beam's ``large_model``) loads one copy per machine, shared by every SDK worker
    process, instead of one per process. A batch that fails (an undecodable image) is re-run one
    image at a time; an image that fails alone gets ``{"error": ...}`` instead of probabilities.
    """

    def __init__(
        self,
        saved_model: str,
        category_output: str,
        rewrite: str,
        batch_size: int,
        share_model: bool = False,
        threads: int = 0,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, large_model=share_model)
        self._saved_model, self._category_output = saved_model, category_output
        self._rewrite, self._threads = rewrite, threads

    def load_model(self):
        if self._threads:
            tf.config.threading.set_intra_op_parallelism_threads(self._threads)
            tf.config.threading.set_inter_op_parallelism_threads(self._threads)
        decision = configure_rewrite(self._rewrite)
        log.info("worker loading %s: %s", self._saved_model, decision.describe())
        module = tf.saved_model.load(self._saved_model)
        return _LoadedSignature(module, module.signatures[DEFAULT_SIGNATURE], self._category_output)

    def run_inference(self, batch, model, inference_args=None):
        try:
            p_cat, p_tags = model.probabilities(list(batch))
            return [PredictionResult(None, {"category": c, "tags": t}) for c, t in zip(p_cat, p_tags, strict=True)]
        except tf.errors.OpError:
            return [self._one(raw, model) for raw in batch]

    @staticmethod
    def _one(raw: bytes, model):
        try:
            p_cat, p_tags = model.probabilities([raw])
            return PredictionResult(None, {"category": p_cat[0], "tags": p_tags[0]})
        except tf.errors.OpError as error:
            return PredictionResult(
                None, {"error": f"undecodable image: {type(error).__name__}: {error.message.splitlines()[0]}"}
            )

    def get_num_bytes(self, batch) -> int:
        return sum(len(raw) for raw in batch)

    def get_metrics_namespace(self) -> str:
        return COUNTER_NAMESPACE


class FormatScoredRows(beam.DoFn):
    """RunInference results -> pyarrow tables of up to ``rows_per_table`` formatted rows (shard schema).

    Formatting is ``predict.format_predictions`` (the code ``vinted predict`` uses), run once per table
    rather than once per row; an image the model could not decode is rejected instead.
    """

    def __init__(self, labels, id_column: str, schema, rows_per_table: int = 1024):
        self._labels, self._id_column, self._schema = labels, id_column, schema
        self._rows_per_table = rows_per_table
        self.scored = Metrics.counter(COUNTER_NAMESPACE, "images_scored")
        self.rejected = Metrics.counter(COUNTER_NAMESPACE, "images_rejected")

    def start_bundle(self):
        self._rows = []

    def process(self, element):
        (index, uuid), result = element
        if "error" in result.inference:
            self.rejected.inc()
            yield _rejected(index, uuid, result.inference["error"])
            return
        self.scored.inc()
        self._rows.append((index, uuid, result.inference["category"], result.inference["tags"]))
        if len(self._rows) >= self._rows_per_table:
            yield self._table()

    def finish_bundle(self):
        if self._rows:
            yield WindowedValue(self._table(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _table(self):
        rows, self._rows = self._rows, []
        return format_table(rows, self._labels, self._id_column, self._schema)


def format_table(rows: list, labels, id_column: str, schema):
    """(index, uuid, category probs, tag probs) rows -> one table of ``schema`` (index + detailed columns)."""
    p_cat = np.stack([row[2] for row in rows]).astype(np.float32, copy=False)
    p_tags = np.stack([row[3] for row in rows]).astype(np.float32, copy=False)
    _, detailed = format_predictions([row[1] for row in rows], p_cat, p_tags, labels, id_column)
    table = pa.Table.from_pandas(detailed, preserve_index=False)
    table = table.add_column(0, "index", pa.array([row[0] for row in rows], pa.int64()))
    return table.select(schema.names).cast(schema)


def rejected_record(element, id_column: str) -> dict:
    index, uuid, reason = element
    return {"index": index, id_column: uuid, "reason": reason}
