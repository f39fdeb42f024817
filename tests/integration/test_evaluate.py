"""Tests for vinted_classifier.evaluate on hand-made and seeded random predictions."""

from __future__ import annotations

import json
import warnings

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from vinted_classifier.evaluate import (
    FIGURE_NAMES,
    confusion_matrix_figure,
    evaluate_predictions,
    format_report,
    learning_curves_figure,
    pr_figure,
    roc_figure,
    save_figures,
    tag_confusion_figure,
    top2,
    tune_thresholds,
)

CATS = ["BLOUSES", "DRESSES", "JEANS", "SKIRTS", "TOPS"]
TAGS = ["polka dot", "floral", "checker"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def random_preds():
    rng = np.random.default_rng(1234)
    n, c, t = 240, len(CATS), len(TAGS)
    y_cat = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y_cat] += 1.0  # better than chance, far from perfect
    p_cat = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_tags = (rng.random((n, t)) < np.array([0.15, 0.3, 0.5])).astype(int)
    p_tags = np.clip(0.35 * y_tags + rng.random((n, t)) * 0.7, 0.0, 1.0)
    thresholds = np.array([0.45, 0.55, 0.6])
    return y_cat, p_cat, y_tags, p_tags, thresholds


@pytest.fixture(scope="module")
def random_metrics(random_preds):
    y_cat, p_cat, y_tags, p_tags, thr = random_preds
    return evaluate_predictions(y_cat, p_cat, y_tags, p_tags, categories=CATS, tag_names=TAGS, thresholds=thr)


# ----------------------------------------------------------------------- top2


def test_top2_constructed_with_tie_to_lower_code():
    p = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3], [0.2, 0.4, 0.4]])
    np.testing.assert_array_equal(top2(p), [[1, 2], [2, 0], [0, 2], [1, 2]])
    assert top2(p).dtype == np.int64


def test_top2_rejects_single_category():
    with pytest.raises(ValueError, match="two categories"):
        top2(np.ones((3, 1)))


def test_top2_accuracy_constructed_case():
    p_cat = np.array(
        [
            [0.6, 0.3, 0.1],  # y=0: top-1 hit
            [0.5, 0.4, 0.1],  # y=1: second choice -> top-2 hit only
            [0.7, 0.2, 0.1],  # y=2: last -> miss
            [0.1, 0.2, 0.7],  # y=1: second -> top-2 hit only
        ]
    )
    y_cat = np.array([0, 1, 2, 1])
    y_tags = np.array([[1], [0], [1], [0]])
    p_tags = np.array([[0.9], [0.1], [0.8], [0.2]])
    m = evaluate_predictions(
        y_cat, p_cat, y_tags, p_tags, categories=["a", "b", "c"], tag_names=["t"], thresholds=[0.5]
    )
    assert m["n"] == 4
    assert m["top1_accuracy"] == pytest.approx(0.25)
    assert m["top2_accuracy"] == pytest.approx(0.75)
    assert m["tags"]["per_tag"]["t"]["f1"] == pytest.approx(1.0)


# ----------------------------------------------------------------------- sklearn parity


def test_category_metrics_match_sklearn(random_preds, random_metrics):
    y_cat, p_cat, *_ = random_preds
    m = random_metrics
    pred = p_cat.argmax(axis=1)
    labels = list(range(len(CATS)))
    assert m["n"] == len(y_cat)
    assert m["top1_accuracy"] == pytest.approx(accuracy_score(y_cat, pred))
    assert m["top2_accuracy"] == pytest.approx(top_k_accuracy_score(y_cat, p_cat, k=2, labels=labels))
    assert 0.2 < m["top1_accuracy"] < m["top2_accuracy"] < 1.0  # the fixture is non-trivial

    prec, rec, f1, sup = precision_recall_fscore_support(y_cat, pred, labels=labels, zero_division=0)
    for i, name in enumerate(CATS):
        got = m["categories"]["per_class"][name]
        assert got["precision"] == pytest.approx(prec[i])
        assert got["recall"] == pytest.approx(rec[i])
        assert got["f1"] == pytest.approx(f1[i])
        assert got["support"] == sup[i]
    assert m["categories"]["confusion_matrix"] == confusion_matrix(y_cat, pred, labels=labels).tolist()
    assert m["categories"]["macro_f1"] == pytest.approx(f1_score(y_cat, pred, average="macro"))
    assert m["categories"]["labels"] == CATS


def test_tag_metrics_match_sklearn(random_preds, random_metrics):
    _, _, y_tags, p_tags, thr = random_preds
    tags = random_metrics["tags"]
    pred = (p_tags >= thr).astype(int)
    prec, rec, f1, sup = precision_recall_fscore_support(y_tags, pred, average=None, zero_division=0)
    for j, name in enumerate(TAGS):
        got = tags["per_tag"][name]
        assert got["threshold"] == pytest.approx(thr[j])
        assert got["precision"] == pytest.approx(prec[j])
        assert got["recall"] == pytest.approx(rec[j])
        assert got["f1"] == pytest.approx(f1[j])
        assert got["support"] == sup[j]
        assert got["n_predicted"] == pred[:, j].sum()
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y_tags[:, j], p_tags[:, j]))
        assert got["average_precision"] == pytest.approx(average_precision_score(y_tags[:, j], p_tags[:, j]))
        (tn, fp), (fn, tp) = got["confusion_matrix"]
        assert [tn, fp, fn, tp] == confusion_matrix(y_tags[:, j], pred[:, j]).ravel().tolist()
        # Independent brute force: best TPR over every cut with FPR <= 5%.
        yj, pj = y_tags[:, j], p_tags[:, j]
        best = max(
            ((pj >= t) & (yj == 1)).sum() / yj.sum()
            for t in np.append(np.unique(pj), np.inf)
            if ((pj >= t) & (yj == 0)).sum() / (yj == 0).sum() <= 0.05
        )
        assert got["tpr_at_low_fpr"] == pytest.approx(best)
    assert tags["macro_f1"] == pytest.approx(f1_score(y_tags, pred, average="macro"))
    assert tags["low_fpr"] == 0.05
    assert tags["names"] == TAGS


def test_result_is_strict_json(random_metrics):
    text = json.dumps(random_metrics, allow_nan=False)
    assert json.loads(text) == random_metrics


# ----------------------------------------------------------------------- thresholds


def test_tune_thresholds_finds_known_optimum():
    # Sorted by score. Cut after row 3 (t in (0.65, 0.7]): F1 = 6/7; at 0.4 or 0.5 (four
    # predicted, three right): F1 = 0.75; cut after row 5 (t in (0.2, 0.3]): F1 = 8/9 (best).
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.65, 0.3, 0.2, 0.1, 0.05])
    thr = tune_thresholds(y[:, None], p[:, None])
    assert thr.shape == (1,)
    assert thr[0] == pytest.approx(0.25)  # midpoint of 0.2 and 0.3
    assert f1_score(y, p >= thr[0]) == pytest.approx(8 / 9)
    assert f1_score(y, p >= 0.4) == pytest.approx(0.75)
    assert f1_score(y, p >= 0.5) == pytest.approx(0.75)
    # Brute force over a dense grid: nothing beats the tuned threshold.
    grid_best = max(f1_score(y, p >= t) for t in np.linspace(0, 1, 1001))
    assert f1_score(y, p >= thr[0]) == pytest.approx(grid_best)


def test_tune_thresholds_with_grid_prefers_closest_to_half():
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.65, 0.3, 0.2, 0.1, 0.05])
    # Every grid point in (0.2, 0.3] is optimal; 0.30 is the one nearest 0.5.
    thr = tune_thresholds(y[:, None], p[:, None], grid=np.linspace(0, 1, 101))
    assert thr[0] == pytest.approx(0.30)


def test_tune_thresholds_tie_break():
    # F1 = 2/3 both at t in (0.8, 0.9] (one predicted) and at t <= 0.6 (all predicted).
    y = np.array([[1], [0], [0], [1]])
    p = np.array([[0.9], [0.8], [0.7], [0.6]])
    assert tune_thresholds(y, p)[0] == 0.5  # 0.5 itself is among the optimal thresholds
    assert tune_thresholds(y, p, grid=[0.3, 0.85])[0] == pytest.approx(0.3)  # |0.3-0.5| < |0.85-0.5|
    assert tune_thresholds(y, p, grid=[0.35, 0.65])[0] == pytest.approx(0.35)  # 0.65 is worse (F1 0.4)


def test_tune_thresholds_per_tag_and_no_positive_fallback():
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    p = np.array([[0.2, 0.9, 0.95], [0.15, 0.8, 0.1], [0.1, 0.7, 0.9], [0.05, 0.6, 0.05]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thr = tune_thresholds(y, p)
    assert thr[0] == pytest.approx(0.125)  # separates {0.2, 0.15} from {0.1, 0.05}
    assert thr[1] == 0.5  # tag without positives: documented fallback
    assert thr[2] == pytest.approx(0.5)  # (0.1, 0.9] separates perfectly and contains 0.5


def test_tune_thresholds_validates_inputs():
    with pytest.raises(ValueError, match="0/1"):
        tune_thresholds(np.array([[2], [0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="shape"):
        tune_thresholds(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="grid"):
        tune_thresholds(np.ones((2, 1)), np.ones((2, 1)), grid=[])


# ----------------------------------------------------------------------- low FPR, degenerate


def test_tpr_at_low_fpr_constructed():
    neg = np.concatenate(([0.95], np.linspace(0.01, 0.5, 19)))  # 20 negatives
    pos = np.array([0.99, 0.97, 0.9, 0.85, 0.6, 0.55, 0.45, 0.3, 0.2, 0.1])  # 10 positives
    y_tags = np.concatenate((np.zeros(20), np.ones(10))).astype(int)[:, None]
    p_tags = np.concatenate((neg, pos))[:, None]
    y_cat = np.zeros(30, dtype=int)
    p_cat = np.tile([0.9, 0.1], (30, 1))

    def tpr(low_fpr):
        m = evaluate_predictions(
            y_cat,
            p_cat,
            y_tags,
            p_tags,
            categories=["a", "b"],
            tag_names=["t"],
            thresholds=[0.5],
            low_fpr=low_fpr,
        )
        return m["tags"]["per_tag"]["t"]["tpr_at_low_fpr"]

    assert tpr(0.0) == pytest.approx(0.2)  # only the two scores above the 0.95 negative
    assert tpr(0.05) == pytest.approx(0.6)  # one FP allowed: everything above 0.5
    assert tpr(0.1) == pytest.approx(0.6)  # two FPs (0.95, 0.5): the next cut admits no positive
    assert tpr(0.15) == pytest.approx(0.7)  # three FPs: cut just above 0.4456 admits 0.45
    assert tpr(1.0) == pytest.approx(1.0)


def test_degenerate_inputs_do_not_crash_or_warn(tmp_path):
    y_cat = np.array([0, 0, 1, 1, 0, 1])  # category 2 is absent and never predicted
    p_cat = np.array([[0.7, 0.2, 0.1]] * 3 + [[0.2, 0.7, 0.1]] * 3)
    y_tags = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0]])
    p_tags = np.array([[0.1, 0.9, 0.8]] * 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate_predictions(
            y_cat,
            p_cat,
            y_tags,
            p_tags,
            categories=["a", "b", "c"],
            tag_names=["none", "all", "half"],
            thresholds=[0.5, 0.5, 0.5],
            slices=pd.Series(["x"] * 6),
        )
        paths = save_figures(
            y_cat,
            p_cat,
            y_tags,
            p_tags,
            categories=["a", "b", "c"],
            tag_names=["none", "all", "half"],
            thresholds=[0.5, 0.5, 0.5],
            out_dir=tmp_path,
        )
    json.dumps(m, allow_nan=False)
    none_tag, all_tag, half_tag = (m["tags"]["per_tag"][k] for k in ("none", "all", "half"))
    assert none_tag["roc_auc"] is None and none_tag["average_precision"] is None
    assert none_tag["tpr_at_low_fpr"] is None
    assert none_tag["precision"] is None and none_tag["recall"] is None and none_tag["f1"] is None
    assert none_tag["confusion_matrix"] == [[6, 0], [0, 0]]
    assert all_tag["roc_auc"] is None and all_tag["average_precision"] == pytest.approx(1.0)
    assert all_tag["f1"] == pytest.approx(1.0)
    assert half_tag["roc_auc"] == pytest.approx(0.5)  # constant scores
    assert half_tag["f1"] == pytest.approx(2 * 3 / (6 + 3))
    # Undefined F1 is skipped by the macro average, not counted as 0.
    assert m["tags"]["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    c = m["categories"]
    assert c["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert c["confusion_matrix"][2] == [0, 0, 0]
    assert c["macro_f1"] == pytest.approx(f1_score(y_cat, p_cat.argmax(1), average="macro"))
    assert list(m["slices"]) == ["OTHER"]  # a 6-row slice is below the n >= 10 floor
    assert m["slices"]["OTHER"]["n"] == 6 and m["slices"]["OTHER"]["members"] == ["x"]
    assert all(p.exists() for p in paths.values())
    assert "n/a" in format_report(m)


# ----------------------------------------------------------------------- slices


def test_slices_group_small_values_into_other():
    colours = ["red"] * 15 + ["blue"] * 10 + ["green"] * 3 + ["pink"] * 2 + [None] * 2
    n = len(colours)
    y_cat = np.zeros(n, dtype=int)
    p_cat = np.tile([0.1, 0.6, 0.3], (n, 1))  # top-1 = 1, top-2 = {1, 2}: a miss by default
    p_cat[:15] = [0.7, 0.2, 0.1]  # red: all right
    p_cat[15:20] = [0.3, 0.6, 0.1]  # half of blue: right in top-2 only
    y_tags = np.zeros((n, 1), dtype=int)
    y_tags[:4] = 1
    p_tags = np.zeros((n, 1))
    p_tags[:2] = 0.9  # red: tp=2, fn=2 -> F1 2/3
    m = evaluate_predictions(
        y_cat,
        p_cat,
        y_tags,
        p_tags,
        categories=["a", "b", "c"],
        tag_names=["t"],
        thresholds=[0.5],
        slices=pd.Series(colours, index=np.arange(100, 100 + n)),
    )
    s = m["slices"]
    assert list(s) == ["red", "blue", "OTHER"]
    assert s["red"] == {"n": 15, "top1_accuracy": 1.0, "top2_accuracy": 1.0, "tag_macro_f1": pytest.approx(2 / 3)}
    assert s["blue"]["n"] == 10
    assert s["blue"]["top1_accuracy"] == 0.0
    assert s["blue"]["top2_accuracy"] == pytest.approx(0.5)
    assert s["blue"]["tag_macro_f1"] is None  # no positives, none predicted: undefined
    assert s["OTHER"]["n"] == 7
    assert s["OTHER"]["members"] == ["MISSING", "green", "pink"]
    assert sum(v["n"] for v in s.values()) == n
    json.dumps(m, allow_nan=False)


def test_slices_length_mismatch_raises(random_preds):
    y_cat, p_cat, y_tags, p_tags, thr = random_preds
    with pytest.raises(ValueError, match="slices"):
        evaluate_predictions(
            y_cat,
            p_cat,
            y_tags,
            p_tags,
            categories=CATS,
            tag_names=TAGS,
            thresholds=thr,
            slices=pd.Series(["a"] * 3),
        )


def test_input_validation(random_preds):
    y_cat, p_cat, y_tags, p_tags, thr = random_preds
    kw = dict(categories=CATS, tag_names=TAGS)
    with pytest.raises(ValueError, match="category names"):
        evaluate_predictions(y_cat, p_cat, y_tags, p_tags, categories=CATS[:2], tag_names=TAGS, thresholds=thr)
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_predictions(y_cat, p_cat, y_tags, p_tags, thresholds=thr[:2], **kw)
    with pytest.raises(ValueError, match="codes"):
        evaluate_predictions(y_cat + 10, p_cat, y_tags, p_tags, thresholds=thr, **kw)
    with pytest.raises(ValueError, match="rows"):
        evaluate_predictions(y_cat, p_cat, y_tags[:5], p_tags[:5], thresholds=thr, **kw)


# ----------------------------------------------------------------------- report


def test_format_report(random_metrics):
    text = format_report(random_metrics)
    assert f"top-1={random_metrics['top1_accuracy']:.3f}" in text
    assert f"top-2={random_metrics['top2_accuracy']:.3f}" in text
    for name in TAGS:
        f1 = random_metrics["tags"]["per_tag"][name]["f1"]
        assert any(line.startswith(name) and f"{f1:.3f}" in line for line in text.splitlines())


# ----------------------------------------------------------------------- figures


def test_figure_builders_axes(random_preds):
    y_cat, p_cat, y_tags, p_tags, thr = random_preds
    cm = confusion_matrix_figure(y_cat, p_cat, categories=CATS)
    assert len(cm.axes) == 1
    assert len(cm.axes[0].texts) == len(CATS) ** 2  # every cell annotated
    roc = roc_figure(y_tags, p_tags, tag_names=TAGS)
    assert len(roc.axes) == 1
    labels = roc.axes[0].get_legend_handles_labels()[1]
    assert [lab.split(" (")[0] for lab in labels] == TAGS
    assert all("AUC=" in lab for lab in labels)
    pr = pr_figure(y_tags, p_tags, tag_names=TAGS, thresholds=thr)
    assert len(pr.axes) == 1
    markers = [ln for ln in pr.axes[0].lines if ln.get_marker() == "o"]
    assert len(markers) == len(TAGS)
    pred = p_tags[:, 0] >= thr[0]
    tp = (pred & (y_tags[:, 0] == 1)).sum()
    x, y = markers[0].get_xdata()[0], markers[0].get_ydata()[0]
    assert (x, y) == pytest.approx((tp / y_tags[:, 0].sum(), tp / pred.sum()))
    tc = tag_confusion_figure(y_tags, p_tags, tag_names=TAGS, thresholds=thr)
    assert len(tc.axes) == len(TAGS)
    assert [t.get_text() for t in tc.axes[0].texts] == [str(v) for v in confusion_matrix(y_tags[:, 0], pred).ravel()]


@pytest.mark.parametrize(
    ("keys", "n_axes"),
    [
        (["loss", "val_loss", "cc3_top1", "val_cc3_top1", "cc3_top2", "val_cc3_top2", "tags_loss"], 3),
        (["loss", "val_loss", "cc3_top1", "tags_auc", "val_tags_auc", "learning_rate"], 3),
        (["loss"], 1),
        (["val_cc3_top2"], 1),
        ([], 1),
    ],
)
def test_learning_curves_any_subset(keys, n_axes):
    history = {k: [1.0 - 0.1 * i for i in range(4)] for k in keys}
    fig = learning_curves_figure(history)
    assert len(fig.axes) == n_axes
    assert sum(len(ax.lines) for ax in fig.axes) == len([k for k in keys if k != "learning_rate"])


def test_learning_curves_panel_contents():
    history = {
        "loss": [3, 2, 1],
        "val_loss": [3.5, 2.5, 2],
        "tags_loss": [1, 0.5, 0.4],
        "cc3_top1": [0.2, 0.4, 0.5],
        "val_cc3_top1": [0.1, 0.3, 0.45],
    }
    fig = learning_curves_figure(history)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "top-1"]
    loss_labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert loss_labels == ["loss (train)", "loss (val)", "tags_loss (train)"]
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2, 3])
    assert fig.axes[0].lines[1].get_linestyle() == "--"


def test_save_figures_writes_valid_pngs(tmp_path, random_preds):
    y_cat, p_cat, y_tags, p_tags, thr = random_preds
    out = tmp_path / "figs"
    paths = save_figures(
        y_cat,
        p_cat,
        y_tags,
        p_tags,
        categories=CATS,
        tag_names=TAGS,
        thresholds=thr,
        out_dir=out,
        history={"loss": [1.0, 0.5], "val_loss": [1.2, 0.9]},
    )
    assert set(paths) == set(FIGURE_NAMES)
    assert {p.name for p in paths.values()} == {
        "confusion_matrix.png",
        "roc_tags.png",
        "pr_tags.png",
        "tag_confusion.png",
        "learning_curves.png",
    }
    for p in paths.values():
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert sorted(q.name for q in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp leftovers

    no_history = save_figures(
        y_cat,
        p_cat,
        y_tags,
        p_tags,
        categories=CATS,
        tag_names=TAGS,
        thresholds=thr,
        out_dir=tmp_path / "b",
    )
    assert "learning_curves" not in no_history and len(no_history) == 4


def test_single_tag_is_scored_as_the_positive_class_only():
    # A one-column indicator matrix must not be read as a binary target with two classes.
    y_tags = np.array([[1], [1], [0], [0], [0]])
    p_tags = np.array([[0.9], [0.2], [0.8], [0.1], [0.1]])
    m = evaluate_predictions(
        np.zeros(5, dtype=int),
        np.tile([0.6, 0.4], (5, 1)),
        y_tags,
        p_tags,
        categories=["a", "b"],
        tag_names=["t"],
        thresholds=[0.5],
    )
    t = m["tags"]["per_tag"]["t"]
    pred = p_tags[:, 0] >= 0.5
    assert (t["precision"], t["recall"], t["f1"]) == pytest.approx((0.5, 0.5, f1_score(y_tags[:, 0], pred)))
    assert m["tags"]["macro_f1"] == pytest.approx(0.5)
