"""Best model across phases: the pure rules (which epoch a phase kept, which phase wins), warm-up steps."""

from __future__ import annotations

import math

import pytest

from vinted_classifier.experiments.phases import choose_phase, is_better, kept_epoch, warmup_steps


def test_improvement_is_strict_and_follows_the_mode():
    assert is_better(0.5, 0.6, "min") and not is_better(0.6, 0.6, "min") and not is_better(0.7, 0.6, "min")
    assert is_better(0.7, 0.6, "max") and not is_better(0.6, 0.6, "max")
    assert is_better(0.7, None, "min")
    assert not is_better(math.nan, 0.6, "min"), "a diverged epoch never wins"
    with pytest.raises(ValueError, match="'avg'"):
        is_better(1.0, 0.0, "avg")


def test_kept_epoch_is_the_first_best_with_restore_else_the_last():
    values = [0.9, 0.5, 0.5, 0.7]
    assert kept_epoch(values, "min", restored_best=True) == (1, 0.5)
    assert kept_epoch(values, "min", restored_best=False) == (3, 0.7)
    assert kept_epoch(values, "max", restored_best=True) == (0, 0.9)
    with pytest.raises(ValueError, match="no epochs"):
        kept_epoch([], "min", restored_best=True)


def test_fine_tuning_that_never_beats_phase_1_keeps_phase_1():
    choice = choose_phase("val_loss", "min", 0.40, [0.45, 0.41, 0.40])
    assert choice.kept_phase == "head" and choice.finetune_best_epoch is None
    assert choice.finetune_best_value is None
    assert "no fine-tune epoch beat phase 1's val_loss=0.4000" in choice.describe()
    assert choice.to_dict()["finetune_values"] == [0.45, 0.41, 0.40]


def test_the_best_fine_tune_epoch_that_beats_phase_1_wins():
    choice = choose_phase("val_loss", "min", 0.40, [0.45, 0.31, 0.35])
    assert (choice.kept_phase, choice.finetune_best_epoch, choice.finetune_best_value) == ("finetune", 1, 0.31)
    assert choice.describe() == "fine-tune epoch 2 is the model: val_loss=0.3100 (phase 1 0.4000)"
    accuracy = choose_phase("val_cc3_top1", "max", 0.80, [0.79, 0.82])
    assert (accuracy.kept_phase, accuracy.finetune_best_epoch) == ("finetune", 1)


def test_without_phase_1_the_best_fine_tune_epoch_is_the_model():
    choice = choose_phase("val_loss", "min", None, [0.5, 0.4, 0.45])
    assert (choice.kept_phase, choice.finetune_best_epoch) == ("finetune", 1)
    assert choose_phase("val_loss", "min", 0.3, []).kept_phase == "head"


def test_warmup_steps_count_partial_batches():
    assert warmup_steps(1.0, 100, 32) == 4  # ceil(100 / 32) steps per epoch
    assert warmup_steps(0.5, 100, 32) == 2
    assert warmup_steps(0.0, 100, 32) == 0
    with pytest.raises(ValueError, match="-1"):
        warmup_steps(-1, 100, 32)
