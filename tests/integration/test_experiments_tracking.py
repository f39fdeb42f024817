"""MLflow tracking of a tiny run: params, per-epoch metrics of both phases, artefacts, export, registry."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_config

from vinted_classifier import train as train_module
from vinted_classifier.config import PROJECT_ROOT
from vinted_classifier.experiments import tracking


def test_a_tracked_run_holds_config_metrics_artefacts_and_its_export(tiny_dataset, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    cfg = tiny_config(
        tiny_dataset,
        tmp_path / "runs",
        "train.head_epochs=2",
        "train.finetune_epochs=1",
        "tracking.enabled=true",
        "tracking.registered_model_name=vinted-tiny",
    )
    result = train_module.train(cfg)
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    experiment = client.get_experiment_by_name("vinted")
    assert experiment.artifact_location == (tmp_path / "runs" / "mlruns" / "artifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["train.head_epochs"] == "2" and params["model.backbone"] == "vgg16"
    assert params["tracking.tracking_uri"] == "null" and params["seed"] == "42"
    assert len(params) == len(tracking.flatten(cfg.model_dump(mode="json")))
    losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in losses] == [0, 1, 2], "2 head epochs + 1 fine-tune epoch, one step each"
    assert [m.value for m in losses] == pytest.approx(result.history["val_loss"])
    metrics = run.data.metrics
    assert metrics["holdout.top1_accuracy"] == pytest.approx(result.metrics["holdout"]["top1_accuracy"])
    assert "holdout.top2_accuracy" in metrics and not any(k.startswith("holdout.slices") for k in metrics)
    assert run.data.tags[tracking.RUN_DIR_TAG] == str(result.run_dir.resolve())
    kept = json.loads((result.run_dir / "run.json").read_text())["best_model"]["kept_phase"]
    assert run.data.tags["best_model.kept_phase"] == kept
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"labels.json", "run.json", "metrics.json", "history.json", "config.yaml", "figures", "model"} <= artefacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/confusion_matrix.png" in figures
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.keras"]

    from vinted_classifier.export import export_run

    exported = export_run(result.run_dir, cfg.export.saved_model_dir, cfg.export.model_name)
    logged = tracking.log_export(cfg, result.run_dir, exported)
    assert logged["run_id"] == run.info.run_id and logged["artifact_path"] == f"saved_model/{exported.name}"
    saved = {a.path for a in client.list_artifacts(run.info.run_id, logged["artifact_path"])}
    assert f"saved_model/{exported.name}/saved_model.pb" in saved
    assert logged["registered"] == {"name": "vinted-tiny", "version": 1}
    version = client.get_model_version("vinted-tiny", "1")
    assert version.run_id == run.info.run_id and version.source == logged["source"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny"]
    assert not (PROJECT_ROOT / "mlruns").exists() and not (PROJECT_ROOT / "mlartifacts").exists()


def test_tracking_off_writes_no_store(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "runs", "train.head_epochs=1", "tracking.enabled=false")
    result = train_module.train(cfg)
    assert result.run_dir.is_dir() and not (tmp_path / "runs" / "mlruns").exists()
    assert tracking.log_export(cfg, result.run_dir, tmp_path) is None
