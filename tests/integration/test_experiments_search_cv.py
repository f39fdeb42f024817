"""`vinted search` (resumable Optuna study on one feature cache) and `vinted cv` on the tiny data set."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import tiny_config

from vinted_classifier import train as train_module
from vinted_classifier.config import load_config
from vinted_classifier.experiments import search as search_module
from vinted_classifier.experiments.search import PARAM_KEYS, run_search


def test_search_resumes_from_its_storage_and_writes_a_runnable_config(tiny_dataset, tmp_path, monkeypatch):
    import mlflow
    import optuna

    cfg = tiny_config(tiny_dataset, tmp_path / "runs", "train.head_epochs=2", "tracking.enabled=true")
    first = run_search(cfg, 3, name="s")
    folder = tmp_path / "runs" / "s"
    assert first.folder == folder and first.finished_trials == 3
    cache = folder / "feature_cache" / "train.f32"
    cache_written = cache.stat().st_mtime_ns
    study = optuna.load_study(study_name=search_module.STUDY_NAME, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(study.trials) == 3

    trained = []
    original = search_module.suggest
    monkeypatch.setattr(search_module, "suggest", lambda trial: trained.append(trial.number) or original(trial))
    again = run_search(cfg, 3, name="s")  # already 3 finished: nothing to run
    assert trained == [] and again.best_value == first.best_value
    more = run_search(cfg, 4, name="s")  # one more, numbered after the stored ones
    assert trained == [3] and more.finished_trials == 4
    assert cache.stat().st_mtime_ns == cache_written, "the feature cache is reused, not recomputed"

    table = pd.read_csv(more.trials_csv)
    assert table["number"].tolist() == [0, 1, 2, 3]
    assert {f"params_{p}" for p in PARAM_KEYS} <= set(table.columns)
    assert {"user_attrs_val_top1", "value", "state"} <= set(table.columns)
    assert sorted(p.name for p in more.figures) == ["optimization_history.png", "param_importances.png"]
    assert all(p.stat().st_size > 1000 for p in more.figures)

    best = load_config(more.best_config)
    assert best.run_name == "s-best"
    assert best.train.head_learning_rate == pytest.approx(more.best_params["head_learning_rate"])
    assert best.model.dense_units == more.best_params["dense_units"]
    assert best.train.loss_weights["tags"] == pytest.approx(more.best_params["tags_loss_weight"])
    assert best.data.class_weights == more.best_params["class_weights"]
    assert best.model.backbone == "vgg16" and best.model.image_height == 40, "the rest is the base config"
    result = train_module.train(load_config(more.best_config, ["tracking.enabled=false", "train.head_epochs=1"]))
    assert (result.run_dir / "model.keras").is_file() and result.run_dir.name == "s-best"

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vinted").experiment_id])
    parents = [r for r in runs if r.data.tags.get("vinted.kind") == "search"]
    trials = [r for r in runs if r.info.run_name.startswith("s-trial-")]
    assert len(parents) == 3 and len(trials) == 4
    assert all(r.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents} for r in trials)


def test_bad_search_arguments_are_named(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="--trials must be >= 1, got 0"):
        run_search(cfg, 0)
    with pytest.raises(ValueError, match="--timeout must be > 0 minutes, got -1"):
        run_search(cfg, 2, timeout_minutes=-1)


def test_cv_reports_mean_and_std_over_grouped_folds(tiny_dataset, tmp_path):
    from vinted_classifier.experiments.cv import run_cv

    cfg = tiny_config(tiny_dataset, tmp_path / "runs", "train.head_epochs=2", "tracking.enabled=false")
    result = run_cv(cfg, 3)
    saved = json.loads((tmp_path / "runs" / "cv" / "cv.json").read_text())
    assert saved["k"] == 3 and len(saved["folds"]) == 3
    assert sum(f["n_test"] for f in saved["folds"]) == saved["pool_rows"]
    top1 = [f["top1"] for f in saved["folds"]]
    mean, std = result.summary["top1"]
    assert mean == pytest.approx(sum(top1) / 3) and saved["summary"]["top1"]["std"] == pytest.approx(std)
    assert set(result.summary) == {"top1", "top2", "tag_macro_f1", "f1 polka dot", "f1 floral", "f1 checker"}
    assert "| top1 |" in (tmp_path / "runs" / "cv" / "cv.md").read_text()
