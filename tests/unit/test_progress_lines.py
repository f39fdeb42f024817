"""Progress bars show only where a person watches; the epoch line carries the few numbers a person reads."""

from __future__ import annotations

import io
import logging

import numpy as np

from vinted_classifier import progress


def test_epoch_line_reads_loss_top1_top2_and_mean_tag_f1():
    logs = {
        "loss": 0.8123,
        "val_loss": 0.9,
        "val_cc3_top1": 0.84,
        "val_cc3_top2": 0.93,
        "val_tags_precision_polka_dot": 0.8,
        "val_tags_recall_polka_dot": 0.6,
        "val_tags_precision_floral": 1.0,
        "val_tags_recall_floral": 1.0,
        "val_tags_auc_floral": 0.99,
        "cc3_top1": 0.9,
    }
    line = progress.epoch_line(logs, phase="head", epoch=3, epochs=30, seconds=12.34, category_output="cc3")
    # polka dot F1 = 2*0.8*0.6/1.4 = 0.6857; floral 1.0; mean 0.8429
    assert line == "head  3/30  loss 0.812  val_loss 0.900  top-1 0.840  top-2 0.930  tag F1 0.843  12.3s"


def test_epoch_line_marks_missing_values():
    line = progress.epoch_line({"loss": 1.0}, phase="finetune", epoch=1, epochs=2, seconds=1.0, category_output="cc3")
    assert line == "finetune 1/2  loss 1.000  val_loss -  top-1 -  top-2 -  tag F1 -  1.0s"


def test_bars_are_off_outside_a_terminal_and_follow_the_switches(monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert not progress.enabled()  # pytest captures stderr: not a terminal
    with progress.shown(True):
        assert progress.enabled()
        with progress.shown(False):
            assert not progress.enabled()
    monkeypatch.setenv(progress.ENV_VAR, "1")
    assert progress.enabled()


def test_a_shown_bar_writes_counts_and_a_hidden_one_nothing(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    with progress.shown(True):
        assert list(progress.bar(range(5), desc="checking images")) == [0, 1, 2, 3, 4]
    assert "checking images:" in stream.getvalue() and "0/5 [" in stream.getvalue()  # count of total, then ETA
    stream.truncate(0)
    stream.seek(0)
    with progress.shown(False):
        assert sum(progress.bar(range(5), desc="quiet")) == 10
    assert stream.getvalue() == ""


def test_quiet_when_not_verbose_hides_bars_inside_the_call():
    class Cfg:
        class train:  # noqa: N801 - mimics cfg.train.verbose
            verbose = 0

    seen = progress.quiet_when_not_verbose(lambda cfg: progress.enabled())
    with progress.shown(True):
        assert seen(Cfg()) is False
        Cfg.train.verbose = 1
        assert seen(Cfg()) is True


def test_without_a_terminal_long_steps_print_plain_lines_with_count_rate_and_eta(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    monkeypatch.setattr(logging.getLogger("vinted_classifier"), "level", logging.INFO)
    monkeypatch.setattr(progress, "LINE_INTERVAL_SECONDS", 0.0)  # every item is "long" here
    assert not progress.enabled() and progress.lines_enabled()
    assert list(progress.bar(range(3), desc="caching features", unit="batch")) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "caching features: 1/3 batch (33%)",
        "caching features: 2/3 batch (67%)",
        "caching features: 3/3 batch (100%)",
    ]
    assert all(" batch/s, ETA " in line for line in lines)
    with progress.shown(False):
        assert not progress.lines_enabled()
        assert sum(progress.bar(range(3), desc="quiet")) == 3
    assert capsys.readouterr().err == ""


def test_a_short_step_prints_nothing_and_lines_say_count_rate_eta_exactly(monkeypatch, capsys):
    monkeypatch.setattr(logging.getLogger("vinted_classifier"), "level", logging.INFO)
    assert sum(progress.PlainLines(range(4), total=None, desc="quick", unit="img", interval=3600)) == 6
    assert capsys.readouterr().err == ""
    line = progress.progress_line("caching", 120, 240, 30.0, "batch")
    assert line == "caching: 120/240 batch (50%), 4.0 batch/s, ETA 0:30"
    assert progress.progress_line("scoring", 0, 10, 5.0, "img") == "scoring: 0/10 img (0%), 0.0 img/s, ETA ?"
    assert progress.progress_line("reading", 50, None, 4000.0, "row") == "reading: 50 row, 0.0 row/s, 1:06:40 elapsed"


def test_long_training_epochs_print_batch_lines_without_a_terminal(monkeypatch, capsys):
    # Keras only here: the other tests of this module run without TensorFlow.
    import keras  # noqa: PLC0415

    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    monkeypatch.setattr(logging.getLogger("vinted_classifier"), "level", logging.INFO)
    monkeypatch.setattr(progress, "LINE_INTERVAL_SECONDS", 0.0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        np.zeros((6, 2)),
        np.zeros((6, 1)),
        batch_size=2,
        epochs=2,
        verbose=0,
        callbacks=[progress.fit_lines_callback("finetune")],
    )
    lines = [line.split(",")[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        f"finetune epoch {e}/2: {b}/3 batch ({p})" for e in (1, 2) for b, p in ((1, "33%"), (2, "67%"), (3, "100%"))
    ]
