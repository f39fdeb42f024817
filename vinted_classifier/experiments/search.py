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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


PARAM_KEYS = {"head_learning_rate": "train.head_learning_rate", "dense_units": "model.dense_units",
              "dropout": "model.dropout", "label_smoothing": "train.label_smoothing",
              "tags_loss_weight": "train.loss_weights.tags", "class_weights": "data.class_weights"}


def with_overrides(cfg, overrides: dict[str, Any]):
    """A validated copy of ``cfg`` with dotted ``overrides`` applied."""
    from ..config import RunConfig

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


def _study(folder: Path, seed: int):
    import optuna

    return optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{folder / 'optuna.db'}", load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


def finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def run_search(cfg, trials: int, *, timeout_minutes: float | None = None, name: str = "search") -> SearchResult:
    """Run (or continue) a search of ``trials`` finished trials in total under ``<output_dir>/<name>/``."""
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    if timeout_minutes is not None and timeout_minutes <= 0:
        raise ValueError(f"--timeout must be > 0 minutes, got {timeout_minutes}")
    import optuna

    from .. import data
    from ..features import feature_dataset
    from ..model import build_model
    from ..precision import resolve_precision, set_precision
    from ..train import cache_features
    from ..utils import set_seed
    from .heads import fit_head, read_cache_arrays
    from .tracking import log_config, tracked_run

    folder = Path(cfg.output_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_seed(cfg.seed, deterministic=cfg.train.deterministic)
    set_precision(resolve_precision(cfg.train.precision))
    prepared = data.prepare(cfg.data, cfg.seed)
    categories, tag_names = list(prepared.vocab.categories), list(prepared.vocab.tags)
    bundle = build_model(cfg.model, categories, tag_names, category_output=cfg.data.category_column)
    caches = cache_features(bundle, cfg, prepared, folder / "feature_cache")
    del bundle  # only heads from here on
    val = read_cache_arrays(caches["val"])
    study = _study(folder, cfg.seed)
    remaining = max(0, trials - finished(study))
    log.info("search %s: %d trial(s) finished, running up to %d more", folder, finished(study), remaining)

    def objective(trial) -> float:
        trial_cfg = with_overrides(cfg, suggest(trial))
        class_weights = None
        if trial_cfg.data.class_weights:
            class_weights = data.class_weights(prepared.codes("train"), len(categories))
        train_data = feature_dataset(caches["train"], batch_size=cfg.train.batch_size,
                                     category_output=cfg.data.category_column,
                                     shuffle_buffer=cfg.train.feature_shuffle_buffer, seed=cfg.seed,
                                     class_weights=class_weights)
        started = time.perf_counter()
        with tracked_run(cfg, run_name=f"{name}-trial-{trial.number}") as run:
            def report(epoch: int, nll: float) -> None:
                trial.report(nll, epoch)
                if run is not None:
                    import mlflow

                    mlflow.log_metric("val_nll", nll, step=epoch)
                if trial.should_prune():
                    if run is not None:
                        mlflow.set_tag("optuna.state", "PRUNED")
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} (val NLL {nll:.4f})")

            fit = fit_head(trial_cfg, train_data, val, categories=categories, tag_names=tag_names, on_epoch=report)
            top1 = float((fit.p_cat.argmax(1) == val[1]).mean())
            top2 = float((fit.p_cat.argsort(1)[:, -2:] == val[1][:, None]).any(1).mean())
            for key, value in {"val_top1": top1, "val_top2": top2, "best_epoch": fit.best_epoch + 1,
                               "epochs_run": fit.epochs_run, "seconds": time.perf_counter() - started}.items():
                trial.set_user_attr(key, value)
            if run is not None:
                import mlflow

                mlflow.log_params({**trial.params, "trial": trial.number})
                mlflow.log_metrics({"best_val_nll": fit.best_nll, "val_top1": top1, "val_top2": top2})
                mlflow.set_tag("optuna.state", "COMPLETE")
        return fit.best_nll

    with tracked_run(cfg, run_name=f"{name}", tags={"vinted.kind": "search"}) as parent:
        if parent is not None:
            import mlflow

            log_config(mlflow, cfg)
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=None if timeout_minutes is None else timeout_minutes * 60,
                           gc_after_trial=True)
        result = _write_outputs(study, cfg, folder, name)
        if parent is not None:
            mlflow.log_params({f"best.{k}": v for k, v in result.best_params.items()})
            mlflow.log_metric("best_val_nll", result.best_value)
            for path in [result.best_config, result.trials_csv, *result.figures]:
                mlflow.log_artifact(str(path))
    return result


def _write_outputs(study, cfg, folder: Path, name: str) -> SearchResult:
    """best_config.yaml, trials.csv and Optuna's plots, from whatever the study holds now."""
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise ValueError(f"search {folder}: no trial has completed yet; run more trials")
    best = study.best_trial
    best_cfg = with_overrides(cfg, {PARAM_KEYS[k]: v for k, v in best.params.items()})
    best_cfg.run_name = f"{name}-best"
    best_config = folder / "best_config.yaml"
    header = (f"# Best of {len(study.trials)} trial(s) of `vinted search` ({folder}): trial {best.number}, "
              f"validation NLL {best.value:.4f}.\n# Run it: vinted train --config {best_config}\n")
    best_config.write_text(header + best_cfg.to_yaml())
    trials_csv = folder / "trials.csv"
    study.trials_dataframe().to_csv(trials_csv, index=False)
    figures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        plots = {"optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history}
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 2:
            plots["param_importances.png"] = optuna.visualization.matplotlib.plot_param_importances
        for file_name, plot in plots.items():
            axes = plot(study)
            axes.figure.savefig(folder / file_name, dpi=110, bbox_inches="tight")
            plt.close(axes.figure)
            figures.append(folder / file_name)
    log.info("best trial %d: val NLL %.4f, %s -> %s", best.number, best.value, best.params, best_config)
    return SearchResult(folder, dict(best.params), float(best.value), best_config, trials_csv, figures,
                        finished(study))
