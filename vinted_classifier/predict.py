"""Batch prediction into ``predictions.parquet``, exactly in the homework's format.

``predictions.parquet`` holds only ``uuid`` (same values and order as test.parquet),
``category1``, ``category2`` (int64 codes of the sorted vocabulary) and one int64 0/1
column per tag, at the tuned thresholds. ``predictions_detailed.parquet`` adds names
and probabilities. Both are written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, pipeline
from .config import PROJECT_ROOT, DataConfig
from .contract import DEFAULT_ID_COLUMN, RunLabels
from .evaluate.metrics import binarize_tags
from .evaluate.metrics import top2 as top2_codes  # ties -> lower code, like tf.math.top_k in the SavedModel
from .export import model_in_precision
from .precision import configure_inference
from .runs import load_run, predict_probabilities
from .utils import write_json, write_parquet

log = logging.getLogger(__name__)


def format_predictions(
    ids: list[str], p_cat: np.ndarray, p_tags: np.ndarray, labels: RunLabels, id_column: str = DEFAULT_ID_COLUMN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(homework frame, detailed frame) from probabilities."""
    if not (len(ids) == len(p_cat) == len(p_tags)):
        raise ValueError(f"{len(ids)} ids but {len(p_cat)} category and {len(p_tags)} tag predictions")
    top2 = top2_codes(p_cat)
    flags = binarize_tags(np.asarray(p_tags, np.float32), labels.thresholds)  # float32, like the SavedModel
    frame = pd.DataFrame(
        {id_column: pd.array(ids, dtype="string[pyarrow]"), "category1": top2[:, 0], "category2": top2[:, 1]}
    )
    for index, tag in enumerate(labels.tags):
        frame[tag] = flags[:, index]
    names = np.asarray(labels.categories, dtype=object)
    rows = np.arange(len(ids))
    detailed = frame.assign(
        category1_name=names[top2[:, 0]],
        category2_name=names[top2[:, 1]],
        category1_probability=p_cat[rows, top2[:, 0]],
        category2_probability=p_cat[rows, top2[:, 1]],
        **{f"{tag}_probability": p_tags[:, i] for i, tag in enumerate(labels.tags)},
    )
    return frame, detailed


def predict_ids(model, labels: RunLabels, ids: list[str], data_cfg: DataConfig, *, batch_size: int = 32):
    """Probabilities for the given uuids, reading ``<uuid>.jpeg`` from the data folder.

    Bad images: ``fail`` raises listing them; ``skip`` predicts the rest and returns the
    skipped uuids so the caller reports them — never a silently shorter file.
    """
    report = data.check_images(ids, data_cfg, decode=True)
    data.enforce_image_policy(report, data_cfg, what=f"{Path(data_cfg.data_dir) / data_cfg.test_file}")
    kept = [uuid for uuid in ids if uuid not in set(report.bad)]
    if not kept:
        raise data.ImageError(f"no predictable images among {len(ids)} ids: {report.describe()}")
    ds = pipeline.make_dataset([report.paths[u] for u in kept], image_size=labels.image_size, batch_size=batch_size)
    p_cat, p_tags = predict_probabilities(model, ds, labels.category_output)
    return kept, p_cat, p_tags, report.bad


def load_for_inference(run_dir: str | Path, rewrite: str | None = None):
    """A finished run's (config, labels, model) ready for inference on this host.

    The model computes in float32 whatever policy trained it (a bf16 graph fails on AVX2-only
    CPUs), and the host's mixed-precision rewrite (``inference.mixed_precision_rewrite``, or
    ``rewrite``) brings back bf16/fp16 speed where the hardware has it.
    """
    cfg, labels, model = load_run(run_dir)
    decision = configure_inference(rewrite or cfg.inference.mixed_precision_rewrite)
    log.info("inference: float32 graph, %s", decision.describe())
    return cfg, labels, model_in_precision(model, cfg.model, labels, "float32")


def predict_test_set(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    out_path: str | Path = PROJECT_ROOT / "predictions.parquet",
    bad_images: str | None = None,
    batch_size: int | None = None,
    rewrite: str | None = None,
) -> pd.DataFrame:
    """Predict every uuid of ``test.parquet`` with a finished run; write both parquet files."""
    cfg, labels, model = load_for_inference(run_dir, rewrite)
    updates = {
        k: v for k, v in {"data_dir": Path(data_dir) if data_dir else None, "bad_images": bad_images}.items() if v
    }
    data_cfg = cfg.data.model_copy(update=updates)
    test_ids = data.read_test_ids(data_cfg)[data_cfg.id_column].tolist()
    kept, p_cat, p_tags, skipped = predict_ids(
        model, labels, test_ids, data_cfg, batch_size=batch_size or cfg.train.batch_size
    )
    frame, detailed = format_predictions(kept, p_cat, p_tags, labels, data_cfg.id_column)
    out_path = Path(out_path)
    write_parquet(frame, out_path)
    write_parquet(detailed, out_path.with_name(out_path.stem + "_detailed.parquet"))
    skipped_path = out_path.with_name(out_path.stem + "_skipped.json")
    if skipped:
        write_json(skipped_path, {"skipped_uuids": skipped, "reason": "missing or undecodable image"})
        log.warning("%d test image(s) skipped, listed in %s", len(skipped), skipped_path)
    else:
        skipped_path.unlink(missing_ok=True)
    log.info("wrote %d predictions to %s", len(frame), out_path)
    return frame
