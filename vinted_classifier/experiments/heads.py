"""Training heads on cached features, scored by a loss that does not depend on the hyperparameters.

Shared by the hyperparameter search and cross-validation: both fit many heads on one feature
cache (the backbone runs once). The score is the validation negative log-likelihood: category
cross-entropy without label smoothing plus the mean tag binary cross-entropy, unweighted. The
training loss cannot be the score, because label smoothing and loss weights (both searched)
change its scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ..contract import TAGS_OUTPUT
from ..model import build_head, compile_model
from ..utils import set_seed

_EPS = 1e-7


def validation_nll(codes: np.ndarray, tags: np.ndarray, p_cat: np.ndarray, p_tags: np.ndarray) -> float:
    """Mean category cross-entropy + mean tag binary cross-entropy (natural log, clipped at 1e-7)."""
    codes = np.asarray(codes, dtype=np.int64)
    if p_cat.ndim != 2 or len(p_cat) != len(codes) or p_tags.shape != np.shape(tags):
        raise ValueError(
            f"shapes do not match: codes {codes.shape}, p_cat {p_cat.shape}, "
            f"tags {np.shape(tags)}, p_tags {p_tags.shape}"
        )
    picked = np.clip(p_cat[np.arange(len(codes)), codes], _EPS, 1.0)
    p = np.clip(p_tags, _EPS, 1 - _EPS)
    bce = -(tags * np.log(p) + (1 - tags) * np.log(1 - p))
    return float(-np.log(picked).mean() + bce.mean())


@dataclass
class HeadFit:
    head: Any
    best_epoch: int
    best_nll: float
    epochs_run: int
    nll_per_epoch: list[float]
    p_cat: np.ndarray  # validation probabilities of the best epoch
    p_tags: np.ndarray


def read_cache_arrays(cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, category codes, tags) of a whole cache file, as arrays (for validation sets)."""
    records = np.fromfile(cache.path, dtype=np.float32).reshape(cache.rows, cache.feature_dim + 1 + cache.n_tags)
    dim = cache.feature_dim
    return records[:, :dim], records[:, dim].astype(np.int64), records[:, dim + 1 :]


def fit_head(
    cfg,
    train_data,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    categories: list[str],
    tag_names: list[str],
    on_epoch: Callable[[int, float], None] | None = None,
) -> HeadFit:
    """Fit a fresh head (``cfg.model`` dense units/dropout, ``cfg.train`` learning rate, smoothing,
    loss weights) on ``train_data`` (a batched tf.data dataset) for up to ``cfg.train.head_epochs``,
    keeping the epoch with the lowest validation NLL (early stopping with the configured patience).
    ``on_epoch(epoch, nll)`` may raise to stop (the search's pruner does).
    """
    set_seed(cfg.seed)
    category = cfg.data.category_column
    head = build_head(val[0].shape[1], cfg.model, categories, tag_names, category)
    compile_model(
        head,
        category_output=category,
        n_tags=len(tag_names),
        tag_names=tag_names,
        learning_rate=cfg.train.head_learning_rate,
        loss_weights=cfg.train.loss_weights,
        label_smoothing=cfg.train.label_smoothing,
    )
    keep = _KeepBestEpoch(head, val, category, cfg.train.early_stopping_patience, on_epoch)
    head.fit(train_data, epochs=cfg.train.head_epochs, callbacks=[keep], shuffle=False, verbose=0)
    if keep.weights is None or keep.probs is None:
        raise ValueError(f"every epoch gave a non-finite validation NLL: {keep.history}")
    head.set_weights(keep.weights)
    return HeadFit(head, keep.best_epoch, float(keep.best), len(keep.history), keep.history, *keep.probs)


class _KeepBestEpoch(keras.callbacks.Callback):
    """Scores each epoch by validation NLL, keeps the best epoch's weights and probabilities, and stops
    after ``patience`` epochs without a better one (0: never)."""

    def __init__(
        self,
        head,
        val: tuple[np.ndarray, np.ndarray, np.ndarray],
        category: str,
        patience: int,
        on_epoch: Callable[[int, float], None] | None,
    ):
        super().__init__()
        self.head, self.val, self.category, self.patience, self.on_epoch = head, val, category, patience, on_epoch
        self.best, self.best_epoch = np.inf, -1
        self.weights: list | None = None
        self.probs: tuple[np.ndarray, np.ndarray] | None = None
        self.history: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        features, codes, tags = self.val
        out = self.head.predict(features, batch_size=1024, verbose=0)
        p_cat, p_tags = np.asarray(out[self.category]), np.asarray(out[TAGS_OUTPUT])
        nll = validation_nll(codes, tags, p_cat, p_tags)
        self.history.append(nll)
        if nll < self.best:
            self.best, self.best_epoch, self.weights, self.probs = nll, epoch, self.head.get_weights(), (p_cat, p_tags)
        elif self.patience and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
        if self.on_epoch is not None:
            self.on_epoch(epoch, nll)
