"""MLflow tracking: runs, per-epoch metrics, artefacts, exported SavedModels, optional registry.

Offline by default: ``tracking.tracking_uri: null`` means a SQLite store at
``<output_dir>/mlruns/mlflow.db`` with artefacts under ``<output_dir>/mlruns/artifacts`` (a
relative artefact root would land in whatever folder the command ran from). Any other URI
(``http://...``, ``sqlite:///...``, ``file:...``) is used as given. ``tracking.enabled: false``
turns all of it off. MLflow is imported only when a run is tracked.

``Tracker`` is the search's and CV's view of it: hooks (a command's run, a trial, a fold, the
final summary) that do nothing when tracking is off, so their loops hold no MLflow code.

TensorBoard logs are still written by training; MLflow is where runs are compared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..contract import LABELS_FILE, MODEL_FILE

log = logging.getLogger(__name__)

RUN_DIR_TAG = "vinted.run_dir"
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def store_dir(cfg) -> Path:
    return Path(cfg.output_dir) / "mlruns"


def tracking_uri(cfg) -> str:
    """The configured URI, or the local SQLite store under the output folder."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return f"sqlite:///{store_dir(cfg) / 'mlflow.db'}"


def _mlflow_module():
    """The ``mlflow`` module, imported on first tracked use."""
    # MLflow takes seconds to import; every command with tracking off (and the CLI) goes without it.
    import mlflow  # noqa: PLC0415

    return mlflow


def _mlflow(cfg):
    """MLflow pointed at this config's store and experiment (created with a local artefact root)."""
    mlflow = _mlflow_module()
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not cfg.tracking.tracking_uri:
        store_dir(cfg).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(cfg.tracking.experiment) is None:
        location = None if cfg.tracking.tracking_uri else (store_dir(cfg) / "artifacts").resolve().as_uri()
        client.create_experiment(cfg.tracking.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.tracking.experiment)
    return mlflow


def flatten(tree: Mapping[str, Any], prefix: str = "", *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}`` (lists kept as leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}.", skip=skip))
        else:
            flat[name] = value
    return flat


def metric_name(name: str) -> str:
    """MLflow allows letters, digits and ``_-. /`` in metric names."""
    return _UNSAFE.sub("_", name)


def numeric_leaves(tree: Mapping[str, Any], prefix: str = "", *, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Finite int/float leaves of a nested metrics dict, with MLflow-safe dotted names."""
    out = {}
    for name, value in flatten(tree, prefix, skip=skip).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[metric_name(name)] = float(value)
    return out


def epoch_rows(history: Mapping[str, list[float]]) -> list[dict[str, float]]:
    """One dict of finite values per epoch (both phases, in order): the rows logged with step = epoch."""
    epochs = max((len(v) for v in history.values()), default=0)
    return [
        {metric_name(k): float(v[i]) for k, v in history.items() if i < len(v) and math.isfinite(v[i])}
        for i in range(epochs)
    ]


@contextlib.contextmanager
def tracked_run(cfg, *, run_name: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run (nested under an active one), or ``None`` when tracking is off."""
    if not cfg.tracking.enabled:
        yield None
        return
    mlflow = _mlflow(cfg)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=run_name or cfg.run_name, nested=nested, tags=tags, log_system_metrics=False) as run:
        yield run


def log_config(mlflow, cfg) -> None:
    """The whole resolved config as params (dotted keys) and as the run's config.yaml."""
    params = {k: ("null" if v is None else str(v)) for k, v in flatten(cfg.model_dump(mode="json")).items()}
    mlflow.log_params(params)
    mlflow.log_text(cfg.to_yaml(), "config.yaml")


def log_training(cfg, result) -> str | None:
    """Log a finished training run (``train.TrainResult``); returns the MLflow run id (None when off)."""
    if not cfg.tracking.enabled:
        return None
    run_dir = Path(result.run_dir)
    with tracked_run(cfg, tags={RUN_DIR_TAG: str(run_dir.resolve())}) as run:
        mlflow = _mlflow_module()
        log_config(mlflow, cfg)
        for epoch, values in enumerate(epoch_rows(result.history)):
            mlflow.log_metrics(values, step=epoch)
        for split, split_metrics in result.metrics.items():
            mlflow.log_metrics(numeric_leaves(split_metrics, f"{split}.", skip=("slices",)))
        mlflow.log_metric("train_seconds", float(result.seconds))
        meta = _read_json(run_dir / "run.json")
        if best := meta.get("best_model"):
            mlflow.set_tag("best_model.kept_phase", best["kept_phase"])
        for name in (LABELS_FILE, "run.json", "metrics.json", "history.json"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        if (run_dir / "figures").is_dir():
            mlflow.log_artifacts(str(run_dir / "figures"), "figures")
        if cfg.tracking.log_models and (run_dir / MODEL_FILE).is_file():
            mlflow.log_artifact(str(run_dir / MODEL_FILE), "model")
        log.info("MLflow run %s in %s (experiment %r)", run.info.run_id, tracking_uri(cfg), cfg.tracking.experiment)
        return run.info.run_id


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_training_run(cfg, run_dir: Path) -> str | None:
    """The newest MLflow run logged for this run folder, or None."""
    mlflow = _mlflow(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{Path(run_dir).resolve()}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_export(cfg, run_dir: Path, export_dir: Path) -> dict | None:
    """Attach an exported SavedModel version to its training run; register it if configured."""
    if not cfg.tracking.enabled or not cfg.tracking.log_models:
        return None
    run_id = find_training_run(cfg, run_dir)
    if run_id is None:
        log.warning("no MLflow run for %s: the export is not tracked (train with tracking.enabled)", run_dir)
        return None
    mlflow = _mlflow_module()
    artifact_path = f"saved_model/{Path(export_dir).name}"
    client = mlflow.MlflowClient()
    client.log_artifacts(run_id, str(export_dir), artifact_path)
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    out: dict[str, Any] = {"run_id": run_id, "artifact_path": artifact_path, "source": source}
    name = cfg.tracking.registered_model_name
    if name:
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise
        version = client.create_model_version(
            name, source, run_id=run_id, tags={"saved_model_version": Path(export_dir).name}
        )
        out["registered"] = {"name": name, "version": version.version}
        log.info("registered %s version %s (SavedModel %s)", name, version.version, export_dir)
    return out


class Tracker:
    """MLflow hooks for a command's loop; every hook does nothing when ``tracking.enabled`` is off.

    ``run`` opens the command's run (the whole config and ``params`` logged); ``child`` nests a
    trial's run under it; ``log_fold`` is a fold's nested run with its metrics; ``finish`` logs the
    summary and the output files.
    """

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._mlflow: Any = None  # the module, while a tracked run is open

    @contextlib.contextmanager
    def run(self, run_name: str, *, kind: str, params: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
        with tracked_run(self.cfg, run_name=run_name, tags={"vinted.kind": kind}) as run:
            if run is None:
                yield self
                return
            self._mlflow = _mlflow_module()
            log_config(self._mlflow, self.cfg)
            if params:
                self._mlflow.log_params(dict(params))
            try:
                yield self
            finally:
                self._mlflow = None

    @contextlib.contextmanager
    def child(self, run_name: str) -> Iterator[Tracker]:
        """A nested run (a trial's): the hooks called inside it log there."""
        with tracked_run(self.cfg, run_name=run_name):
            yield self

    def log_epoch(self, name: str, value: float, epoch: int) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metric(name, value, step=epoch)

    def log_trial_state(self, state: str) -> None:
        if self._mlflow is not None:
            self._mlflow.set_tag("optuna.state", state)

    def log_trial(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """A completed trial's parameters and scores (inside its ``child`` run)."""
        if self._mlflow is not None:
            self._mlflow.log_params(dict(params))
            self._mlflow.log_metrics(dict(metrics))
            self.log_trial_state("COMPLETE")

    def log_fold(self, run_name: str, row: Mapping[str, Any]) -> None:
        """A fold's numeric results as a nested run of its own."""
        if self._mlflow is not None:
            with self.child(run_name):
                self._mlflow.log_metrics(numeric_leaves(row))

    def finish(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        artifacts: Iterable[Path] = (),
    ) -> None:
        """The command's summary and output files, on its own run."""
        if self._mlflow is None:
            return
        if params:
            self._mlflow.log_params(dict(params))
        if metrics:
            self._mlflow.log_metrics(dict(metrics))
        for path in artifacts:
            self._mlflow.log_artifact(str(path))
