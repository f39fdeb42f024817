"""``train.time_budget_minutes``: measure step times at the start, then plan the whole run to fit.

The plan is a pure function of measured per-unit times and the workload (``plan_budget``), so it
is tested with exact arithmetic; only ``measure_step_times`` touches the clock. Every cost of the
command is planned, in seconds:

* caching: ``(train x (1 + augmented views) + val) x backbone s/image`` (phase 1 with the cache),
  less what the shared feature store already holds (a search or an earlier run on the same images);
* one head epoch: ``ceil(cached train rows / batch) x head s/step`` (without the cache: a backbone
  pass over ``train + val``);
* one fine-tune epoch: ``ceil(train / batch) x fine-tune s/step + val x backbone s/image``, plus
  phase 1's baseline on ``val`` once when phase 2 runs;
* evaluation and anything else the command does with the backbone: ``(holdout + predicted) x
  backbone s/image``, plus a fixed ``overhead_seconds`` (graph tracing, saving); val too when
  phase 2 runs or nothing is cached (otherwise val is scored from the features cached for
  training, ``experiments.setup.store_scorer``);
* under ``time_budget_scope: main_job`` (``make all``), what the job runs after training: the test
  images, the release gate's held-out scoring, the export's reference images when training could
  not write them, and ``MAIN_JOB_FIXED_SECONDS``; the clock starts when the job did.

What to buy, in order of value per second (measured on the demo set, docs/experiments.md):

1. evaluation, the clean view and ``min_head_epochs`` head epochs: the model itself;
2. augmented views, most first (each is a backbone pass over the training split);
3. more head epochs, up to the configured count (cheap on cached features; early stopping ends them);
4. the next augmented view for as many training images as the rest buys (a stratified share,
   ``train.partial_view_share``), so that a budget just short of a whole view still buys most of it;
5. fine-tune epochs (2.5-7 min each on a 2-core CPU, rarely better than phase 1 on the demo set).

When even (1) does not fit, the training split is subsampled, stratified by category (val and
holdout never are: they measure the result). When even the smallest subsample
(``min_train_images``) with the floor of head epochs is predicted to miss the budget by more than
``TOLERANCE`` (15%), the run is refused before it starts (``BudgetTooSmall``), naming the minimum.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from .. import pipeline
from ..data.schema import read_test_ids
from ..data.splits import stratified_subsample
from ..export.versioned import existing_versions
from ..features import FeatureStore, cached_views, open_store
from ..model import LAST_BLOCK_PREFIXES, feature_dim, set_trainable
from ..release.staging import served_root
from .setup import compile_for, image_hashes

log = logging.getLogger(__name__)

TOLERANCE = 0.15  # a plan predicted to miss by more is refused, not started
# Phase 1's fixed start (pipelines, tracing the train and test steps): ~19 s on the tiny test run,
# whose 3 head epochs were predicted at 2.7 s and took 21.7 s (2 shared cores, load ~9).
FIT_START_SECONDS = 20.0
MIN_HEAD_EPOCHS = 10  # phase 1 on the demo set early-stops after ~12; fewer is a worse model, not a cheaper one
# The smallest subsample worth training keeps this many training images of each category: ~48 per
# category trained the behavioural tests' model to held-out top-1 ~0.83 (docs/experiments.md), while 5
# per category with one head epoch gave 0.19 on a slow AVX2 host, a model no release gate passes.
MIN_IMAGES_PER_CATEGORY = 50


class BudgetTooSmall(ValueError):
    """Even the smallest plan is predicted to miss the time budget by more than ``TOLERANCE``."""

    def __init__(self, message: str, needed_seconds: float | None = None):
        super().__init__(message)
        self.needed_seconds = needed_seconds  # the least time left that the smallest plan would accept


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per unit of work."""

    backbone_seconds_per_image: float  # frozen forward pass (caching the clean view, evaluation, validation)
    head_seconds_per_step: float  # one head training step on a batch of cached features
    finetune_seconds_per_step: float  # one full-model training step with the last block unfrozen
    # The augmenter (rotation, zoom, ...) and the forward pass, per augmented view cached; 0: priced as
    # the clean view (78.5 vs 75.4 ms/image on the simulated AVX2 CPU).
    augmented_seconds_per_image: float = 0.0

    @property
    def augmented_view_seconds(self) -> float:
        return self.augmented_seconds_per_image or self.backbone_seconds_per_image


@dataclass(frozen=True)
class Workload:
    train_images: int
    val_images: int
    holdout_images: int
    batch_size: int
    augmented_views: int  # the configured maximum of cached augmented views per training image
    cache_features: bool = True
    predict_images: int = 0  # images the same command (or job) also predicts (beyond val and holdout)
    # Held-out images the export scores for its reference statistics unless training wrote them from
    # its store-scored holdout (it does while the backbone is the store's: no phase 2, the cache on).
    reference_images: int = 0
    overhead_seconds: float = 0.0  # fixed costs not proportional to images: tracing, saving, figures
    min_train_images: int = 1  # the smallest (stratified) training subsample worth training
    # What the feature store already holds, as shares of each split: no backbone pass is planned for it.
    stored_train_views: tuple[float, ...] = ()  # [view] share of training images stored (0: the clean view)
    stored_val: float = 0.0
    stored_holdout: float = 0.0

    def to_compute(self, share: float) -> float:
        """The part of a split the store lacks (everything without the cache, which the store serves)."""
        return 1.0 - share if self.cache_features else 1.0

    def train_rows_to_compute(self, train_images: int, view: int) -> float:
        """Training images whose ``view`` (0: the clean one) the store lacks."""
        shares = self.stored_train_views
        return train_images * self.to_compute(shares[view] if view < len(shares) else 0.0)


@dataclass(frozen=True)
class Plan:
    budget_seconds: float
    train_images: int  # < the workload's train_images: a stratified subsample
    augmented_views: int
    head_epochs: int
    finetune_epochs: int
    caching_seconds: float
    evaluation_seconds: float  # incl. the workload's prediction and overhead
    head_epoch_seconds: float
    finetune_epoch_seconds: float
    finetune_baseline_seconds: float  # phase 1's value on val, paid once when phase 2 runs
    predicted_seconds: float
    subsampled: bool
    partial_view_images: int = 0  # training images cached with one augmented view more than the others

    @property
    def partial_view_share(self) -> float:
        return self.partial_view_images / self.train_images

    @property
    def fits(self) -> bool:
        return self.predicted_seconds <= self.budget_seconds

    def describe(self) -> str:
        data = (
            f"{self.train_images} training image(s) (stratified subsample)"
            if self.subsampled
            else f"{self.train_images} training image(s)"
        )
        verdict = (
            "fits" if self.fits else f"over by {self.predicted_seconds / self.budget_seconds - 1:.0%} (minimum plan)"
        )
        partial = (
            f" (+ 1 more for {self.partial_view_images} of them, {self.partial_view_share:.0%})"
            if self.partial_view_images
            else ""
        )
        return (
            f"time budget {self.budget_seconds / 60:.1f} min: {data} x (1 + {self.augmented_views} augmented "
            f"view(s)){partial} cached in {self.caching_seconds:.1f}s + {self.head_epochs} head epoch(s) x "
            f"{self.head_epoch_seconds:.1f}s + {self.finetune_epochs} fine-tune epoch(s) x "
            f"{self.finetune_epoch_seconds:.1f}s + evaluation {self.evaluation_seconds:.1f}s = "
            f"{self.predicted_seconds / 60:.1f} min, {verdict}"
        )

    def to_dict(self) -> dict:
        return dict(asdict(self), fits=self.fits)


def caching_seconds(times: StepTimes, work: Workload, train_images: int, views: int, partial: int = 0) -> float:
    """The backbone over every cached row the store lacks: each training image's views, and val once.

    ``partial`` images get augmented view ``views + 1`` too; the store's share of that view is taken
    as covering the same share of them.
    """
    if not work.cache_features:
        return 0.0
    clean = work.train_rows_to_compute(train_images, 0) + work.val_images * work.to_compute(work.stored_val)
    augmented = sum(work.train_rows_to_compute(train_images, view) for view in range(1, 1 + views))
    if partial:
        augmented += work.train_rows_to_compute(partial, views + 1)
    return clean * times.backbone_seconds_per_image + augmented * times.augmented_view_seconds


def head_epoch_seconds(times: StepTimes, work: Workload, train_images: int, views: int, partial: int = 0) -> float:
    if not work.cache_features:  # every epoch runs the backbone over train and val
        return (train_images + work.val_images) * times.backbone_seconds_per_image
    return math.ceil((train_images * (1 + views) + partial) / work.batch_size) * times.head_seconds_per_step


def evaluation_seconds(times: StepTimes, work: Workload, *, val_on_images: bool) -> float:
    """``val_on_images``: val's cached features do not fit the model (no phase 1 or cache, or phase 2 ran)."""
    images: float
    if val_on_images:  # the model may not be the store's: every image goes through it
        images = work.val_images + work.holdout_images + work.predict_images + work.reference_images
    else:
        images = work.holdout_images * work.to_compute(work.stored_holdout) + work.predict_images
    return images * times.backbone_seconds_per_image + work.overhead_seconds


def _val_on_images(work: Workload, head_epochs: int, finetune_epochs: int) -> bool:
    return finetune_epochs > 0 or head_epochs == 0 or not work.cache_features


def finetune_epoch_seconds(times: StepTimes, work: Workload, train_images: int) -> float:
    return (
        math.ceil(train_images / work.batch_size) * times.finetune_seconds_per_step
        + work.val_images * times.backbone_seconds_per_image
    )


def _plan(
    budget: float,
    times: StepTimes,
    work: Workload,
    train_images: int,
    views: int,
    head: int,
    max_finetune_epochs: int,
    partial: int = 0,
) -> Plan:
    """Phase 2 gets what the rest leaves; everything else is given.

    Phase 2 costs its epochs, phase 1's baseline on val and, since it changes the backbone, val's
    evaluation on the images (without it, val is scored from the cache).
    """
    caching = caching_seconds(times, work, train_images, views, partial) if head > 0 else 0.0
    head_epoch = head_epoch_seconds(times, work, train_images, views, partial)
    finetune_epoch = finetune_epoch_seconds(times, work, train_images)
    baseline = work.val_images * times.backbone_seconds_per_image
    without_phase2 = evaluation_seconds(times, work, val_on_images=_val_on_images(work, head, 0))
    with_phase2 = evaluation_seconds(times, work, val_on_images=True)
    room = budget - without_phase2 - caching - head * head_epoch - baseline - (with_phase2 - without_phase2)
    finetune = 0
    if max_finetune_epochs > 0 and room >= finetune_epoch:
        finetune = min(max_finetune_epochs, math.floor(room / finetune_epoch))
    evaluation = with_phase2 if finetune else without_phase2
    predicted = evaluation + caching + head * head_epoch + (baseline + finetune * finetune_epoch if finetune else 0.0)
    return Plan(
        budget,
        train_images,
        views,
        head,
        finetune,
        caching,
        evaluation,
        head_epoch,
        finetune_epoch,
        baseline,
        predicted,
        subsampled=train_images < work.train_images,
        partial_view_images=partial,
    )


def _affordable_head_epochs(
    budget: float, times: StepTimes, work: Workload, train_images: int, views: int, max_head_epochs: int
) -> int:
    evaluation = evaluation_seconds(times, work, val_on_images=not work.cache_features)
    left = budget - evaluation - caching_seconds(times, work, train_images, views)
    epoch = head_epoch_seconds(times, work, train_images, views)
    if left < 0:
        return 0
    return max_head_epochs if epoch == 0 else min(max_head_epochs, math.floor(left / epoch))


def _affordable_partial_view(budget: float, times: StepTimes, work: Workload, views: int, head: int) -> int:
    """How many training images the time left after ``head`` epochs on ``views`` views buys one more view for."""
    evaluation = evaluation_seconds(times, work, val_on_images=False)

    def fits(partial: int) -> bool:
        spent = caching_seconds(times, work, work.train_images, views, partial)
        return evaluation + spent + head * head_epoch_seconds(times, work, work.train_images, views, partial) <= budget

    return _largest_true(fits, 0, work.train_images)


def plan_budget(
    budget_seconds: float,
    times: StepTimes,
    work: Workload,
    *,
    max_head_epochs: int,
    max_finetune_epochs: int,
    min_head_epochs: int = MIN_HEAD_EPOCHS,
) -> Plan:
    """The most valuable plan that fits (module docstring); raises ``BudgetTooSmall`` when none comes close."""
    if not budget_seconds > 0:
        raise ValueError(f"time budget must be positive, got {budget_seconds} s")
    if work.batch_size < 1 or work.train_images < 1:
        raise ValueError(f"workload needs >= 1 training image and batch size, got {work}")
    if max_head_epochs == 0:  # phase 2 only: nothing to cache, nothing to subsample
        return _plan(budget_seconds, times, work, work.train_images, 0, 0, max_finetune_epochs)
    floor_epochs = min(min_head_epochs, max_head_epochs)
    views_allowed = work.augmented_views if work.cache_features else 0
    for views in range(views_allowed, -1, -1):  # (1) + (2): the most views that leave the floor of head epochs
        head = _affordable_head_epochs(budget_seconds, times, work, work.train_images, views, max_head_epochs)
        if head >= floor_epochs:  # (3) head epochs up to the maximum, (4) part of the next view, (5) phase 2
            partial = _affordable_partial_view(budget_seconds, times, work, views, head) if views < views_allowed else 0
            return _plan(budget_seconds, times, work, work.train_images, views, head, max_finetune_epochs, partial)
    # Nothing fits on the whole training split: the largest stratified subsample that does.
    smallest = min(work.train_images, max(1, work.min_train_images))

    def fits_floor(n: int) -> bool:
        return _affordable_head_epochs(budget_seconds, times, work, n, 0, max_head_epochs) >= floor_epochs

    if fits_floor(smallest):
        size = _largest_true(fits_floor, smallest, work.train_images)
        head = _affordable_head_epochs(budget_seconds, times, work, size, 0, max_head_epochs)
        return _plan(budget_seconds, times, work, size, 0, head, 0)
    return _smallest_plan(budget_seconds, times, work, smallest, floor_epochs)


def _smallest_plan(budget_seconds: float, times: StepTimes, work: Workload, smallest: int, floor_epochs: int) -> Plan:
    """The smallest run worth training, or ``BudgetTooSmall`` naming what it needs.

    That run is ``smallest`` images, the clean view and the floor of head epochs: fewer epochs or
    images buy a model that no one would release, so the run is refused up front instead.
    """
    minimum = _plan(budget_seconds, times, work, smallest, 0, floor_epochs, 0)
    if minimum.predicted_seconds > budget_seconds * (1 + TOLERANCE):
        needed = math.ceil(minimum.predicted_seconds / 60 / (1 + TOLERANCE) * 10) / 10
        after = f" + {work.predict_images} scored after training" if work.predict_images else ""
        raise BudgetTooSmall(
            f"train.time_budget_minutes: {budget_seconds / 60:.1f} min left cannot fit even the smallest run "
            f"({smallest} training image(s), no augmented views, {floor_epochs} head epoch(s), no fine-tuning, "
            f"evaluation of "
            f"{work.val_images} val + {work.holdout_images} holdout image(s){after}): it needs "
            f"{minimum.predicted_seconds / 60:.1f} min at the measured "
            f"{times.backbone_seconds_per_image * 1e3:.1f} ms/image. Give at least "
            f"{needed:.1f} min after start-up, or use a smaller image size or dataset.",
            needed_seconds=needed * 60,
        )
    return minimum


def finetune_epochs_left(plan: dict, *, seconds_left: float, phase1_seconds: float, head_epochs_run: int) -> int:
    """How many of the planned fine-tune epochs still fit once phase 1 is done.

    The host may have been slower than measured (another job took the cores): phase 1's actual
    over predicted seconds (at least 1) scales what is left to do, evaluation and the baseline
    included, so a slow host drops phase 2 rather than overrunning the budget. Phase 1's fixed
    start (``FIT_START_SECONDS``) is part of the prediction, so that a small job's start-up is not
    taken for a slow host.
    """
    predicted = plan["caching_seconds"] + head_epochs_run * plan["head_epoch_seconds"] + FIT_START_SECONDS
    slowdown = max(1.0, phase1_seconds / predicted)
    room = seconds_left / slowdown - plan["evaluation_seconds"] - plan["finetune_baseline_seconds"]
    if plan["finetune_epochs"] == 0 or room < plan["finetune_epoch_seconds"]:
        return 0
    return min(plan["finetune_epochs"], math.floor(room / plan["finetune_epoch_seconds"]))


def _largest_true(predicate, low: int, high: int) -> int:
    """The largest n in [low, high] with ``predicate(n)``, for a predicate true at ``low`` that turns false once."""
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if predicate(middle) else (low, middle - 1)
    return low


def measure_step_times(bundle, cfg, prepared, *, batches: int = 2, finetune: bool = True) -> StepTimes:
    """Time a few real steps of each kind (after one untimed warm-up); the weights are put back.

    ``finetune=False`` skips the fine-tune step (seconds each on a CPU) and reports 0 for it.
    """

    def clock(step, n):
        step()  # warm-up: tracing and first-call allocation are not steady-state cost
        started = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - started) / n

    batch = cfg.train.batch_size
    images = pipeline.make_dataset(
        prepared.paths("train"),
        image_size=cfg.model.image_size,
        batch_size=batch,
        codes=prepared.codes("train"),
        tags=prepared.tags("train"),
        category_output=cfg.data.category_column,
    )
    x, y = next(iter(images))
    n_images = int(x.shape[0])
    saved = bundle.model.get_weights()
    prefixes = cfg.train.finetune_layer_prefixes or LAST_BLOCK_PREFIXES[cfg.model.backbone]
    try:
        per_image = clock(lambda: bundle.feature_extractor(x, training=False), batches) / n_images
        per_augmented = 0.0
        if bundle.augmenter is not None and cached_views(cfg) > 0:

            def augmented_pass():
                return bundle.feature_extractor(bundle.augmenter(x, training=True), training=False)

            per_augmented = clock(augmented_pass, batches) / n_images
        features = np.random.default_rng(0).normal(size=(batch, feature_dim(bundle))).astype(np.float32)
        head_y = {k: np.resize(np.asarray(v), (batch, *np.asarray(v).shape[1:])) for k, v in y.items()}
        finetune_step = 0.0
        if finetune:
            set_trainable(bundle, "finetune", prefixes)
            compile_for(bundle.model, cfg, prepared, 1e-9)
            # A partial batch costs less than a full one: scale to the configured batch size.
            finetune_step = clock(lambda: bundle.model.train_on_batch(x, y), batches) * batch / n_images
        set_trainable(bundle, "head", prefixes)
        compile_for(bundle.head, cfg, prepared, 1e-9)
        head_step = clock(lambda: bundle.head.train_on_batch(features, head_y), batches)
    finally:
        bundle.model.set_weights(saved)
    return StepTimes(per_image, head_step, finetune_step, per_augmented)


def finetune_step_lower_bound(times: StepTimes, batch_size: int) -> float:
    """A training step costs at least the forward pass of its batch: phase 2 can be ruled out unmeasured."""
    return times.backbone_seconds_per_image * batch_size


def stored_shares(store: FeatureStore, cfg, prepared, views: int) -> dict:
    """The share of each split's entries the store already holds (``Workload``'s ``stored_*`` fields)."""

    def share(split: str, view: int) -> float:
        hashes = image_hashes(prepared, split, cfg.data.id_column)
        return sum(store.entry(h, view, cfg.seed).is_file() for h in hashes) / len(hashes) if hashes else 0.0

    return {
        "stored_train_views": tuple(share("train", view) for view in range(1 + views)),
        "stored_val": share("val", 0),
        "stored_holdout": share("holdout", 0),
    }


def workload(cfg, prepared, stored: dict | None = None) -> Workload:
    """What ``vinted train`` does with the backbone, from the config, the splits and ``stored_shares``.

    Under ``time_budget_scope: main_job`` the rest of ``make all`` is priced too (``main_job_after_training``).
    """
    n_categories = len(prepared.vocab.categories)
    holdout = len(prepared.paths("holdout"))
    after_images, reference, after_seconds = (
        main_job_after_training(cfg, holdout) if cfg.train.time_budget_scope == "main_job" else (0, 0, 0.0)
    )
    return Workload(
        train_images=len(prepared.paths("train")),
        val_images=len(prepared.paths("val")),
        holdout_images=holdout,
        batch_size=cfg.train.batch_size,
        augmented_views=cached_views(cfg),
        cache_features=cfg.train.cache_features,
        predict_images=after_images,
        reference_images=reference,
        overhead_seconds=OVERHEAD_SECONDS + after_seconds,
        min_train_images=min(len(prepared.paths("train")), MIN_IMAGES_PER_CATEGORY * n_categories),
        **(stored or {}),
    )


# Measured on the demo set (docs/experiments.md): saving model.keras, figures and the tracing of
# each fit/evaluate, not proportional to the images.
OVERHEAD_SECONDS = 20.0
# What `make all` spends after training besides backbone passes: three processes' start-up, the
# export's save and warm-up file, the gate's baselines and its server subprocess. 45 s measured on
# the simulated AVX2-only CPU (docs/experiments.md), plus a third for slower hosts.
MAIN_JOB_FIXED_SECONDS = 60.0


def main_job_after_training(cfg, holdout_images: int) -> tuple[int, int, float]:
    """(backbone images, reference images, fixed seconds) of what ``make all`` runs after ``vinted train``.

    ``vinted predict`` scores test.parquet; ``vinted release`` scores the held-out split with the
    candidate and, once a version is served, with that version too; ``vinted export`` scores up to
    ``monitoring.reference_images`` held-out images for the reference statistics when training did
    not write them (``Workload.reference_images``).
    """
    try:
        test = len(read_test_ids(cfg.data))
    except (OSError, ValueError):  # no test file: `vinted predict` fails on its own, with its message
        test = 0
    gate = holdout_images * (2 if existing_versions(served_root(cfg)) else 1)
    reference = min(cfg.monitoring.reference_images, holdout_images)
    return test + gate, reference, MAIN_JOB_FIXED_SECONDS


def plan_run(bundle, cfg, prepared, *, elapsed_seconds: float, agree=None):
    """Measure, plan, log; return (``cfg`` with the planned counts, ``prepared`` maybe subsampled, the record).

    The fine-tune step is measured only when phase 2 could fit at its lower bound (the forward
    pass), which saves its seconds-long steps on slow hosts. ``agree(values) -> values``:
    multi-worker runs pass the chief's numbers to every worker so that all of them train the
    chief's plan (``distributed.agree_with_chief``); every worker measures (the steps are collective).
    """
    started = time.perf_counter()
    work = _stored_workload(bundle, cfg, prepared, agree)

    def measured_plan(finetune: bool) -> tuple[StepTimes, float, Plan]:
        return _measured_plan(
            bundle,
            cfg,
            prepared,
            work,
            finetune=finetune,
            spent_before=elapsed_seconds + (time.perf_counter() - started),
            agree=agree,
        )

    times, spent, plan = measured_plan(finetune=False)
    finetune_measured = plan.finetune_epochs > 0
    if finetune_measured:  # phase 2 might fit: measure its real step and plan again
        times, spent, plan = measured_plan(finetune=True)
    lower_bound = "" if finetune_measured else " (lower bound, not measured)"
    log.info(
        "measured: backbone %.1f ms/image, head step %.1f ms, fine-tune step %.0f ms%s, augmented view %.1f "
        "ms/image; %.0fs already spent",
        *(seconds * 1e3 for seconds in astuple_times(times)[:3]),
        lower_bound,
        times.augmented_view_seconds * 1e3,
        spent,
    )
    (log.info if plan.fits else log.warning)("plan: %s", plan.describe())
    planned = cfg.model_copy(deep=True)
    planned.train.head_epochs, planned.train.finetune_epochs = plan.head_epochs, plan.finetune_epochs
    planned.train.cached_augmented_views = plan.augmented_views
    planned.train.partial_view_share = plan.partial_view_share
    if plan.subsampled:
        prepared = subsample_train(prepared, plan.train_images, cfg.seed)
        log.warning(
            "time budget: training on a stratified subsample of %d of %d training images (val and holdout are whole)",
            plan.train_images,
            work.train_images,
        )
    return planned, prepared, _record(cfg, work, plan, times, finetune_measured, spent)


def _stored_workload(bundle, cfg, prepared, agree) -> Workload:
    """The workload less what the feature store holds; across workers, the chief's store decides."""
    if not cfg.train.cache_features:
        return workload(cfg, prepared)
    work = workload(cfg, prepared, stored_shares(open_store(bundle, cfg), cfg, prepared, cached_views(cfg)))
    if agree is not None:
        *views, val, holdout = agree([*work.stored_train_views, work.stored_val, work.stored_holdout])
        work = replace(work, stored_train_views=tuple(views), stored_val=val, stored_holdout=holdout)
    if any(work.stored_train_views) or work.stored_val or work.stored_holdout:
        log.info(
            "time budget: the feature store already holds %s of the training views, %.0f%% of val and %.0f%% of "
            "holdout; their backbone passes are not planned",
            ", ".join(f"{share:.0%}" for share in work.stored_train_views),
            work.stored_val * 100,
            work.stored_holdout * 100,
        )
    return work


def _record(cfg, work: Workload, plan: Plan, times: StepTimes, finetune_measured: bool, spent: float) -> dict:
    """The plan as ``run.json`` records it, with what was asked for."""
    requested = {
        "augmented_views": work.augmented_views,
        "head_epochs": cfg.train.head_epochs,
        "finetune_epochs": cfg.train.finetune_epochs,
        "train_images": work.train_images,
    }
    return {
        "scope": cfg.train.time_budget_scope,
        "after_training_images": work.predict_images,
        "reference_images_unless_stored": work.reference_images,
        "plan": plan.to_dict(),
        "step_times": asdict(times),
        "finetune_step_measured": finetune_measured,
        "seconds_before_plan": round(spent, 1),
        "requested": requested,
        "stored": {
            "train_views": list(work.stored_train_views),
            "val": work.stored_val,
            "holdout": work.stored_holdout,
        },
    }


def _measured_plan(
    bundle, cfg, prepared, work: Workload, *, finetune: bool, spent_before: float, agree
) -> tuple[StepTimes, float, Plan]:
    """Time the steps (the fine-tune one only when ``finetune``, else its lower bound) and plan the time left.

    ``spent_before`` is the run's time before measuring; returns (times, seconds spent, plan).
    """
    started = time.perf_counter()
    times = measure_step_times(bundle, cfg, prepared, finetune=finetune)
    if not finetune:
        times = replace(times, finetune_seconds_per_step=finetune_step_lower_bound(times, work.batch_size))
    spent = spent_before + (time.perf_counter() - started)
    if agree is not None:
        *numbers, spent = agree([*astuple_times(times), spent])
        times = StepTimes(*numbers)
    budget = cfg.train.time_budget_minutes * 60 - spent
    if budget <= 0:
        since = "since train.time_budget_started_at" if cfg.train.time_budget_started_at else "start-up and measuring"
        raise BudgetTooSmall(
            f"train.time_budget_minutes={cfg.train.time_budget_minutes}: {since} already took {spent / 60:.1f} min"
        )
    try:
        plan = plan_budget(
            budget, times, work, max_head_epochs=cfg.train.head_epochs, max_finetune_epochs=cfg.train.finetune_epochs
        )
    except BudgetTooSmall as refused:
        if cfg.train.time_budget_scope != "main_job" or refused.needed_seconds is None:
            raise
        job = math.ceil((spent + refused.needed_seconds) / 60)
        raise BudgetTooSmall(
            f"{refused} With the {spent / 60:.1f} min the job has run so far: make all MAIN_JOB_MINUTES={job}.",
            refused.needed_seconds,
        ) from None
    return times, spent, plan


def astuple_times(times: StepTimes) -> tuple[float, float, float, float]:
    return (
        times.backbone_seconds_per_image,
        times.head_seconds_per_step,
        times.finetune_seconds_per_step,
        times.augmented_seconds_per_image,
    )


def subsample_train(prepared, size: int, seed: int):
    """``prepared`` with the training split cut to a stratified ``size`` rows; val and holdout unchanged."""
    rows = stratified_subsample(prepared.codes("train"), size, seed)
    frames = dict(prepared.frames, train=prepared.frames["train"].iloc[rows].reset_index(drop=True))
    return replace(prepared, frames=frames)
