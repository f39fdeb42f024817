"""The evaluator's checks, NumPy only: each one a value, a threshold and a verdict.

A check with ``passed=None`` is reported but does not gate (too few rows, nothing served yet).
Paired comparisons resample the same held-out rows for both models (bootstrap), so a difference
smaller than the split's noise is not read as a regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool | None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def at_least(name: str, value: float, threshold: float, detail: str = "") -> Check:
    return Check(name, float(value), float(threshold), bool(value >= threshold), detail)


# ----------------------------------------------------------------- per-row statistics


def top_k_hits(y_true: np.ndarray, p_cat: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the true category is among the ``k`` most probable, per row."""
    ranked = np.argsort(-p_cat, axis=1, kind="stable")[:, :k]
    return (ranked == np.asarray(y_true)[:, None]).any(axis=1).astype(np.float64)


def tag_f1(y_tags: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """F1 per tag column; 1.0 for a tag absent from both truth and predictions (nothing to get wrong)."""
    y, f = np.asarray(y_tags, bool), np.asarray(flags, bool)
    tp = (y & f).sum(axis=-2)
    denominator = y.sum(axis=-2) + f.sum(axis=-2)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def bootstrap_indices(n: int, samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _mean_difference(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic for ``paired_difference``: mean of ``a`` minus mean of ``b`` over each resample's rows."""
    return lambda idx: a[idx].mean(axis=1) - b[idx].mean(axis=1)


def paired_difference(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, *, samples: int, confidence: float, seed: int = 0
) -> tuple[float, float, float]:
    """(difference, lower, upper): ``statistic(indices)`` returns candidate - served per resample.

    ``statistic`` takes an index array of shape [B, n] (row 0 may be the identity) and returns [B].
    """
    identity = np.arange(n)[None, :]
    point = float(statistic(identity)[0])
    diffs = statistic(bootstrap_indices(n, samples, seed))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return point, float(low), float(high)


def mcnemar(candidate_hits: np.ndarray, served_hits: np.ndarray) -> dict:
    """Exact McNemar test on paired hits: rows only the candidate gets right vs only the served one."""
    candidate_only = int(((candidate_hits > 0) & (served_hits == 0)).sum())
    served_only = int(((served_hits > 0) & (candidate_hits == 0)).sum())
    discordant = candidate_only + served_only
    k = min(candidate_only, served_only)
    tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2**discordant if discordant else 1.0
    return {"candidate_only": candidate_only, "served_only": served_only, "p_value": min(1.0, 2 * tail)}


def regression_check(name: str, diff: tuple[float, float, float], margin: float, detail: str = "") -> Check:
    """Blocked when worse by more than ``margin`` AND the interval lies wholly below zero."""
    point, low, high = diff
    regressed = point < -margin and high < 0
    text = f"candidate - served {point:+.4f}, CI [{low:+.4f}, {high:+.4f}]"
    return Check(name, point, -margin, not regressed, f"{text}{'; ' + detail if detail else ''}")


# ----------------------------------------------------------------- the check groups


@dataclass
class Predictions:
    """A model's outputs on the held-out rows."""

    p_cat: np.ndarray  # [N, C]
    p_tags: np.ndarray  # [N, T]
    thresholds: np.ndarray  # [T]

    @property
    def flags(self) -> np.ndarray:
        return self.p_tags >= self.thresholds


def floor_checks(
    y_cat: np.ndarray, y_tags: np.ndarray, pred: Predictions, tag_names: list[str], release
) -> list[Check]:
    checks = [
        at_least("floor top-1", top_k_hits(y_cat, pred.p_cat, 1).mean(), release.min_top1),
        at_least("floor top-2", top_k_hits(y_cat, pred.p_cat, 2).mean(), release.min_top2),
    ]
    for name, value in zip(tag_names, tag_f1(y_tags, pred.flags), strict=True):
        checks.append(at_least(f"floor F1 {name}", value, release.min_tag_f1))
    return checks


def non_regression_checks(
    y_cat: np.ndarray, y_tags: np.ndarray, candidate: Predictions, served: Predictions, release, seed: int = 0
) -> list[Check]:
    """Top-1, top-2 and mean tag F1: paired bootstrap of candidate - served on the same rows."""
    n = len(y_cat)
    options = dict(samples=release.bootstrap_samples, confidence=release.confidence, seed=seed)
    checks = []
    for k in (1, 2):
        a, b = top_k_hits(y_cat, candidate.p_cat, k), top_k_hits(y_cat, served.p_cat, k)
        diff = paired_difference(_mean_difference(a, b), n, **options)
        test = mcnemar(a, b)
        detail = (
            f"McNemar p={test['p_value']:.3g} ({test['candidate_only']} rows only the candidate gets right, "
            f"{test['served_only']} only the served)"
        )
        checks.append(regression_check(f"vs served top-{k}", diff, release.regression_margin, detail))
    y = np.asarray(y_tags, bool)
    fa, fb = candidate.flags, served.flags

    def mean_f1(idx: np.ndarray) -> np.ndarray:
        return tag_f1(y[idx], fa[idx]).mean(axis=-1) - tag_f1(y[idx], fb[idx]).mean(axis=-1)

    checks.append(
        regression_check("vs served mean tag F1", paired_difference(mean_f1, n, **options), release.regression_margin)
    )
    return checks


def slice_checks(
    y_cat: np.ndarray,
    candidate: Predictions,
    served: Predictions | None,
    slices: dict[str, np.ndarray],
    release,
    seed: int = 0,
) -> list[Check]:
    """Every slice with enough support: a top-1 floor, and no regression beyond the slice margin."""
    a = top_k_hits(y_cat, candidate.p_cat, 1)
    b = top_k_hits(y_cat, served.p_cat, 1) if served is not None else None
    checks = []
    for name, mask in slices.items():
        support = int(mask.sum())
        if support < release.slice_min_support:
            value = float(a[mask].mean()) if support else None
            checks.append(
                Check(
                    f"slice {name} top-1",
                    value,
                    release.slice_min_top1,
                    None,
                    f"{support} rows < slice_min_support {release.slice_min_support}: not gated",
                )
            )
            continue
        checks.append(at_least(f"slice {name} top-1", a[mask].mean(), release.slice_min_top1, f"{support} rows"))
        if b is not None:
            diff = paired_difference(
                _mean_difference(a[mask], b[mask]),
                support,
                samples=release.bootstrap_samples,
                confidence=release.confidence,
                seed=seed,
            )
            checks.append(
                regression_check(
                    f"slice {name} vs served top-1", diff, release.slice_regression_margin, f"{support} rows"
                )
            )
    return checks


def baseline_checks(
    y_cat: np.ndarray, candidate: Predictions, prior_top1: float, probe_top1: float | None, release
) -> list[Check]:
    """ "A simpler model is not better": the class prior and a linear probe on colour features."""
    top1 = float(top_k_hits(y_cat, candidate.p_cat, 1).mean())
    checks = [
        Check(
            "beats class prior",
            top1 - prior_top1,
            release.prior_margin,
            top1 - prior_top1 >= release.prior_margin,
            f"top-1 {top1:.4f} vs class prior {prior_top1:.4f}",
        )
    ]
    if probe_top1 is not None:
        checks.append(
            Check(
                "beats linear probe",
                top1 - probe_top1,
                release.probe_margin,
                top1 - probe_top1 >= release.probe_margin,
                f"top-1 {top1:.4f} vs linear probe on colour features {probe_top1:.4f}",
            )
        )
    return checks


def numerics_check(name: str, p_cat: np.ndarray, p_tags: np.ndarray, tolerance: float = 1e-3) -> Check:
    """Finite probabilities in [0, 1], category rows summing to 1."""
    problems = []
    for what, values in (("category", p_cat), ("tags", p_tags)):
        values = np.asarray(values, np.float64)
        if not np.isfinite(values).all():
            problems.append(f"{int((~np.isfinite(values)).sum())} non-finite {what} values")
        elif values.min() < -tolerance or values.max() > 1 + tolerance:
            problems.append(f"{what} probabilities outside [0, 1] ({values.min():.4g}..{values.max():.4g})")
    if not problems:
        worst = float(np.abs(np.asarray(p_cat, np.float64).sum(axis=1) - 1).max()) if len(p_cat) else 0.0
        if worst > tolerance:
            problems.append(f"category probabilities sum to 1 ± {worst:.4g}")
    return Check(f"numerics {name}", float(len(problems)), 0.0, not problems, "; ".join(problems) or "finite")


def ratio_check(name: str, candidate: float, served: float | None, limit: float | None, unit: str) -> Check:
    if served is None or limit is None:
        why = "nothing served to compare with" if served is None else "no budget configured"
        return Check(name, None, limit, None, f"candidate {candidate:.4g} {unit}; {why}")
    ratio = candidate / served if served > 0 else math.inf
    return Check(name, ratio, limit, bool(ratio <= limit), f"candidate {candidate:.4g} vs served {served:.4g} {unit}")
