"""Grouped k-fold assignment: groups never straddle folds, every row lands in exactly one fold."""

from __future__ import annotations

import numpy as np
import pytest

from vinted_classifier.experiments.cv import grouped_folds, mean_std
from vinted_classifier.experiments.heads import validation_nll


def _rows(seed=0, n_groups=60):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)  # duplicate groups of 1-3 rows
    groups = np.repeat(np.arange(n_groups), sizes)
    codes = np.repeat(rng.integers(0, 3, n_groups), sizes)  # a group shares its label
    order = rng.permutation(len(groups))
    return codes[order], groups[order]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_by_group_and_cover_every_row_once(k):
    codes, groups = _rows()
    fold = grouped_folds(codes, groups, k, seed=42)
    assert fold.shape == codes.shape and set(fold.tolist()) == set(range(k))
    for group in np.unique(groups):
        assert len(set(fold[groups == group])) == 1, f"group {group} straddles folds"
    assert sorted(np.concatenate([np.flatnonzero(fold == f) for f in range(k)]).tolist()) == list(range(len(codes)))
    # stratified: every category appears in every fold
    for f in range(k):
        assert set(codes[fold == f]) == {0, 1, 2}
    assert np.array_equal(fold, grouped_folds(codes, groups, k, seed=42)), "seeded"


def test_bad_fold_counts_name_the_limit():
    codes, groups = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 2])
    with pytest.raises(ValueError, match=r"between 2 and the number of duplicate groups \(3\), got 4"):
        grouped_folds(codes, groups, 4, seed=0)
    with pytest.raises(ValueError, match="got 1"):
        grouped_folds(codes, groups, 1, seed=0)
    with pytest.raises(ValueError, match="4 category codes but 3 group ids"):
        grouped_folds(codes, groups[:3], 2, seed=0)


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_validation_nll_is_category_cross_entropy_plus_mean_tag_bce():
    p_cat = np.array([[0.5, 0.5], [0.25, 0.75]])
    p_tags = np.array([[0.5], [0.5]])
    expected = -(np.log(0.5) + np.log(0.75)) / 2 + np.log(2)
    assert validation_nll(np.array([0, 1]), np.array([[1.0], [0.0]]), p_cat, p_tags) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes do not match"):
        validation_nll(np.array([0]), np.array([[1.0], [0.0]]), p_cat, p_tags)
