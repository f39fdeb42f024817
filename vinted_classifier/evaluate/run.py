"""Running a model over the validation and held-out splits: tune thresholds, compute metrics, draw figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vinted_classifier import data, pipeline
from vinted_classifier.config import RunConfig
from vinted_classifier.contract import RunLabels
from vinted_classifier.evaluate.figures import save_figures
from vinted_classifier.evaluate.metrics import evaluate_predictions, tune_thresholds
from vinted_classifier.runs import load_run, predict_probabilities
from vinted_classifier.utils import write_json


def split_probabilities(
    model, cfg: RunConfig, prepared: data.PreparedData, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(category probabilities [N, C], tag probabilities [N, T]) of one split, in the split's row order."""
    ds = pipeline.make_dataset(prepared.paths(split), image_size=cfg.model.image_size, batch_size=cfg.train.batch_size)
    return predict_probabilities(model, ds, cfg.data.category_column, description=f"predicting {split}")


def evaluate_splits(
    model,
    cfg: RunConfig,
    prepared: data.PreparedData,
    labels: RunLabels | None = None,
    *,
    figures_dir: Path | None = None,
    history: dict | None = None,
    scorer: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict, RunLabels]:
    """Tune tag thresholds on validation (unless ``labels`` brings them), then evaluate val and held-out.

    ``scorer(split) -> (category probs, tag probs)`` replaces running ``model`` over the split's
    images (training passes one that reads the feature store, ``experiments.setup.store_scorer``).
    """
    score = scorer or (lambda split: split_probabilities(model, cfg, prepared, split))
    probs = {split: score(split) for split in ("val", "holdout")}
    if labels is None:
        thresholds = tune_thresholds(prepared.tags("val").astype(np.int64), probs["val"][1])
        labels = RunLabels(
            cfg.data.category_column,
            list(prepared.vocab.categories),
            list(prepared.vocab.tags),
            [float(t) for t in thresholds],
            cfg.model.image_size,
        )
    metrics = {}
    names: dict[str, Any] = dict(
        categories=labels.categories, tag_names=labels.tags, thresholds=np.asarray(labels.thresholds)
    )
    for split in ("val", "holdout"):
        frame = prepared.frames[split]
        slices = frame[cfg.data.slice_column] if cfg.data.slice_column else None
        metrics[split] = evaluate_predictions(
            prepared.codes(split),
            probs[split][0],
            prepared.tags(split).astype(np.int64),
            probs[split][1],
            slices=slices,
            **names,
        )
    if figures_dir is not None:
        save_figures(
            prepared.codes("holdout"),
            probs["holdout"][0],
            prepared.tags("holdout").astype(np.int64),
            probs["holdout"][1],
            out_dir=figures_dir,
            history=history,
            **names,
        )
    return metrics, labels


def evaluate_run(cfg: RunConfig) -> dict:
    """Re-evaluate a finished run on its own splits with its saved thresholds; rewrite metrics.json."""
    saved_cfg, labels, model = load_run(cfg.run_dir)
    prepared = data.prepare(saved_cfg.data, saved_cfg.seed)
    metrics, _ = evaluate_splits(model, saved_cfg, prepared, labels, figures_dir=cfg.run_dir / "figures")
    write_json(cfg.run_dir / "metrics.json", metrics)
    return metrics
