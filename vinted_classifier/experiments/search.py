"""``vinted search``: Optuna hyperparameter search of the head on ONE feature cache.

The backbone runs once for the whole search (features of the training images plus their
augmented views, and of the validation images, written to ``<search>/feature_cache/``); every
trial then trains only a head on those vectors, which takes seconds. Searched: head learning
rate, dense units, dropout, label smoothing, the tag loss weight (category weight fixed at 1)
and class weights. Trials are scored by the validation NLL (``heads.validation_nll``), which
the searched values cannot rescale, with a seeded TPE sampler and a median pruner on that
score per epoch. The study lives in ``<search>/optuna.db`` (SQLite), so rerunning the same
command continues it: ``--trials N`` is the total wanted, not N more.

Outputs in the search folder: ``best_config.yaml`` (``vinted train --config`` runs it, phase 2
included), ``trials.csv``, ``optimization_history.png``, ``param_importances.png``; each
trial is an MLflow run nested under the search's run.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from ..config import RunConfig
from ..evaluate.metrics import top1_top2_accuracy
from ..features import FeatureCache, feature_dataset
from .heads import fit_head, read_cache_arrays
from .setup import Experiment
from .tracking import Tracker

log = logging.getLogger(__name__)

STUDY_NAME = "head-search"


def suggest(trial) -> dict[str, Any]:
    """The search space, as dotted config overrides."""
    return {
        "train.head_learning_rate": trial.suggest_float("head_learning_rate", 1e-4, 1e-2, log=True),
        "model.dense_units": trial.suggest_categorical("dense_units", [0, 128, 256, 512]),
        "model.dropout": trial.suggest_float("dropout", 0.0, 0.6),
        "train.label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "train.loss_weights.tags": trial.suggest_float("tags_loss_weight", 0.25, 4.0, log=True),
        "data.class_weights": trial.suggest_categorical("class_weights", [False, True]),
    }


PARAM_KEYS = {
    "head_learning_rate": "train.head_learning_rate",
    "dense_units": "model.dense_units",
    "dropout": "model.dropout",
    "label_smoothing": "train.label_smoothing",
    "tags_loss_weight": "train.loss_weights.tags",
    "class_weights": "data.class_weights",
}


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A validated copy of ``cfg`` with dotted ``overrides`` applied."""
    raw = cfg.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return RunConfig.model_validate(raw)


@dataclass
class SearchResult:
    folder: Path
    best_params: dict[str, Any]
    best_value: float
    best_config: Path
    trials_csv: Path
    figures: list[Path]
    finished_trials: int


def _study(folder: Path, seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{folder / 'optuna.db'}",
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )


def finished(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def run_search(
    cfg: RunConfig, trials: int, *, timeout_minutes: float | None = None, name: str = "search"
) -> SearchResult:
    """Run (or continue) a search of ``trials`` finished trials in total under ``<output_dir>/<name>/``."""
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    if timeout_minutes is not None and timeout_minutes <= 0:
        raise ValueError(f"--timeout must be > 0 minutes, got {timeout_minutes}")
    folder = Path(cfg.output_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment = Experiment.start(cfg)
    experiment.build_model()
    caches = experiment.cache_splits(folder / "feature_cache")
    experiment.release_model()  # only heads from here on
    study = _study(folder, cfg.seed)
    remaining = max(0, trials - finished(study))
    log.info("search %s: %d trial(s) finished, running up to %d more", folder, finished(study), remaining)
    tracker = Tracker(cfg)
    with tracker.run(name, kind="search"):
        if remaining:
            objective = _objective(experiment, caches, tracker, name)
            study.optimize(
                objective,
                n_trials=remaining,
                gc_after_trial=True,
                timeout=None if timeout_minutes is None else timeout_minutes * 60,
            )
        result = _write_outputs(study, cfg, folder, name)
        tracker.finish(
            params={f"best.{k}": v for k, v in result.best_params.items()},
            metrics={"best_val_nll": result.best_value},
            artifacts=[result.best_config, result.trials_csv, *result.figures],
        )
    return result


def _objective(
    experiment: Experiment, caches: dict[str, FeatureCache], tracker: Tracker, name: str
) -> Callable[[optuna.Trial], float]:
    """One trial: a head with the suggested values on the cached features, scored by validation NLL."""
    cfg = experiment.cfg
    val = read_cache_arrays(caches["val"])

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = with_overrides(cfg, suggest(trial))
        train_data = feature_dataset(
            caches["train"],
            batch_size=cfg.train.batch_size,
            category_output=cfg.data.category_column,
            shuffle_buffer=cfg.train.feature_shuffle_buffer,
            seed=cfg.seed,
            class_weights=experiment.class_weights(trial_cfg),
        )
        started = time.perf_counter()
        with tracker.child(f"{name}-trial-{trial.number}"):
            fit = fit_head(
                trial_cfg,
                train_data,
                val,
                categories=experiment.categories,
                tag_names=experiment.tag_names,
                on_epoch=_pruning(trial, tracker),
            )
            top1, top2 = top1_top2_accuracy(val[1], fit.p_cat)
            for key, value in {
                "val_top1": top1,
                "val_top2": top2,
                "best_epoch": fit.best_epoch + 1,
                "epochs_run": fit.epochs_run,
                "seconds": time.perf_counter() - started,
            }.items():
                trial.set_user_attr(key, value)
            tracker.log_trial(
                {**trial.params, "trial": trial.number},
                {"best_val_nll": fit.best_nll, "val_top1": top1, "val_top2": top2},
            )
        return fit.best_nll

    return objective


def _pruning(trial: optuna.Trial, tracker: Tracker) -> Callable[[int, float], None]:
    """``on_epoch`` for ``fit_head``: report the epoch's NLL to Optuna and stop when its pruner says so."""

    def report(epoch: int, nll: float) -> None:
        trial.report(nll, epoch)
        tracker.log_epoch("val_nll", nll, epoch)
        if trial.should_prune():
            tracker.log_trial_state("PRUNED")
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} (val NLL {nll:.4f})")

    return report


def _write_outputs(study: optuna.Study, cfg: RunConfig, folder: Path, name: str) -> SearchResult:
    """best_config.yaml, trials.csv and Optuna's plots, from whatever the study holds now."""
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        raise ValueError(f"search {folder}: no trial has completed yet; run more trials")
    best = study.best_trial
    best_cfg = with_overrides(cfg, {PARAM_KEYS[k]: v for k, v in best.params.items()})
    best_cfg.run_name = f"{name}-best"
    best_config = folder / "best_config.yaml"
    header = (
        f"# Best of {len(study.trials)} trial(s) of `vinted search` ({folder}): trial {best.number}, "
        f"validation NLL {best.value:.4f}.\n# Run it: vinted train --config {best_config}\n"
    )
    best_config.write_text(header + best_cfg.to_yaml())
    trials_csv = folder / "trials.csv"
    study.trials_dataframe().to_csv(trials_csv, index=False)
    figures = []
    matplotlib.use("Agg", force=False)  # Optuna's plots go through pyplot; no display is needed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        plots: dict[str, Callable[[optuna.Study], Any]] = {
            "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history
        }
        if sum(t.state == TrialState.COMPLETE for t in study.trials) >= 2:
            plots["param_importances.png"] = optuna.visualization.matplotlib.plot_param_importances
        for file_name, plot in plots.items():
            axes = plot(study)
            figure = axes.get_figure(root=True)
            figure.savefig(folder / file_name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            figures.append(folder / file_name)
    log.info("best trial %d: val NLL %.4f, %s -> %s", best.number, best.value, best.params, best_config)
    assert best.value is not None  # a completed trial has its value
    return SearchResult(folder, dict(best.params), float(best.value), best_config, trials_csv, figures, finished(study))
