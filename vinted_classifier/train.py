"""Two-phase training of the multi-task model, with feature caching, resume and evaluation.

Phase 1 trains the heads on a frozen backbone. When ``train.cache_features`` is on,
backbone features are computed once (plus a fixed number of augmented views) into an
on-disk cache (``features.py``) and the head trains on those vectors: the same result as
re-running the frozen backbone every epoch, many times faster, in flat memory. Phase 2
unfreezes the last conv block at a low learning rate.

Interrupted runs resume: phase 1 leaves a marker and weights when done; Keras
BackupAndRestore restores mid-phase state on the next run with the same run name.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, pipeline, progress
from .config import RunConfig
from .distributed import agreement, barrier, cluster_from_env, local_model, make_strategy, shard_by_data, worker_run_dir
from .distributed import scope as distribution_scope
from .utils import package_versions, set_seed, write_json

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float


def _callbacks(cfg: RunConfig, run_dir: Path, phase: str, *, checkpoint: bool, baseline: float | None = None):
    """``baseline``: the value to beat (phase 1's, in phase 2), for early stopping and the checkpoint."""
    import keras

    monitor, mode = cfg.train.monitor, cfg.train.monitor_mode
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / phase), delete_checkpoint=True),
        keras.callbacks.CSVLogger(str(run_dir / f"history_{phase}.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / phase), write_graph=False, profile_batch=0),
    ]
    if cfg.train.verbose >= 1:
        callbacks.append(progress.epoch_line_callback(phase, cfg.data.category_column))
        if progress.lines_enabled():
            callbacks.append(progress.fit_lines_callback(phase))
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=cfg.train.early_stopping_patience, restore_best_weights=True,
            baseline=baseline))
    if checkpoint:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(run_dir / "best_checkpoint.keras"), monitor=monitor, mode=mode, save_best_only=True,
            initial_value_threshold=baseline))
    return callbacks


def _keras_verbose(cfg: RunConfig) -> int:
    """Keras's own per-batch bar only at train.verbose=2; at 1 the epoch-line callback speaks."""
    return 1 if cfg.train.verbose >= 2 else 0


def _image_dataset(cfg: RunConfig, prepared: data.PreparedData, split: str, *, training: bool):
    weights = None
    if training and cfg.data.class_weights:
        per_class = data.class_weights(prepared.codes(split), len(prepared.vocab.categories))
        weights = per_class[prepared.codes(split)]
    return shard_by_data(pipeline.make_dataset(
        prepared.paths(split), image_size=cfg.model.image_size, batch_size=cfg.train.batch_size,
        codes=prepared.codes(split), tags=prepared.tags(split), category_output=cfg.data.category_column,
        sample_weights=weights, shuffle=training, seed=cfg.seed))


def _compile(bundle_model, cfg: RunConfig, prepared: data.PreparedData, learning_rate: float) -> None:
    from .model import compile_model

    compile_model(bundle_model, category_output=cfg.data.category_column, n_tags=len(prepared.vocab.tags),
                  tag_names=list(prepared.vocab.tags), learning_rate=learning_rate,
                  loss_weights=cfg.train.loss_weights, label_smoothing=cfg.train.label_smoothing)


def feature_store(bundle, cfg: RunConfig):
    """The shared, content-addressed feature store for this model (``features.FeatureStore``)."""
    import keras

    from .features import FeatureStore, model_key

    return FeatureStore(cfg.feature_cache_root, model_key(
        bundle, backbone=cfg.model.backbone, image_size=cfg.model.image_size, pooling=cfg.model.pooling,
        precision=keras.mixed_precision.global_policy().name))


def image_hashes(prepared: data.PreparedData, split: str, id_column: str) -> list[str]:
    """Each row's image content hash (recorded by the image check; hashed here where it was not)."""
    from .features import file_hash

    known = prepared.image_report.hashes
    frame = prepared.frames[split]
    return [known.get(uuid) or file_hash(path) for uuid, path in zip(frame[id_column], frame["path"])]


def cache_features(bundle, cfg: RunConfig, prepared: data.PreparedData, folder: Path,
                   splits: tuple[str, ...] = ("train", "val"), counts: dict | None = None) -> dict:
    """Frozen-backbone features of ``splits`` (train: plus augmented views) joined into files in ``folder``.

    The vectors come from the shared store (``feature_store``): only images it lacks go through the
    backbone, so phase 1, the hyperparameter search, CV and later runs on the same images compute
    each image's features once. ``counts`` (if given) receives how many were computed and reused.
    """
    from .features import cached_features, enforce_size_cap

    started = time.perf_counter()
    store = feature_store(bundle, cfg)
    views = cfg.train.cached_augmented_views if cfg.model.augment else 0
    log.info("caching backbone features: %d train image(s) x %d view(s), %d val (store %s)",
             len(prepared.paths("train")), 1 + views, len(prepared.paths("val")), store.folder)
    caches = {}
    for split in splits:
        split_views = views if split == "train" else 0
        n_images = len(prepared.paths(split))
        # When the rows fit the reader's shuffle buffer, every epoch is an exact full shuffle. When
        # they do not, the rows are written in a random order, so that the bounded buffer draws
        # from rows already shuffled.
        order = None
        if split == "train" and n_images * (1 + split_views) > cfg.train.feature_shuffle_buffer:
            order = np.random.default_rng(cfg.seed).permutation(n_images)
        caches[split] = cached_features(
            bundle, store, folder / f"{split}.f32", prepared.paths(split),
            image_hashes(prepared, split, cfg.data.id_column), prepared.codes(split), prepared.tags(split),
            views=split_views, seed=cfg.seed, image_size=cfg.model.image_size, batch_size=cfg.train.batch_size,
            order=order, desc=f"caching {split}")
    enforce_size_cap(cfg.feature_cache_root, int(cfg.train.feature_cache_max_gb * 2**30))
    log.info("cached features: %s rows, dim %d in %.1fs (%d vector(s) computed, %d reused from the store)",
             {s: c.rows for s, c in caches.items()}, caches[splits[0]].feature_dim, time.perf_counter() - started,
             store.computed, store.reused)
    if counts is not None:
        counts.update(computed=counts.get("computed", 0) + store.computed,
                      reused=counts.get("reused", 0) + store.reused, store=str(store.folder))
    return caches


def _train_head_on_cached_features(bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path,
                                   counts: dict | None = None) -> dict:
    """Phase 1 with cached features: the backbone runs once per (view of an) image, not per epoch."""
    from .features import feature_dataset

    category = cfg.data.category_column
    caches = cache_features(bundle, cfg, prepared, run_dir / "feature_cache", counts=counts)
    class_weights = None
    if cfg.data.class_weights:
        class_weights = data.class_weights(prepared.codes("train"), len(prepared.vocab.categories))
    common = dict(batch_size=cfg.train.batch_size, category_output=category)
    _compile(bundle.head, cfg, prepared, cfg.train.head_learning_rate)
    history = bundle.head.fit(
        shard_by_data(feature_dataset(caches["train"], shuffle_buffer=cfg.train.feature_shuffle_buffer,
                                      seed=cfg.seed, class_weights=class_weights, **common)),
        validation_data=shard_by_data(feature_dataset(caches["val"], **common)),
        epochs=cfg.train.head_epochs, callbacks=_callbacks(cfg, run_dir, "head", checkpoint=False),
        shuffle=False, verbose=_keras_verbose(cfg))  # the datasets shuffle themselves
    return history.history


def _fit_full_model(bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path, *, phase: str,
                    epochs: int, learning_rate, baseline: float | None = None) -> dict:
    _compile(bundle.model, cfg, prepared, learning_rate)
    history = bundle.model.fit(
        _image_dataset(cfg, prepared, "train", training=True),
        validation_data=_image_dataset(cfg, prepared, "val", training=False),
        epochs=epochs, callbacks=_callbacks(cfg, run_dir, phase, checkpoint=phase == "finetune", baseline=baseline),
        shuffle=False, verbose=_keras_verbose(cfg))  # the datasets shuffle themselves
    return history.history


def _phase1_value(bundle, cfg: RunConfig, prepared: data.PreparedData) -> float:
    """Phase 1's monitored value, measured on the full model exactly as phase 2 will measure its epochs."""
    monitor = cfg.train.monitor
    if not monitor.startswith("val_"):
        raise ValueError(f"train.monitor={monitor!r}: phase 2 compares validation metrics (val_...) with phase 1")
    _compile(bundle.model, cfg, prepared, cfg.train.finetune_learning_rate)
    scores = bundle.model.evaluate(_image_dataset(cfg, prepared, "val", training=False), return_dict=True, verbose=0)
    if monitor[4:] not in scores:
        raise ValueError(f"train.monitor={monitor!r} is not a model metric; metrics: {sorted('val_' + k for k in scores)}")
    return float(scores[monitor[4:]])


def _run_phases(bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path, store_counts: dict,
                finetune_guard=None):
    """Train both phases; return the merged history and which phase's weights the model holds.

    ``store_counts`` receives the feature store's computed/reused vectors (phase 1 with the cache).
    ``finetune_guard(head epochs run) -> fine-tune epochs that still fit`` (a time budget) is asked
    once phase 1 is done, so that a host slower than measured drops phase 2 instead of overrunning.
    """
    from .experiments.phases import choose_phase, kept_epoch, warmup_learning_rate, warmup_steps
    from .model import LAST_BLOCK_PREFIXES, set_trainable

    prefixes = cfg.train.finetune_layer_prefixes or LAST_BLOCK_PREFIXES[cfg.model.backbone]
    history: dict[str, list] = {}
    done_marker, phase1_weights = run_dir / "phase1.done", run_dir / "phase1.weights.h5"
    if done_marker.is_file() and phase1_weights.is_file():
        log.info("resuming: phase 1 already finished, loading %s", phase1_weights)
        bundle.model.load_weights(phase1_weights)
        history = json.loads(done_marker.read_text())
    elif cfg.train.head_epochs > 0:
        counts = set_trainable(bundle, "head", prefixes)
        log.info("phase 1 (frozen backbone): %s", counts)
        if cfg.train.cache_features:
            history = _train_head_on_cached_features(bundle, cfg, prepared, run_dir, store_counts)
        else:
            history = _fit_full_model(bundle, cfg, prepared, run_dir, phase="head",
                                      epochs=cfg.train.head_epochs, learning_rate=cfg.train.head_learning_rate)
        bundle.model.save_weights(phase1_weights)
        done_marker.write_text(json.dumps(_jsonable(history)))
        # Only a resumed phase 1 reuses the cache; once it is done the files are just disk.
        shutil.rmtree(run_dir / "feature_cache", ignore_errors=True)
    if cfg.train.finetune_epochs > 0 and finetune_guard is not None:
        affordable = finetune_guard(len(history.get("loss", [])))
        if affordable < cfg.train.finetune_epochs:
            log.warning("time budget: phase 1 ran slower than planned; %d of the %d planned fine-tune epoch(s) "
                        "still fit", affordable, cfg.train.finetune_epochs)
            cfg = cfg.model_copy(deep=True)
            cfg.train.finetune_epochs = affordable
    monitor, mode = cfg.train.monitor, cfg.train.monitor_mode
    head_value = None
    if phase1_weights.is_file() and cfg.train.finetune_epochs == 0:
        restored = cfg.train.early_stopping_patience > 0
        head_value = kept_epoch(history.get(monitor, []), mode, restored_best=restored)[1]
    elif phase1_weights.is_file():
        head_value = _phase1_value(bundle, cfg, prepared)
    if cfg.train.finetune_epochs > 0:
        counts = set_trainable(bundle, "finetune", prefixes)
        log.info("phase 2 (fine-tune %s): %s; to beat: phase 1's %s=%s", prefixes, counts, monitor, head_value)
        steps = warmup_steps(cfg.train.finetune_warmup_epochs, len(prepared.paths("train")), cfg.train.batch_size)
        tuned = _fit_full_model(bundle, cfg, prepared, run_dir, phase="finetune", epochs=cfg.train.finetune_epochs,
                                learning_rate=warmup_learning_rate(cfg.train.finetune_learning_rate, steps),
                                baseline=head_value)
        history = {key: history.get(key, []) + tuned.get(key, []) for key in {*history, *tuned}}
        choice = choose_phase(monitor, mode, head_value, tuned.get(monitor, []))
        # The checkpoint holds the best fine-tune epoch that beat phase 1 (it starts from phase 1's value).
        checkpoint = run_dir / "best_checkpoint.keras"
        if choice.kept_phase == "finetune" and checkpoint.is_file():
            bundle.model.load_weights(checkpoint)
        elif choice.kept_phase == "head":
            bundle.model.load_weights(phase1_weights)
    else:
        choice = choose_phase(monitor, mode, head_value, [])
    log.info("best model: %s", choice.describe())
    return history, choice


def _finetune_guard(budget: dict, *, deadline: float, agree=None):
    """``head epochs run -> fine-tune epochs that fit`` from the time actually left (recorded in ``budget``)."""
    from .experiments.budget import finetune_epochs_left

    phase1_started = time.perf_counter()

    def guard(head_epochs_run: int) -> int:
        now = time.perf_counter()
        left, phase1 = deadline - now, now - phase1_started
        if agree is not None:  # the chief's clock decides for every worker
            left, phase1 = agree([left, phase1])
        epochs = finetune_epochs_left(budget["plan"], seconds_left=left, phase1_seconds=phase1,
                                      head_epochs_run=head_epochs_run)
        budget["after_phase1"] = {"seconds_left": round(left, 1), "phase1_seconds": round(phase1, 1),
                                  "finetune_epochs": epochs}
        return epochs

    return guard


def _jsonable(history: dict) -> dict:
    return {key: [float(v) for v in values] for key, values in history.items()}


@progress.quiet_when_not_verbose
def train(cfg: RunConfig) -> TrainResult:
    """Train, pick the best epoch, tune thresholds, evaluate; write everything to the run folder."""
    import keras

    from .evaluate.run import evaluate_splits
    from .model import build_model
    from .precision import detect_hardware, resolve_precision, set_precision

    started = time.perf_counter()
    cluster = cluster_from_env()  # TF_CONFIG; the strategy must exist before any other TensorFlow op
    strategy = make_strategy(cluster)
    run_dir = worker_run_dir(cfg.run_dir, cluster)  # only the chief writes cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    set_seed(cfg.seed, deterministic=cfg.train.deterministic)
    hardware = detect_hardware()
    policy = resolve_precision(cfg.train.precision, hardware)
    set_precision(policy)
    log.info("precision policy: %s", policy)

    prepared = data.prepare(cfg.data, cfg.seed)
    log.info("data: %s; splits %s", prepared.duplicates, {k: len(v) for k, v in prepared.frames.items()})
    with distribution_scope(strategy, hardware):
        bundle = build_model(cfg.model, list(prepared.vocab.categories), list(prepared.vocab.tags),
                             category_output=cfg.data.category_column)
        log.info("weights source: %s", bundle.weights_source)
        budget = None
        if cfg.train.time_budget_minutes is not None:
            from .experiments.budget import plan_run

            cfg, prepared, budget = plan_run(bundle, cfg, prepared, elapsed_seconds=time.perf_counter() - started,
                                             agree=agreement(strategy, cluster))
        feature_counts: dict = {}
        guard = None
        if budget is not None:
            guard = _finetune_guard(budget, deadline=started + cfg.train.time_budget_minutes * 60,
                                    agree=agreement(strategy, cluster))
        history, phase_choice = _run_phases(bundle, cfg, prepared, run_dir, feature_counts, guard)
    train_seconds = time.perf_counter() - started
    if not cluster.is_chief:  # trained in sync with the chief, which writes the run; drop the scratch folder
        shutil.rmtree(run_dir, ignore_errors=True)
        barrier(strategy)  # until the chief has written the run
        return TrainResult(run_dir=cfg.run_dir, metrics={}, history=history, seconds=train_seconds)
    bundle.model.save(run_dir / "model.keras")
    evaluated = local_model(bundle.model, run_dir / "model.keras", strategy)  # chief only: no collectives
    metrics, labels = evaluate_splits(evaluated, cfg, prepared, figures_dir=run_dir / "figures", history=history)
    labels.save(run_dir / "labels.json")
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", _jsonable(history))
    write_json(run_dir / "run.json", {
        "run_name": cfg.run_name, "seed": cfg.seed, "weights_source": bundle.weights_source,
        "precision_policy": policy, "hardware": hardware, "package_versions": package_versions(),
        "keras_backend": keras.backend.backend(), "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1), "duplicates": prepared.duplicates,
        "split_sizes": {k: len(v) for k, v in prepared.frames.items()}, "splits_file": str(prepared.splits_file),
        "image_report": prepared.image_report.describe(), "best_model": phase_choice.to_dict(),
        "deterministic": cfg.train.deterministic, "time_budget": budget, "feature_store": feature_counts or None,
    })
    for stale in ("phase1.done", "phase1.weights.h5", "best_checkpoint.keras"):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # BackupAndRestore leaves its folder, empty
    barrier(strategy)  # the other workers wait for the run to be written
    result = TrainResult(run_dir=run_dir, metrics=metrics, history=history, seconds=time.perf_counter() - started)
    if cfg.tracking.enabled:
        from .experiments.tracking import log_training

        log_training(cfg, result)
    return result
