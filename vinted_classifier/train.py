"""Two-phase training of the multi-task model, with feature caching, resume and evaluation.

Phase 1 trains the heads on a frozen backbone. When ``train.cache_features`` is on,
backbone features are computed once (plus a fixed number of augmented views) into an
on-disk cache (``features.py``) and the head trains on those vectors: the same result as
re-running the frozen backbone every epoch, many times faster, in flat memory. Phase 2
unfreezes the last conv block at a low learning rate.

Interrupted runs resume: phase 1 leaves a marker and weights when done; Keras
BackupAndRestore restores mid-phase state on the next run with the same run name.

The set-up (seed, precision, data, model, features) is ``experiments.setup.Experiment``,
shared with ``vinted search`` and ``vinted cv``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from . import data, pipeline, progress
from .config import RunConfig
from .contract import LABELS_FILE, MODEL_FILE
from .distributed import agreement, barrier, cluster_from_env, local_model, make_strategy, shard_by_data, worker_run_dir
from .distributed import scope as distribution_scope
from .evaluate.run import evaluate_splits
from .experiments.budget import finetune_epochs_left, plan_run
from .experiments.phases import PhaseChoice, choose_phase, kept_epoch, warmup_learning_rate, warmup_steps
from .experiments.setup import Experiment, cache_splits, class_weights, compile_for, store_scorer
from .experiments.tracking import log_training
from .features import feature_dataset
from .model import LAST_BLOCK_PREFIXES, set_trainable
from .monitoring.reference import write_run_reference
from .utils import package_versions, write_json

log = logging.getLogger(__name__)


# Phase 1's leftovers: what a resumed run picks up, deleted once the run is written.
PHASE1_DONE = "phase1.done"
PHASE1_WEIGHTS = "phase1.weights.h5"
BEST_CHECKPOINT = "best_checkpoint.keras"


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float


@dataclass
class _Trained:
    """What the phases produced, for the run folder."""

    history: dict
    choice: PhaseChoice
    budget: dict | None
    feature_counts: dict
    seconds: float


def _callbacks(cfg: RunConfig, run_dir: Path, phase: str, *, checkpoint: bool, baseline: float | None = None):
    """``baseline``: the value to beat (phase 1's, in phase 2), for early stopping and the checkpoint."""
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
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=cfg.train.early_stopping_patience,
                restore_best_weights=True,
                baseline=baseline,
            )
        )
    if checkpoint:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(run_dir / BEST_CHECKPOINT),
                monitor=monitor,
                mode=mode,
                save_best_only=True,
                initial_value_threshold=baseline,
            )
        )
    return callbacks


def _keras_verbose(cfg: RunConfig) -> int:
    """Keras's own per-batch bar only at train.verbose=2; at 1 the epoch-line callback speaks."""
    return 1 if cfg.train.verbose >= 2 else 0


def _image_dataset(cfg: RunConfig, prepared: data.PreparedData, split: str, *, training: bool):
    per_class = class_weights(cfg, prepared.codes(split), len(prepared.vocab.categories)) if training else None
    weights = None if per_class is None else per_class[prepared.codes(split)]
    return shard_by_data(
        pipeline.make_dataset(
            prepared.paths(split),
            image_size=cfg.model.image_size,
            batch_size=cfg.train.batch_size,
            codes=prepared.codes(split),
            tags=prepared.tags(split),
            category_output=cfg.data.category_column,
            sample_weights=weights,
            shuffle=training,
            seed=cfg.seed,
        )
    )


def _train_head_on_cached_features(
    bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path, counts: dict | None = None
) -> dict:
    """Phase 1 with cached features: the backbone runs once per (view of an) image, not per epoch."""
    category = cfg.data.category_column
    caches = cache_splits(bundle, cfg, prepared, run_dir / "feature_cache", counts=counts)
    per_class = class_weights(cfg, prepared.codes("train"), len(prepared.vocab.categories))
    common: dict[str, Any] = dict(batch_size=cfg.train.batch_size, category_output=category)
    compile_for(bundle.head, cfg, prepared, cfg.train.head_learning_rate)
    history = bundle.head.fit(
        shard_by_data(
            feature_dataset(
                caches["train"],
                shuffle_buffer=cfg.train.feature_shuffle_buffer,
                seed=cfg.seed,
                class_weights=per_class,
                **common,
            )
        ),
        validation_data=shard_by_data(feature_dataset(caches["val"], **common)),
        epochs=cfg.train.head_epochs,
        callbacks=_callbacks(cfg, run_dir, "head", checkpoint=False),
        shuffle=False,
        verbose=_keras_verbose(cfg),
    )  # the datasets shuffle themselves
    return history.history


def _fit_full_model(
    bundle,
    cfg: RunConfig,
    prepared: data.PreparedData,
    run_dir: Path,
    *,
    phase: str,
    epochs: int,
    learning_rate,
    baseline: float | None = None,
) -> dict:
    compile_for(bundle.model, cfg, prepared, learning_rate)
    history = bundle.model.fit(
        _image_dataset(cfg, prepared, "train", training=True),
        validation_data=_image_dataset(cfg, prepared, "val", training=False),
        epochs=epochs,
        callbacks=_callbacks(cfg, run_dir, phase, checkpoint=phase == "finetune", baseline=baseline),
        shuffle=False,
        verbose=_keras_verbose(cfg),
    )  # the datasets shuffle themselves
    return history.history


def _phase1_value(bundle, cfg: RunConfig, prepared: data.PreparedData) -> float:
    """Phase 1's monitored value, measured on the full model exactly as phase 2 will measure its epochs."""
    monitor = cfg.train.monitor
    if not monitor.startswith("val_"):
        raise ValueError(f"train.monitor={monitor!r}: phase 2 compares validation metrics (val_...) with phase 1")
    compile_for(bundle.model, cfg, prepared, cfg.train.finetune_learning_rate)
    scores = bundle.model.evaluate(_image_dataset(cfg, prepared, "val", training=False), return_dict=True, verbose=0)
    if monitor[4:] not in scores:
        raise ValueError(
            f"train.monitor={monitor!r} is not a model metric; metrics: {sorted('val_' + k for k in scores)}"
        )
    return float(scores[monitor[4:]])


def _phase1(
    bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path, prefixes: list[str], store_counts: dict
) -> dict:
    """Phase 1 (frozen backbone) and its history, or both from a run interrupted after it."""
    done_marker, phase1_weights = run_dir / PHASE1_DONE, run_dir / PHASE1_WEIGHTS
    if done_marker.is_file() and phase1_weights.is_file():
        log.info("resuming: phase 1 already finished, loading %s", phase1_weights)
        bundle.model.load_weights(phase1_weights)
        return json.loads(done_marker.read_text())
    if cfg.train.head_epochs <= 0:
        return {}
    counts = set_trainable(bundle, "head", prefixes)
    log.info("phase 1 (frozen backbone): %s", counts)
    if cfg.train.cache_features:
        history = _train_head_on_cached_features(bundle, cfg, prepared, run_dir, store_counts)
    else:
        history = _fit_full_model(
            bundle,
            cfg,
            prepared,
            run_dir,
            phase="head",
            epochs=cfg.train.head_epochs,
            learning_rate=cfg.train.head_learning_rate,
        )
    bundle.model.save_weights(phase1_weights)
    done_marker.write_text(json.dumps(_jsonable(history)))
    # Only a resumed phase 1 reuses the cache; once it is done the files are just disk.
    shutil.rmtree(run_dir / "feature_cache", ignore_errors=True)
    return history


def _affordable(cfg: RunConfig, history: dict, finetune_guard) -> RunConfig:
    """``cfg`` with as many fine-tune epochs as still fit the time budget (unchanged without one)."""
    if cfg.train.finetune_epochs <= 0 or finetune_guard is None:
        return cfg
    affordable = finetune_guard(len(history.get("loss", [])))
    if affordable >= cfg.train.finetune_epochs:
        return cfg
    log.warning(
        "time budget: phase 1 ran slower than planned; %d of the %d planned fine-tune epoch(s) still fit",
        affordable,
        cfg.train.finetune_epochs,
    )
    cfg = cfg.model_copy(deep=True)
    cfg.train.finetune_epochs = affordable
    return cfg


def _head_value(bundle, cfg: RunConfig, prepared: data.PreparedData, history: dict, run_dir: Path) -> float | None:
    """Phase 1's monitored value (None without phase 1): from its history, or measured when phase 2 follows."""
    if not (run_dir / PHASE1_WEIGHTS).is_file():
        return None
    if cfg.train.finetune_epochs == 0:
        restored = cfg.train.early_stopping_patience > 0
        return kept_epoch(history.get(cfg.train.monitor, []), cfg.train.monitor_mode, restored_best=restored)[1]
    return _phase1_value(bundle, cfg, prepared)


def _phase2(
    bundle,
    cfg: RunConfig,
    prepared: data.PreparedData,
    run_dir: Path,
    prefixes: list[str],
    history: dict,
    head_value: float | None,
) -> tuple[dict, PhaseChoice]:
    """Fine-tune; keep its best epoch only if it beats phase 1 (else phase 1's weights go back)."""
    monitor, mode = cfg.train.monitor, cfg.train.monitor_mode
    counts = set_trainable(bundle, "finetune", prefixes)
    log.info("phase 2 (fine-tune %s): %s; to beat: phase 1's %s=%s", prefixes, counts, monitor, head_value)
    steps = warmup_steps(cfg.train.finetune_warmup_epochs, len(prepared.paths("train")), cfg.train.batch_size)
    tuned = _fit_full_model(
        bundle,
        cfg,
        prepared,
        run_dir,
        phase="finetune",
        epochs=cfg.train.finetune_epochs,
        learning_rate=warmup_learning_rate(cfg.train.finetune_learning_rate, steps),
        baseline=head_value,
    )
    history = {key: history.get(key, []) + tuned.get(key, []) for key in {*history, *tuned}}
    choice = choose_phase(monitor, mode, head_value, tuned.get(monitor, []))
    # The checkpoint holds the best fine-tune epoch that beat phase 1 (it starts from phase 1's value).
    checkpoint = run_dir / BEST_CHECKPOINT
    if choice.kept_phase == "finetune" and checkpoint.is_file():
        bundle.model.load_weights(checkpoint)
    elif choice.kept_phase == "head":
        bundle.model.load_weights(run_dir / PHASE1_WEIGHTS)
    return history, choice


def _run_phases(
    bundle, cfg: RunConfig, prepared: data.PreparedData, run_dir: Path, store_counts: dict, finetune_guard=None
) -> tuple[dict, PhaseChoice]:
    """Train both phases; return the merged history and which phase's weights the model holds.

    ``store_counts`` receives the feature store's computed/reused vectors (phase 1 with the cache).
    ``finetune_guard(head epochs run) -> fine-tune epochs that still fit`` (a time budget) is asked
    once phase 1 is done, so that a host slower than measured drops phase 2 instead of overrunning.
    """
    prefixes = cfg.train.finetune_layer_prefixes or LAST_BLOCK_PREFIXES[cfg.model.backbone]
    history = _phase1(bundle, cfg, prepared, run_dir, prefixes, store_counts)
    cfg = _affordable(cfg, history, finetune_guard)
    head_value = _head_value(bundle, cfg, prepared, history, run_dir)
    if cfg.train.finetune_epochs > 0:
        history, choice = _phase2(bundle, cfg, prepared, run_dir, prefixes, history, head_value)
    else:
        choice = choose_phase(cfg.train.monitor, cfg.train.monitor_mode, head_value, [])
    log.info("best model: %s", choice.describe())
    return history, choice


def _finetune_guard(budget: dict, *, deadline: float, agree=None):
    """``head epochs run -> fine-tune epochs that fit`` from the time actually left (recorded in ``budget``)."""
    phase1_started = time.perf_counter()

    def guard(head_epochs_run: int) -> int:
        now = time.perf_counter()
        left, phase1 = deadline - now, now - phase1_started
        if agree is not None:  # the chief's clock decides for every worker
            left, phase1 = agree([left, phase1])
        epochs = finetune_epochs_left(
            budget["plan"], seconds_left=left, phase1_seconds=phase1, head_epochs_run=head_epochs_run
        )
        budget["after_phase1"] = {
            "seconds_left": round(left, 1),
            "phase1_seconds": round(phase1, 1),
            "finetune_epochs": epochs,
        }
        return epochs

    return guard


def _jsonable(history: dict) -> dict:
    return {key: [float(v) for v in values] for key, values in history.items()}


def budget_clock_start(cfg: RunConfig, started: float) -> float:
    """The ``time.perf_counter()`` reading the budget counts from: the command's start (``started``), or
    ``train.time_budget_started_at`` (unix seconds; ``make all`` passes its own start) when earlier."""
    if cfg.train.time_budget_started_at is None:
        return started
    return min(started, time.perf_counter() - (time.time() - cfg.train.time_budget_started_at))


def _train_in_scope(experiment: Experiment, run_dir: Path, started: float, agree) -> tuple[Experiment, _Trained]:
    """Build, plan (under a time budget) and run the phases; the caller holds the distribution scope."""
    bundle = experiment.build_model()
    budget, guard = None, None
    if (minutes := experiment.cfg.train.time_budget_minutes) is not None:
        clock = budget_clock_start(experiment.cfg, started)
        cfg, prepared, budget = plan_run(
            bundle, experiment.cfg, experiment.prepared, elapsed_seconds=time.perf_counter() - clock, agree=agree
        )
        experiment = experiment.replaced(cfg=cfg, prepared=prepared)
        guard = _finetune_guard(budget, deadline=clock + minutes * 60, agree=agree)
    cfg = experiment.cfg
    feature_counts: dict = {}
    history, choice = _run_phases(bundle, cfg, experiment.prepared, run_dir, feature_counts, guard)
    return experiment, _Trained(history, choice, budget, feature_counts, time.perf_counter() - started)


def _remembering(scorer, into: dict):
    """``scorer`` that also keeps each split's probabilities in ``into``."""

    def score(split: str):
        into[split] = scorer(split)
        return into[split]

    return score


def _held_out_lookup(prepared: data.PreparedData, scored: tuple[np.ndarray, np.ndarray]):
    """``paths -> (category probs, tag probs)`` from the held-out scoring; None unless every path is held out."""
    rows = {Path(path).resolve(): i for i, path in enumerate(prepared.paths("holdout"))}
    p_cat, p_tags = scored

    def lookup(paths: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
        found = [rows.get(Path(path).resolve()) for path in paths]
        if any(row is None for row in found):
            return None
        index = np.asarray(found, np.int64)
        return p_cat[index], p_tags[index]

    return lookup


def _write_run(experiment: Experiment, run_dir: Path, trained: _Trained, strategy, started: float) -> dict:
    """The chief's run folder: model, labels, metrics, history, figures and ``run.json``; returns the metrics."""
    cfg, prepared, bundle = experiment.cfg, experiment.prepared, experiment.built()
    bundle.model.save(run_dir / MODEL_FILE)
    evaluated = local_model(bundle.model, run_dir / MODEL_FILE, strategy)  # chief only: no collectives
    scored_from_store: dict = {}
    # The head on stored features is the model on the images while the backbone is the store's frozen
    # one: val then costs no backbone pass (cached for training). Not across workers (collectives).
    from_store = cfg.train.cache_features and trained.choice.kept_phase == "head" and strategy is None
    probabilities: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scorer = _remembering(store_scorer(bundle, cfg, prepared, scored_from_store), probabilities) if from_store else None
    metrics, labels = evaluate_splits(
        evaluated, cfg, prepared, figures_dir=run_dir / "figures", history=trained.history, scorer=scorer
    )
    if "holdout" in probabilities:  # the export's reference statistics, without another backbone pass
        write_run_reference(labels, cfg, run_dir, _held_out_lookup(prepared, probabilities["holdout"]), evaluated)
    labels.save(run_dir / LABELS_FILE)
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", _jsonable(trained.history))
    write_json(
        run_dir / "run.json",
        {
            "run_name": cfg.run_name,
            "seed": cfg.seed,
            "weights_source": bundle.weights_source,
            "precision_policy": experiment.policy,
            "hardware": experiment.hardware,
            "package_versions": package_versions(),
            "keras_backend": keras.backend.backend(),
            "train_seconds": round(trained.seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "duplicates": prepared.duplicates,
            "split_sizes": {k: len(v) for k, v in prepared.frames.items()},
            "splits_file": str(prepared.splits_file),
            "image_report": prepared.image_report.describe(),
            "best_model": trained.choice.to_dict(),
            "deterministic": cfg.train.deterministic,
            "time_budget": trained.budget,
            "feature_store": trained.feature_counts or None,
            "evaluation_feature_store": scored_from_store or None,  # None: scored on the images
        },
    )
    for stale in (PHASE1_DONE, PHASE1_WEIGHTS, BEST_CHECKPOINT):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # BackupAndRestore leaves its folder, empty
    return metrics


@progress.quiet_when_not_verbose
def train(cfg: RunConfig) -> TrainResult:
    """Train, pick the best epoch, tune thresholds, evaluate; write everything to the run folder."""
    started = time.perf_counter()
    cluster = cluster_from_env()  # TF_CONFIG; the strategy must exist before any other TensorFlow op
    strategy = make_strategy(cluster)
    run_dir = worker_run_dir(cfg.run_dir, cluster)  # only the chief writes cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    experiment = Experiment.start(cfg)
    with distribution_scope(strategy, experiment.hardware):
        experiment, trained = _train_in_scope(experiment, run_dir, started, agreement(strategy, cluster))
    if not cluster.is_chief:  # trained in sync with the chief, which writes the run; drop the scratch folder
        shutil.rmtree(run_dir, ignore_errors=True)
        barrier(strategy)  # until the chief has written the run
        return TrainResult(run_dir=cfg.run_dir, metrics={}, history=trained.history, seconds=trained.seconds)
    metrics = _write_run(experiment, run_dir, trained, strategy, started)
    barrier(strategy)  # the other workers wait for the run to be written
    result = TrainResult(
        run_dir=run_dir, metrics=metrics, history=trained.history, seconds=time.perf_counter() - started
    )
    log_training(experiment.cfg, result)  # MLflow; a no-op when tracking is off
    return result
