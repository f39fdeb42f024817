"""The time-budget planner: exact arithmetic on given step times (no clock involved)."""

from __future__ import annotations

import pytest

from vinted_classifier.experiments.budget import StepTimes, Workload, plan_epochs

# Binary-exact numbers, so every planned second can be compared with ==.
TIMES = StepTimes(backbone_seconds_per_image=0.5, head_seconds_per_step=0.25, finetune_seconds_per_step=2.0)
WORK = Workload(train_images=100, val_images=20, holdout_images=20, batch_size=10, cached_views=3)
# fixed = caching (300 cached rows + 20 val) x 0.5 + evaluation (20 + 20) x 0.5 = 160 + 20 = 180 s
# head epoch = ceil(300 / 10) steps x 0.25 = 7.5 s; fine-tune epoch = 10 steps x 2 + 20 val x 0.5 = 30 s
# phase 2 also pays phase 1's baseline on val once: 20 x 0.5 = 10 s


def test_head_epochs_fill_a_budget_that_leaves_no_room_for_fine_tuning():
    plan = plan_epochs(300, TIMES, WORK, max_head_epochs=30, max_finetune_epochs=2)
    assert (plan.fixed_seconds, plan.head_epoch_seconds, plan.finetune_epoch_seconds) == (180, 7.5, 30)
    assert (plan.head_epochs, plan.finetune_epochs) == (16, 0)  # floor(120 / 7.5)
    assert plan.predicted_seconds == 300 and plan.fits


def test_configured_head_epochs_cap_phase_1_and_phase_2_gets_the_rest():
    plan = plan_epochs(600, TIMES, WORK, max_head_epochs=12, max_finetune_epochs=5)
    assert (plan.head_epochs, plan.finetune_epochs) == (12, 5)  # room for floor((330 - 10) / 30) = 10
    assert plan.predicted_seconds == 180 + 12 * 7.5 + 10 + 5 * 30
    wide = plan_epochs(600, TIMES, WORK, max_head_epochs=12, max_finetune_epochs=20)
    assert wide.finetune_epochs == 10 and wide.predicted_seconds == 580 and wide.fits
    assert "12 head epoch(s) x 7.5s + 10 fine-tune epoch(s) x 30.0s" in wide.describe()


def test_a_budget_below_the_fixed_cost_gets_the_minimum_plan_and_says_so():
    plan = plan_epochs(100, TIMES, WORK, max_head_epochs=30, max_finetune_epochs=2)
    assert (plan.head_epochs, plan.finetune_epochs, plan.predicted_seconds) == (1, 0, 187.5)
    assert not plan.fits and "does NOT fit" in plan.describe()


def test_without_the_cache_a_head_epoch_is_a_backbone_pass():
    uncached = Workload(100, 20, 20, 10, cached_views=3, cache_features=False)
    plan = plan_epochs(400, TIMES, uncached, max_head_epochs=30, max_finetune_epochs=2)
    # fixed = evaluation only (20 s); head epoch = (100 + 20) x 0.5 = 60 s -> floor(380 / 60) = 6
    assert (plan.fixed_seconds, plan.head_epoch_seconds, plan.head_epochs, plan.finetune_epochs) == (20, 60, 6, 0)


def test_no_phase_1_means_no_caching_cost():
    plan = plan_epochs(100, TIMES, WORK, max_head_epochs=0, max_finetune_epochs=4)
    assert (plan.fixed_seconds, plan.head_epochs, plan.finetune_epochs) == (20, 0, 2)  # floor((80 - 10) / 30)


def test_bad_budgets_and_workloads_are_named():
    with pytest.raises(ValueError, match="-5"):
        plan_epochs(-5, TIMES, WORK, max_head_epochs=1, max_finetune_epochs=0)
    with pytest.raises(ValueError, match="train_images=0"):
        plan_epochs(60, TIMES, Workload(0, 1, 1, 4, 1), max_head_epochs=1, max_finetune_epochs=0)
