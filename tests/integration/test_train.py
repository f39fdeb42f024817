"""Training: two phases, feature caching equivalence, determinism, resume, run artefacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_config

from vinted_classifier import train as train_module
from vinted_classifier.runs import RunLabels, load_run


def test_run_writes_its_artefacts(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "runs", "train.finetune_epochs=1")
    result = train_module.train(cfg)
    run = result.run_dir
    for name in (
        "config.yaml",
        "run.json",
        "labels.json",
        "model.keras",
        "metrics.json",
        "history.json",
        "figures/confusion_matrix.png",
        "figures/roc_tags.png",
        "figures/learning_curves.png",
    ):
        assert (run / name).is_file(), name
    meta = json.loads((run / "run.json").read_text())
    assert meta["weights_source"] == "none" and meta["precision_policy"] == "float32" and meta["seed"] == 42
    assert meta["duplicates"]["exact_duplicate_rows"] == 2
    assert "tensorflow" in meta["package_versions"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 4  # 3 head epochs (cached) + 1 fine-tune epoch
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"val", "holdout"} and metrics == result.metrics
    n_holdout = metrics["holdout"]["n"]
    assert n_holdout == meta["split_sizes"]["holdout"]
    hits = metrics["holdout"]["top1_accuracy"] * n_holdout  # a count of held-out rows, not any number in [0, 1]
    assert hits == pytest.approx(round(hits))
    assert metrics["holdout"]["top2_accuracy"] >= metrics["holdout"]["top1_accuracy"]
    labels = RunLabels.load(run / "labels.json")
    assert labels.categories == ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"] and labels.image_size == (40, 32)
    assert not (run / "phase1.done").exists(), "resume markers are cleaned after a finished run"
    assert not (run / "backup").exists() and not (run / "feature_cache").exists()
    _, _, model = load_run(run)
    assert set(model.output_names) == {"cc3", "tags"}


def _holdout_probs(cfg):
    result = train_module.train(cfg)
    _, labels, model = load_run(result.run_dir)
    from vinted_classifier import data, pipeline
    from vinted_classifier.runs import predict_probabilities

    prepared = data.prepare(cfg.data, cfg.seed)
    ds = pipeline.make_dataset(prepared.paths("holdout"), image_size=cfg.model.image_size, batch_size=4)
    return predict_probabilities(model, ds, "cc3"), result


def test_cached_features_train_the_same_head_as_uncached(tiny_dataset, tmp_path):
    common = ["model.dropout=0.0", "train.head_epochs=2"]
    (cat_a, tag_a), _ = _holdout_probs(tiny_config(tiny_dataset, tmp_path / "a", "train.cache_features=true", *common))
    (cat_b, tag_b), _ = _holdout_probs(tiny_config(tiny_dataset, tmp_path / "b", "train.cache_features=false", *common))
    np.testing.assert_allclose(cat_a, cat_b, atol=1e-4)
    np.testing.assert_allclose(tag_a, tag_b, atol=1e-4)


def test_same_seed_same_losses(tiny_dataset, tmp_path):
    first = train_module.train(
        tiny_config(tiny_dataset, tmp_path / "a", "train.head_epochs=2", "train.cache_features=false")
    )
    second = train_module.train(
        tiny_config(tiny_dataset, tmp_path / "b", "train.head_epochs=2", "train.cache_features=false")
    )
    assert first.history["loss"] == second.history["loss"]


class _Interrupt(Exception):
    pass


def test_resume_after_interruption(tiny_dataset, tmp_path, monkeypatch):
    import keras

    cfg = tiny_config(tiny_dataset, tmp_path / "runs", "train.finetune_epochs=3")
    original = train_module._callbacks

    class KillMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise _Interrupt("killed mid-epoch")

    def with_killer(cfg_, run_dir, phase, *, checkpoint, **kwargs):
        extra = [KillMidEpoch()] if phase == "finetune" else []
        return original(cfg_, run_dir, phase, checkpoint=checkpoint, **kwargs) + extra

    monkeypatch.setattr(train_module, "_callbacks", with_killer)
    with pytest.raises(_Interrupt):
        train_module.train(cfg)
    run = cfg.run_dir
    assert (run / "phase1.done").is_file(), "phase 1 finished before the interruption"
    assert (run / "backup" / "finetune").is_dir(), "BackupAndRestore kept the fine-tune state"
    monkeypatch.setattr(train_module, "_callbacks", original)
    result = train_module.train(cfg)
    log = pd.read_csv(run / "history_finetune.csv")
    # epoch 0 ran before the kill; the second run continued at epoch 1 instead of starting over
    assert log["epoch"].tolist() == [0, 1, 2]
    assert len(result.history["loss"]) == 3 + 2  # head history restored from the marker + resumed epochs
