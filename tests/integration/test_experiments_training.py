"""Best model across phases and deterministic training, on the tiny run (VGG16, 40x32, random weights)."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from helpers import tiny_config

from vinted_classifier import train as train_module
from vinted_classifier.runs import load_run


def _weights(run_dir):
    _, _, model = load_run(run_dir)
    return model.get_weights()


def test_fine_tuning_that_only_hurts_leaves_the_phase1_model(tiny_dataset, tmp_path):
    common = ["train.head_epochs=2", "tracking.enabled=false"]
    head_only = train_module.train(tiny_config(tiny_dataset, tmp_path / "a", *common))
    # An absurd fine-tune learning rate: every phase-2 epoch is worse than phase 1 (or diverges).
    hurt = train_module.train(
        tiny_config(
            tiny_dataset, tmp_path / "b", *common, "train.finetune_epochs=2", "train.finetune_learning_rate=50.0"
        )
    )
    best = json.loads((hurt.run_dir / "run.json").read_text())["best_model"]
    assert best["kept_phase"] == "head" and best["finetune_best_epoch"] is None
    assert len(best["finetune_values"]) == 2 and best["monitor"] == "val_loss"
    assert not any(v < best["head_value"] for v in best["finetune_values"])
    # The phase-1 value is measured on the full model: the same val_loss as phase 1's kept (last) epoch.
    assert best["head_value"] == pytest.approx(head_only.history["val_loss"][-1], rel=1e-4)
    assert len(hurt.history["val_loss"]) == 4, "both phases stay in the history"
    for a, b in zip(_weights(head_only.run_dir), _weights(hurt.run_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert head_only.metrics["holdout"] == hurt.metrics["holdout"]
    assert json.loads((head_only.run_dir / "run.json").read_text())["best_model"]["kept_phase"] == "head"


def test_fine_tuning_with_warmup_is_kept_when_it_beats_phase_1(tiny_dataset, tmp_path):
    cfg = tiny_config(
        tiny_dataset,
        tmp_path / "c",
        "train.head_epochs=1",
        "train.head_learning_rate=0.0001",
        "train.finetune_epochs=2",
        "train.finetune_learning_rate=0.001",
        "train.finetune_warmup_epochs=1",
        "tracking.enabled=false",
    )
    result = train_module.train(cfg)
    best = json.loads((result.run_dir / "run.json").read_text())["best_model"]
    # One head epoch at a tiny learning rate leaves plenty for phase 2 to improve on.
    assert best["kept_phase"] == "finetune", best
    assert best["finetune_best_value"] == min(best["finetune_values"]) < best["head_value"]


@pytest.fixture()
def op_determinism_off_afterwards():
    yield
    from vinted_classifier.utils import set_seed

    set_seed(0, deterministic=False)


def test_deterministic_runs_give_bit_identical_weights(tiny_dataset, tmp_path, op_determinism_off_afterwards):
    # Augmentation, cached augmented views, dropout and a fine-tune epoch: every random source in play.
    extra = [
        "train.deterministic=true",
        "model.augment=true",
        "train.cached_augmented_views=1",
        "model.dropout=0.3",
        "train.head_epochs=2",
        "train.finetune_epochs=1",
        "tracking.enabled=false",
    ]
    first = train_module.train(tiny_config(tiny_dataset, tmp_path / "a", *extra))
    second = train_module.train(tiny_config(tiny_dataset, tmp_path / "b", *extra))
    from tensorflow.python.framework import config as tf_config

    assert tf_config.is_op_determinism_enabled()
    weights_a, weights_b = _weights(first.run_dir), _weights(second.run_dir)
    assert len(weights_a) == len(weights_b) > 30
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.history == second.history
    assert first.metrics == second.metrics
    assert json.loads((first.run_dir / "run.json").read_text())["deterministic"] is True


def test_time_budget_plans_the_run_and_the_run_stays_within_its_plan(tiny_dataset, tmp_path, caplog):
    cfg = tiny_config(
        tiny_dataset,
        tmp_path / "budget",
        "train.time_budget_minutes=2",
        "train.head_epochs=3",
        "train.finetune_epochs=1",
        "tracking.enabled=false",
    )
    with caplog.at_level("INFO", logger="vinted_classifier"):
        result = train_module.train(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    budget = run["time_budget"]
    plan, times = budget["plan"], budget["step_times"]
    assert set(times) == {
        "backbone_seconds_per_image",
        "head_seconds_per_step",
        "finetune_seconds_per_step",
        "augmented_seconds_per_image",
    }
    assert times.pop("augmented_seconds_per_image") == 0.0  # no augmenter in the tiny preset: priced as clean
    assert all(v > 0 for v in times.values())
    assert 1 <= plan["head_epochs"] <= 3 and 0 <= plan["finetune_epochs"] <= 1
    assert plan["budget_seconds"] == pytest.approx(120 - budget["seconds_before_plan"], abs=0.06)
    # Within the budget as planned: the prediction fits, and the run did exactly what was planned
    # (no early stopping in the tiny run), on the planned images and views.
    assert plan["fits"] and plan["predicted_seconds"] <= plan["budget_seconds"]
    # After phase 1 the time actually left is checked again: fine-tuning can only shrink.
    finetune = budget["after_phase1"]["finetune_epochs"] if plan["finetune_epochs"] else 0
    assert finetune <= plan["finetune_epochs"]
    assert len(result.history["loss"]) == plan["head_epochs"] + finetune
    assert run["split_sizes"]["train"] == plan["train_images"] == budget["requested"]["train_images"]
    assert plan["augmented_views"] == 0 and not plan["subsampled"]  # the tiny preset has no augmentation
    assert f"plan: {_describe(plan)}" in caplog.text, "the logged plan is the recorded one"
    assert "time_budget_minutes: 2" in (result.run_dir / "config.yaml").read_text(), "config.yaml keeps the request"


def _describe(plan: dict) -> str:
    from vinted_classifier.experiments.budget import Plan

    return Plan(**{k: v for k, v in plan.items() if k != "fits"}).describe()


def _fixed_step_times(monkeypatch, seconds_per_image: float):
    """Step times as if measured on a slow host, so that the plan must cut (no clock in what is asserted)."""
    from vinted_classifier.experiments import budget

    times = budget.StepTimes(seconds_per_image, 0.001, 4 * seconds_per_image)
    monkeypatch.setattr(budget, "measure_step_times", lambda *args, **kwargs: times)


def test_a_budget_too_small_for_the_whole_split_trains_a_stratified_subsample(tiny_dataset, tmp_path, monkeypatch):
    # 6 s/image: evaluation (holdout; val comes from its cached features) + 20 s overhead, then each
    # cached image costs 6 s
    from vinted_classifier.experiments import budget

    _fixed_step_times(monkeypatch, 6.0)
    monkeypatch.setattr(budget, "MIN_IMAGES_PER_CATEGORY", 1)  # the tiny set has 4 training images per category
    # 2 min: the whole split (12 images) would need 3 x 6 + 20 + (12 + 3 val) x 6 = 128 s
    cfg = tiny_config(tiny_dataset, tmp_path / "sub", "train.time_budget_minutes=2", "tracking.enabled=false")
    result = train_module.train(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    plan, full = run["time_budget"]["plan"], run["time_budget"]["requested"]["train_images"]
    assert plan["subsampled"] and plan["fits"] and plan["train_images"] < full
    assert run["split_sizes"]["train"] == plan["train_images"]  # trained on the subsample ...
    val, holdout = run["split_sizes"]["val"], run["split_sizes"]["holdout"]
    # ... evaluated on whole val (from its cached features) and holdout (through the backbone)
    assert plan["evaluation_seconds"] == holdout * 6.0 + 20.0
    assert run["feature_store"]["computed"] == plan["train_images"] + val


def test_the_main_job_budget_counts_the_job_so_far_and_buys_part_of_a_view(tiny_dataset, tmp_path, monkeypatch, caplog):
    _fixed_step_times(monkeypatch, 2.0)
    # After training, make all scores 5 test + 3 gate images (the export's reference comes from training's
    # held-out scoring): evaluation = (3 holdout + 8) x 2 s + 20 s overhead + 60 s for the job's other steps
    # = 102 s. Caching 12 training images with v augmented views and 3 val costs (12 x (1 + v) + 3) x 2 s:
    # 1 view -> 156 s in all, 2 views -> 180 s. The job started 60 s ago and the budget is 233 s, so
    # ~168 s are left: one view, and part of the second.
    cfg = tiny_config(
        tiny_dataset,
        tmp_path / "job",
        "model.augment=true",
        "train.cached_augmented_views=2",
        "train.time_budget_minutes=3.8833",
        "train.time_budget_scope=main_job",
        f"train.time_budget_started_at={time.time() - 60}",
        "tracking.enabled=false",
    )
    with caplog.at_level("INFO", logger="vinted_classifier"):
        result = train_module.train(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    budget, plan = run["time_budget"], run["time_budget"]["plan"]
    assert (budget["scope"], budget["after_training_images"], plan["evaluation_seconds"]) == ("main_job", 8, 102.0)
    assert budget["reference_images_unless_stored"] == 3
    assert budget["seconds_before_plan"] >= 60  # the job's time before this command counts
    partial = plan["partial_view_images"]
    assert plan["augmented_views"] == 1 and 0 < partial < 12 and plan["fits"]
    assert plan["predicted_seconds"] <= plan["budget_seconds"] < plan["predicted_seconds"] + 2 + 0.1  # < 1 more image
    # The store computed what was planned: every image's clean and first augmented view, part of the second, val.
    assert (run["feature_store"]["computed"], run["feature_store"]["reused"]) == (12 * 2 + partial + 3, 0)
    assert f"12 train image(s) x 2 view(s) (+ 1 for {partial} of them), 3 val" in caplog.text


def test_a_budget_plans_no_backbone_pass_for_what_the_feature_store_holds(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "stored"
    train_module.train(tiny_config(tiny_dataset, out, "run_name=first", "tracking.enabled=false"))  # fills the store
    _fixed_step_times(monkeypatch, 6.0)  # the whole split would need 128 s of backbone (the subsample test above)
    cfg = tiny_config(tiny_dataset, out, "run_name=second", "train.time_budget_minutes=2", "tracking.enabled=false")
    run = json.loads((train_module.train(cfg).run_dir / "run.json").read_text())
    budget = run["time_budget"]
    assert budget["stored"] == {"train_views": [1.0], "val": 1.0, "holdout": 1.0}
    assert budget["plan"]["caching_seconds"] == 0 and budget["plan"]["evaluation_seconds"] == 20.0  # overhead only
    assert not budget["plan"]["subsampled"] and run["feature_store"]["computed"] == 0
    assert run["evaluation_feature_store"]["computed"] == 0


def test_a_budget_nothing_fits_is_refused_before_training(tiny_dataset, tmp_path, monkeypatch):
    from vinted_classifier.experiments.budget import BudgetTooSmall

    _fixed_step_times(monkeypatch, 60.0)  # evaluating val + holdout alone takes minutes
    cfg = tiny_config(tiny_dataset, tmp_path / "refused", "train.time_budget_minutes=1", "tracking.enabled=false")
    with pytest.raises(BudgetTooSmall, match=r"cannot fit even the smallest run .* Give at least \d+\.\d min"):
        train_module.train(cfg)
    assert not (cfg.run_dir / "model.keras").exists() and not (cfg.run_dir / "history_head.csv").exists()
    # Under make all the message names the whole job's minutes: what the job already ran plus that minimum.
    job = tiny_config(
        tiny_dataset,
        tmp_path / "refused-job",
        "train.time_budget_minutes=15",
        "train.time_budget_scope=main_job",
        f"train.time_budget_started_at={time.time() - 120}",
        "tracking.enabled=false",
    )
    with pytest.raises(BudgetTooSmall, match=r"run so far: make all MAIN_JOB_MINUTES=(\d+)\.$") as refused:
        train_module.train(job)
    minutes = int(re.search(r"MAIN_JOB_MINUTES=(\d+)", str(refused.value)).group(1))
    needed = refused.value.needed_seconds
    assert math.ceil((120 + needed) / 60) <= minutes <= math.ceil((180 + needed) / 60), (minutes, needed)


def test_val_and_holdout_are_scored_from_the_feature_store_exactly_as_on_the_images(tiny_dataset, tmp_path):
    from vinted_classifier.evaluate.run import evaluate_run

    cfg = tiny_config(tiny_dataset, tmp_path / "scored", "train.head_epochs=2", "tracking.enabled=false")
    result = train_module.train(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    val, holdout = run["split_sizes"]["val"], run["split_sizes"]["holdout"]
    # val's features were cached for phase 1: only holdout went through the backbone.
    assert run["evaluation_feature_store"] == {"computed": holdout, "reused": val}
    on_images = evaluate_run(cfg)  # the saved model over the image files, with the run's thresholds
    for split in ("val", "holdout"):
        for metric in ("n", "top1_accuracy", "top2_accuracy"):
            assert on_images[split][metric] == result.metrics[split][metric], (split, metric)
        for tag, scores in on_images[split]["tags"]["per_tag"].items():  # the probabilities rank alike
            assert scores["roc_auc"] == pytest.approx(result.metrics[split]["tags"]["per_tag"][tag]["roc_auc"])

    again = train_module.train(
        tiny_config(tiny_dataset, tmp_path / "scored", "run_name=again", "tracking.enabled=false")
    )
    assert json.loads((again.run_dir / "run.json").read_text())["evaluation_feature_store"] == {
        "computed": 0,
        "reused": val + holdout,
    }
