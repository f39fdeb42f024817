"""Distances between a reference and a window of observations, and the window itself.

Pure NumPy, no clock of its own (callers pass ``now``), so tests use exact arithmetic. The
distances are TF Data Validation's: L-infinity (largest absolute difference of two frequency
vectors) for categorical features and per-tag rates, Jensen-Shannon divergence (base 2, so it lies
in [0, 1]) for numeric features binned on the reference's edges.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

NUMERIC_FEATURES = ("top1_confidence", "width", "height", "aspect_ratio", "brightness")
IMAGE_FEATURES = ("width", "height", "aspect_ratio", "brightness")


@dataclass(frozen=True)
class Observation:
    """One served row: what the model said and what the image looked like (None: not measurable)."""

    category: int | None = None  # top-1 code; None for a non-finite output row
    confidence: float | None = None  # top-1 probability
    tags: tuple[bool, ...] = ()  # each tag predicted present
    width: float | None = None
    height: float | None = None
    aspect_ratio: float | None = None  # width / height
    brightness: float | None = None  # mean luma, 0..255

    def value(self, feature: str) -> float | None:
        return self.confidence if feature == "top1_confidence" else getattr(self, feature)


def frequencies(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def linf_distance(p, q) -> float:
    """max_i |p_i - q_i| of two frequency vectors (counts are normalised first)."""
    p, q = frequencies(p), frequencies(q)
    if p.shape != q.shape:
        raise ValueError(f"cannot compare distributions of {p.shape[0]} and {q.shape[0]} values")
    return float(np.max(np.abs(p - q))) if p.size else 0.0


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (0: same, 1: disjoint supports) of two binned counts."""
    p, q = frequencies(p), frequencies(q)
    if p.shape != q.shape:
        raise ValueError(f"cannot compare histograms of {p.shape[0]} and {q.shape[0]} bins")
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def bin_counts(values, edges) -> np.ndarray:
    """Counts per bin ``[edges[i], edges[i+1])``; values outside the edges go to the end bins."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1).astype(np.int64)


@dataclass
class Summary:
    """Counts that both the reference and a window reduce to."""

    category_counts: np.ndarray
    tag_counts: np.ndarray
    rows: int  # rows with a finite prediction
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> bin counts

    def tag_rates(self) -> np.ndarray:
        return self.tag_counts / self.rows if self.rows else np.zeros_like(self.tag_counts, dtype=np.float64)


def summarise(observations, n_categories: int, n_tags: int, edges: dict[str, list[float]]) -> Summary:
    predicted = [o for o in observations if o.category is not None]
    categories = np.bincount([o.category for o in predicted], minlength=n_categories)[:n_categories]
    tags = np.zeros(n_tags, dtype=np.int64)
    for o in predicted:
        tags += np.asarray(o.tags[:n_tags], dtype=np.int64) if o.tags else 0
    numeric = {name: bin_counts([o.value(name) for o in observations], bins) for name, bins in edges.items()}
    return Summary(categories.astype(np.int64), tags, len(predicted), numeric)


@dataclass(frozen=True)
class DriftScores:
    samples: int  # rows with a finite prediction in the window
    category_linf: float
    tag_linf: float
    js: dict[str, float]  # numeric feature -> JS divergence (nan: no value in the window)

    def exceeded(self, thresholds: dict[str, float]) -> list[str]:
        """The features whose distance is above its threshold (keys: category, tags, js)."""
        out = []
        if self.category_linf > thresholds["category_linf"]:
            out.append("category")
        if self.tag_linf > thresholds["tag_linf"]:
            out.append("tags")
        out += [name for name, value in self.js.items() if math.isfinite(value) and value > thresholds["js"]]
        return out


def drift_scores(reference: Summary, window: Summary) -> DriftScores:
    tag_linf = (
        float(np.max(np.abs(window.tag_rates() - reference.tag_rates())))
        if window.rows and reference.tag_counts.size
        else 0.0
    )
    category_linf = linf_distance(reference.category_counts, window.category_counts) if window.rows else 0.0
    js = {
        name: js_divergence(reference.numeric[name], window.numeric[name])
        for name in reference.numeric
        if name in window.numeric
    }
    return DriftScores(window.rows, category_linf, tag_linf, js)


class SlidingWindow:
    """The last ``max_count`` observations not older than ``max_age_s`` seconds (caller's clock)."""

    def __init__(self, max_count: int, max_age_s: float):
        if max_count < 1 or max_age_s <= 0:
            raise ValueError(f"window needs max_count >= 1 and max_age_s > 0, got {max_count}, {max_age_s}")
        self.max_count = max_count
        self.max_age_s = max_age_s
        self._items: collections.deque[tuple[float, Observation]] = collections.deque(maxlen=max_count)

    def add(self, observation: Observation, now: float) -> None:
        self._items.append((now, observation))

    def snapshot(self, now: float) -> list[Observation]:
        """The observations still inside the window (older ones are dropped for good)."""
        while self._items and now - self._items[0][0] > self.max_age_s:
            self._items.popleft()
        return [o for _, o in list(self._items)]

    def __len__(self) -> int:
        return len(self._items)
