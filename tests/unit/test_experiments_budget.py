"""The time-budget planner: exact arithmetic on given step times (no clock involved)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vinted_classifier.experiments.budget import (
    BudgetTooSmall,
    StepTimes,
    Workload,
    finetune_epochs_left,
    plan_budget,
    stratified_subsample,
)

# Binary-exact numbers, so every planned second can be compared with ==.
TIMES = StepTimes(backbone_seconds_per_image=0.5, head_seconds_per_step=0.25, finetune_seconds_per_step=2.0)
WORK = Workload(
    train_images=100, val_images=20, holdout_images=20, batch_size=10, augmented_views=2, min_train_images=10
)
# evaluation = 20 holdout x 0.5 = 10 s (val is scored from its cached features), 20 s with phase 2
# (it changes the backbone, so val is scored on the images again)
# caching with v augmented views = (100 x (1 + v) + 20 val) x 0.5 = 160 / 110 / 60 s for v = 2 / 1 / 0
# head epoch = ceil(100 x (1 + v) / 10) steps x 0.25 = 7.5 / 5 / 2.5 s
# fine-tune epoch = 10 steps x 2 + 20 val x 0.5 = 30 s, plus phase 1's baseline on val once: 10 s


def plan(budget, work=WORK, times=TIMES, **kwargs):
    return plan_budget(budget, times, work, **{"max_head_epochs": 30, "max_finetune_epochs": 5, **kwargs})


def test_a_large_budget_buys_every_view_every_head_epoch_and_phase_2():
    p = plan(600)
    assert (p.augmented_views, p.head_epochs, p.finetune_epochs, p.train_images) == (2, 30, 5, 100)
    assert (p.caching_seconds, p.evaluation_seconds, p.head_epoch_seconds, p.finetune_epoch_seconds) == (
        160,
        20,
        7.5,
        30,
    )
    # room for floor((600 - 395 - 10 baseline - 10 val on images) / 30) = 6 fine-tune epochs, capped at the 5
    assert p.predicted_seconds == 20 + 160 + 30 * 7.5 + 10 + 5 * 30 == 565 and p.fits and not p.subsampled


def test_phase_2_is_dropped_when_the_rest_leaves_less_than_one_fine_tune_epoch():
    p = plan(420)
    assert (p.augmented_views, p.head_epochs, p.finetune_epochs, p.evaluation_seconds) == (2, 30, 0, 10)
    assert p.predicted_seconds == 395  # 420 - 395 - 10 baseline - 10 val on images = 5 s < one 30 s epoch


def test_views_are_dropped_before_the_floor_of_head_epochs():
    p = plan(200)  # 2 views leave 30 s = 4 head epochs < 10; 1 view leaves 80 s = 16 epochs
    assert (p.augmented_views, p.head_epochs, p.finetune_epochs, p.caching_seconds) == (1, 16, 0, 110)
    assert p.predicted_seconds == 200 and p.fits
    p = plan(140)  # 1 view leaves 20 s = 4 epochs; the clean view alone leaves 70 s = 28 epochs
    assert (p.augmented_views, p.head_epochs, p.predicted_seconds) == (0, 28, 140)
    assert "100 training image(s) x (1 + 0 augmented view(s))" in p.describe()


def test_without_enough_time_for_the_whole_split_a_stratified_subsample_is_planned():
    p = plan(90)  # the whole split: 90 - 70 = 20 s = 8 head epochs < 10
    # n images cost (n + 20) x 0.5 to cache and ceil(n / 10) x 0.25 per epoch: 90 leaves 25 s >= 10 x 2.25
    # (91 leaves 24.5 s < 10 x 2.5), and 25 s buy floor(25 / 2.25) = 11 epochs
    assert (p.train_images, p.subsampled, p.augmented_views, p.head_epochs, p.finetune_epochs) == (90, True, 0, 11, 0)
    assert p.predicted_seconds == 10 + 55 + 11 * 2.25 == 89.75 and p.fits
    assert "90 training image(s) (stratified subsample)" in p.describe()


def test_nothing_that_fits_within_15_percent_is_refused_with_the_minimum_it_needs():
    # the smallest run worth training: 10 images, the floor of 10 head epochs = 10 + (10 + 20) x 0.5 + 10 x 0.25
    # = 27.5 s > 23 x 1.15 = 26.45
    message = r"10 training image\(s\), no augmented views, 10 head epoch\(s\).*needs 0\.5 min.*at least 0\.4 min"
    with pytest.raises(BudgetTooSmall, match=message) as refused:
        plan(23)
    assert refused.value.needed_seconds == 24.0  # 0.4 min: 27.5 s / 1.15 = 23.9 s, rounded up to a tenth of a minute
    busy = replace(WORK, predict_images=4)  # scored after training (make all): 2 s more
    with pytest.raises(BudgetTooSmall, match=r"20 val \+ 20 holdout image\(s\) \+ 4 scored after training\): it needs"):
        plan(23, busy)
    p = plan(24)  # 27.5 <= 24 x 1.15 = 27.6: run the minimum, saying it is over
    assert (p.train_images, p.head_epochs, p.predicted_seconds, p.fits) == (10, 10, 27.5, False)
    assert "over by 15% (minimum plan)" in p.describe()


def test_without_the_cache_a_head_epoch_is_a_backbone_pass_and_views_cost_nothing():
    uncached = Workload(100, 20, 20, 10, augmented_views=2, cache_features=False)
    p = plan(400, uncached, min_head_epochs=3)
    # evaluation 20 s; head epoch = (100 + 20) x 0.5 = 60 s -> floor(380 / 60) = 6; nothing left for phase 2
    assert (p.caching_seconds, p.head_epoch_seconds, p.head_epochs, p.augmented_views, p.finetune_epochs) == (
        0,
        60,
        6,
        0,
        0,
    )


def test_prediction_and_overhead_in_the_same_command_are_planned():
    busy = Workload(100, 20, 20, 10, augmented_views=2, predict_images=40, overhead_seconds=5.0)
    p = plan(600, busy)  # phase 2 runs, so val is scored on the images too
    assert p.evaluation_seconds == (20 + 20 + 40) * 0.5 + 5 == 45
    assert p.predicted_seconds == 45 + 160 + 30 * 7.5 + 10 + 5 * 30


def test_what_the_feature_store_already_holds_is_not_planned_again():
    # An earlier run stored every training image's clean view, half of their first augmented view, all of val
    # and half of holdout: caching 2 views = (100 x (0 + 0.5 + 1) + 20 x 0) x 0.5 = 75 s, evaluation 10 x 0.5 = 5 s
    stored = replace(WORK, stored_train_views=(1.0, 0.5), stored_val=1.0, stored_holdout=0.5)
    p = plan(200, stored)  # with nothing stored: 1 view, 16 head epochs (above)
    assert (p.augmented_views, p.head_epochs, p.caching_seconds, p.evaluation_seconds) == (2, 16, 75, 5)
    assert p.predicted_seconds == 5 + 75 + 16 * 7.5 == 200
    # Phase 2 changes the backbone: val and holdout are then scored on the images, whatever is stored.
    p = plan(600, stored)
    assert (p.finetune_epochs, p.evaluation_seconds) == (5, 20)
    # Without the cache nothing reads the store.
    p = plan(400, replace(stored, cache_features=False), min_head_epochs=3)
    assert (p.caching_seconds, p.evaluation_seconds, p.head_epoch_seconds) == (0, 20, 60)


def test_no_phase_1_means_no_caching_cost():
    p = plan(100, max_head_epochs=0, max_finetune_epochs=4)
    assert (p.caching_seconds, p.head_epochs, p.finetune_epochs) == (0, 0, 2)  # floor((100 - 20 - 10) / 30)


def test_time_left_short_of_a_whole_view_buys_that_view_for_a_share_of_the_images():
    wide = replace(WORK, batch_size=50)  # head epochs of 1 s per 200 rows: cheap next to a 50 s view
    # 2 views: 10 + 160 = 170 s leave no head epoch; 1 view: 10 + 110 + 30 epochs x 1 s = 150 s leaves 20 s,
    # and p more images cost p x 0.5 s to cache plus 30 x ceil((200 + p) / 50) x 0.25 s of epochs:
    # p = 25 -> 12.5 + 7.5 = 20 s (fits), p = 26 -> 13 + 7.5 = 20.5 s (does not)
    p = plan(170, wide)
    assert (p.augmented_views, p.head_epochs, p.partial_view_images, p.finetune_epochs) == (1, 30, 25, 0)
    assert (p.caching_seconds, p.head_epoch_seconds, p.partial_view_share) == (122.5, 1.25, 0.25)
    assert p.predicted_seconds == 10 + 122.5 + 30 * 1.25 == 170 and p.fits
    assert "x (1 + 1 augmented view(s)) (+ 1 more for 25 of them, 25%) cached" in p.describe()
    # What the store already holds of the next view costs no backbone pass: only the epochs grow.
    held = replace(wide, stored_train_views=(0.0, 0.0, 0.25))  # 2 views: 10 + 147.5 s leave 8 epochs < 10
    assert plan(170, held).partial_view_images == 33  # 33 x 0.5 x 0.75 = 12.375 s + 7.5 s; 34: 12.75 + 7.5 s
    # No partial view beyond the configured views, none when whole views already take the time.
    assert plan(600).partial_view_images == 0 and plan(200).partial_view_images == 0


def test_augmented_views_are_priced_at_their_own_measured_cost():
    from vinted_classifier.experiments.budget import caching_seconds

    slower = replace(TIMES, augmented_seconds_per_image=0.75)  # the augmenter on top of the forward pass
    # clean view and val at 0.5 s: (100 + 20) x 0.5 = 60 s; 2 augmented views of 100 at 0.75 s: 150 s
    assert caching_seconds(slower, WORK, 100, 2) == 60 + 150
    assert caching_seconds(slower, WORK, 100, 1, partial=40) == 60 + (100 + 40) * 0.75
    assert caching_seconds(TIMES, WORK, 100, 2) == 160  # 0: priced as the clean view
    p = plan(200, times=slower)  # 10 s evaluation + 60 + 75 s caching leave 55 s = 11 head epochs (16 above)
    assert (p.augmented_views, p.head_epochs, p.caching_seconds, p.predicted_seconds) == (1, 11, 135, 200)


def test_the_main_job_scope_prices_prediction_export_and_release_gate(tmp_path):
    import pandas as pd

    from vinted_classifier.config import load_config
    from vinted_classifier.experiments.budget import (
        MAIN_JOB_FIXED_SECONDS,
        OVERHEAD_SECONDS,
        evaluation_seconds,
        workload,
    )

    pd.DataFrame({"uuid": [f"t{i}" for i in range(7)]}).to_parquet(tmp_path / "test.parquet", index=False)
    served = tmp_path / "saved_model" / "my_model"
    common = [f"data.data_dir={tmp_path}", f"export.saved_model_dir={served.parent}", "monitoring.reference_images=4"]
    prepared = _Prepared({"train": 30, "val": 6, "holdout": 9}, categories=3)
    assert workload(load_config(None, common), prepared).predict_images == 0  # scope train: this command only
    cfg = load_config(None, [*common, "train.time_budget_scope=main_job"])
    work = workload(cfg, prepared)
    # predict 7 test images + the gate's 9 held-out rows; the export's reference covers 4 held-out images
    assert (work.predict_images, work.reference_images) == (7 + 9, 4)
    assert work.overhead_seconds == OVERHEAD_SECONDS + MAIN_JOB_FIXED_SECONDS
    # Training writes the reference from its held-out scoring while the backbone is the store's; after
    # phase 2 (val on the images) the export scores the 4 images itself.
    overhead = work.overhead_seconds
    assert evaluation_seconds(TIMES, work, val_on_images=False) == (9 + 16) * 0.5 + overhead
    assert evaluation_seconds(TIMES, work, val_on_images=True) == (6 + 9 + 16 + 4) * 0.5 + overhead
    (served / "3").mkdir(parents=True)  # a served version: the gate scores the held-out rows with it too
    assert workload(cfg, prepared).predict_images == 7 + 2 * 9


class _Prepared:
    """What ``workload`` reads of prepared data: split paths and the category vocabulary."""

    def __init__(self, sizes: dict[str, int], categories: int):
        self._sizes = sizes
        self.vocab = type("Vocab", (), {"categories": [f"C{i}" for i in range(categories)]})()

    def paths(self, split: str) -> list[str]:
        return [f"{split}{i}.jpeg" for i in range(self._sizes[split])]


def test_bad_budgets_and_workloads_are_named():
    with pytest.raises(ValueError, match="-5"):
        plan(-5)
    with pytest.raises(ValueError, match="train_images=0"):
        plan(60, Workload(0, 1, 1, 4, 1))


def test_stratified_subsample_keeps_each_category_share_and_is_reproducible():
    codes = np.array([0] * 60 + [1] * 30 + [2] * 10)
    for size, expected in [(10, [6, 3, 1]), (5, [3, 1, 1]), (4, [2, 1, 1]), (2, [1, 1, 0]), (100, [60, 30, 10])]:
        rows = stratified_subsample(codes, size, seed=7)
        assert len(rows) == size and len(set(rows)) == size
        assert np.bincount(codes[rows], minlength=3).tolist() == expected, size
    np.testing.assert_array_equal(stratified_subsample(codes, 10, seed=7), stratified_subsample(codes, 10, seed=7))
    with pytest.raises(ValueError, match="subsample size 0 must be between 1 and the 100 training rows"):
        stratified_subsample(codes, 0, seed=7)


def test_phase_2_shrinks_when_phase_1_ran_slower_than_planned():
    p = plan(600).to_dict()  # caching 160 s, head epochs 7.5 s, evaluation 20 s, baseline 10 s, 5 x 30 s fine-tune
    # on time: phase 1 took its predicted 160 + 30 x 7.5 + 20 s start = 405 s; 215 s left -> floor(185 / 30) = 6, capped
    assert finetune_epochs_left(p, seconds_left=215, phase1_seconds=405, head_epochs_run=30) == 5
    assert finetune_epochs_left(p, seconds_left=215, phase1_seconds=20, head_epochs_run=30) == 5  # faster: no credit
    # early stopping after 10 epochs: predicted 255 s; it took 510 s (2x): 215 s left count as 107.5 -> floor(77.5 / 30)
    assert finetune_epochs_left(p, seconds_left=215, phase1_seconds=510, head_epochs_run=10) == 2
    assert finetune_epochs_left(p, seconds_left=50, phase1_seconds=405, head_epochs_run=30) == 0  # 20 s < one epoch
    assert finetune_epochs_left(dict(p, finetune_epochs=0), seconds_left=1e6, phase1_seconds=1, head_epochs_run=1) == 0
