"""``train.time_budget_minutes``: measure step times at the start, then plan the epochs to fit.

The plan is a pure function of measured per-unit times and the workload (``plan_epochs``), so it
is tested with exact arithmetic; only ``measure_step_times`` touches the clock. Cost model:

* fixed: caching features (``train x views + val`` images through the frozen backbone), the
  final evaluation (``val + holdout``), and, when phase 2 runs, phase 1's baseline on ``val``;
* one head epoch: its measured step time x steps over the cached rows (uncached: a backbone
  pass over ``train + val`` images);
* one fine-tune epoch: measured training step x ``ceil(train / batch)`` + a ``val`` pass.

Phase 1 is planned first (it is cheap and carries most of the accuracy), phase 2 gets what is
left. Early stopping can still end a phase sooner, so a run finishes within the budget or
under it, never planned over it (unless even the minimum, one head epoch, does not fit: then
the plan says so).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per unit of work."""

    backbone_seconds_per_image: float  # frozen forward pass incl. decode (caching, evaluation, validation)
    head_seconds_per_step: float  # one head training step on a batch of cached features
    finetune_seconds_per_step: float  # one full-model training step with the last block unfrozen


@dataclass(frozen=True)
class Workload:
    train_images: int
    val_images: int
    holdout_images: int
    batch_size: int
    cached_views: int  # 1 + augmented views per training image (phase 1 with the cache)
    cache_features: bool = True


@dataclass(frozen=True)
class EpochPlan:
    head_epochs: int
    finetune_epochs: int
    budget_seconds: float
    fixed_seconds: float
    head_epoch_seconds: float
    finetune_epoch_seconds: float
    predicted_seconds: float
    fits: bool

    def describe(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit (minimum plan)"
        return (f"time budget {self.budget_seconds / 60:.1f} min: {self.head_epochs} head epoch(s) x "
                f"{self.head_epoch_seconds:.1f}s + {self.finetune_epochs} fine-tune epoch(s) x "
                f"{self.finetune_epoch_seconds:.1f}s + fixed {self.fixed_seconds:.1f}s = "
                f"{self.predicted_seconds / 60:.1f} min, {verdict}")

    def to_dict(self) -> dict:
        return asdict(self)


def plan_epochs(budget_seconds: float, times: StepTimes, work: Workload, *, max_head_epochs: int,
                max_finetune_epochs: int) -> EpochPlan:
    """The most head epochs (up to the configured count), then the most fine-tune epochs, that fit."""
    if budget_seconds <= 0:
        raise ValueError(f"time budget must be positive, got {budget_seconds} s")
    if work.batch_size < 1 or work.train_images < 1:
        raise ValueError(f"workload needs >= 1 training image and batch size, got {work}")
    per_image = times.backbone_seconds_per_image
    train_steps = math.ceil(work.train_images / work.batch_size)
    if work.cache_features:
        cached_rows = work.train_images * work.cached_views
        caching = (cached_rows + work.val_images) * per_image
        head_epoch = math.ceil(cached_rows / work.batch_size) * times.head_seconds_per_step
    else:
        caching = 0.0
        head_epoch = (work.train_images + work.val_images) * per_image
    evaluation = (work.val_images + work.holdout_images) * per_image
    baseline = work.val_images * per_image  # phase 1's value on the full model, paid only with phase 2
    finetune_epoch = train_steps * times.finetune_seconds_per_step + work.val_images * per_image
    fixed = (caching if max_head_epochs > 0 else 0.0) + evaluation
    left = budget_seconds - fixed
    head = min(max_head_epochs, max(0, math.floor(left / head_epoch))) if head_epoch > 0 else max_head_epochs
    if max_head_epochs > 0:
        head = max(head, 1)
    left -= head * head_epoch
    finetune = 0
    if max_finetune_epochs > 0 and left - baseline > 0:
        finetune = min(max_finetune_epochs, math.floor((left - baseline) / finetune_epoch))
    predicted = fixed + head * head_epoch + (baseline + finetune * finetune_epoch if finetune else 0.0)
    return EpochPlan(head, finetune, budget_seconds, fixed, head_epoch, finetune_epoch, predicted,
                     fits=predicted <= budget_seconds)


def measure_step_times(bundle, cfg, prepared, *, batches: int = 2) -> StepTimes:
    """Time a few real steps of each kind (after one untimed warm-up); the weights are put back."""
    import numpy as np

    from .. import pipeline
    from ..model import LAST_BLOCK_PREFIXES, compile_model, feature_dim, set_trainable

    def compile_(keras_model):
        compile_model(keras_model, category_output=cfg.data.category_column, n_tags=len(prepared.vocab.tags),
                      tag_names=list(prepared.vocab.tags), learning_rate=1e-9, loss_weights=cfg.train.loss_weights,
                      label_smoothing=cfg.train.label_smoothing)

    def clock(step, n):
        step()  # warm-up: tracing and first-call allocation are not steady-state cost
        started = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - started) / n

    batch = cfg.train.batch_size
    images = pipeline.make_dataset(prepared.paths("train"), image_size=cfg.model.image_size, batch_size=batch,
                                   codes=prepared.codes("train"), tags=prepared.tags("train"),
                                   category_output=cfg.data.category_column)
    x, y = next(iter(images))
    n_images = int(x.shape[0])
    saved = bundle.model.get_weights()
    try:
        per_image = clock(lambda: bundle.feature_extractor(x, training=False), batches) / n_images
        features = np.random.default_rng(0).normal(size=(batch, feature_dim(bundle))).astype(np.float32)
        head_y = {k: np.resize(np.asarray(v), (batch, *np.asarray(v).shape[1:])) for k, v in y.items()}
        prefixes = cfg.train.finetune_layer_prefixes or LAST_BLOCK_PREFIXES[cfg.model.backbone]
        set_trainable(bundle, "head", prefixes)
        compile_(bundle.head)
        head_step = clock(lambda: bundle.head.train_on_batch(features, head_y), batches)
        set_trainable(bundle, "finetune", prefixes)
        compile_(bundle.model)
        # A partial batch costs less than a full one: scale to the configured batch size.
        finetune_step = clock(lambda: bundle.model.train_on_batch(x, y), batches) * batch / n_images
    finally:
        bundle.model.set_weights(saved)
    return StepTimes(per_image, head_step, finetune_step)


def plan_run(bundle, cfg, prepared, *, elapsed_seconds: float):
    """Measure, plan, log; return (a copy of ``cfg`` with the planned epoch counts, the plan)."""
    started = time.perf_counter()
    times = measure_step_times(bundle, cfg, prepared)
    views = 1 + (cfg.train.cached_augmented_views if cfg.model.augment else 0)
    work = Workload(len(prepared.paths("train")), len(prepared.paths("val")), len(prepared.paths("holdout")),
                    cfg.train.batch_size, views, cfg.train.cache_features)
    spent = elapsed_seconds + (time.perf_counter() - started)
    budget = cfg.train.time_budget_minutes * 60 - spent
    plan = plan_epochs(max(budget, 1e-9), times, work, max_head_epochs=cfg.train.head_epochs,
                       max_finetune_epochs=cfg.train.finetune_epochs)
    log.info("measured: backbone %.1f ms/image, head step %.1f ms, fine-tune step %.0f ms; %.0fs already spent",
             times.backbone_seconds_per_image * 1e3, times.head_seconds_per_step * 1e3,
             times.finetune_seconds_per_step * 1e3, spent)
    (log.info if plan.fits else log.warning)("plan: %s", plan.describe())
    planned = cfg.model_copy(deep=True)
    planned.train.head_epochs, planned.train.finetune_epochs = plan.head_epochs, plan.finetune_epochs
    return planned, {"plan": plan.to_dict(), "step_times": asdict(times), "seconds_before_plan": round(spent, 1)}
