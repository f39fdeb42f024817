"""Label tables with the real ``data.parquet`` statistics: categories, tags, colours, ids, duplicates."""

from __future__ import annotations

from typing import Any

import numpy as np

CATEGORIES = ("BLOUSES", "CASUAL_DRESSES", "MINI_DRESSES", "SHIRTS", "TANK_TOPS")
TAGS = ("polka dot", "floral", "checker")

# Measured once on the real data.parquet, unique rows (3,436): rows per category and, per category,
# rows carrying each tag (no row carries two tags). Embedded so the generator runs without the real file.
REAL_UNIQUE_ROWS = 3436
REAL_DUPLICATE_ROWS = 111
REAL_TEST_ROWS = 429
CATEGORY_COUNTS = {"BLOUSES": 1130, "CASUAL_DRESSES": 581, "MINI_DRESSES": 560, "SHIRTS": 554, "TANK_TOPS": 611}
TAG_COUNTS = {  # category -> (polka dot, floral, checker)
    "BLOUSES": (322, 268, 219),
    "CASUAL_DRESSES": (163, 139, 125),
    "MINI_DRESSES": (177, 197, 49),
    "SHIRTS": (74, 33, 337),
    "TANK_TOPS": (170, 187, 50),
}
COLOR_COUNTS = {
    "BLACK": 1064,
    "VARIOUS": 495,
    "BLUE": 409,
    "WHITE": 279,
    "PINK": 228,
    "RED": 210,
    "GREY": 114,
    "GREEN": 102,
    "BODY": 101,
    "PURPLE": 81,
    "BROWN": 54,
    "TURQUOISE": 50,
    "YELLOW": 49,
    "NAVY": 42,
    "ORANGE": 34,
    "BURGUNDY": 20,
    "ROSE": 19,
    "CREAM": 18,
    "KHAKI": 16,
    "LIGHT-BLUE": 15,
    "GOLD": 11,
    "CORAL": 8,
    "DARK-GREEN": 6,
    "SILVER": 5,
    "LILAC": 3,
    "MINT": 2,
    "MUSTARD": 1,
}
_UUID_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


def _quota(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` summing to ``total`` (largest remainder), so small sets
    still match the real proportions instead of drifting with sampling noise."""
    raw = np.asarray(weights, dtype=float) / np.sum(weights) * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _make_uuids(rng: np.random.Generator, n: int) -> list[str]:
    """Real-format ids: 5 lowercase hex (real ones stay below 0x4e20), ``_``, 24 alphanumerics."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = n - len(out)
        prefixes = rng.integers(0, 20000, size=k)
        tails = rng.choice(_UUID_ALPHABET, size=(k, 24))
        for p, t in zip(prefixes, tails, strict=True):
            uid = f"{p:05x}_{''.join(t)}"
            if uid not in seen:
                seen.add(uid)
                out.append(uid)
    return out


def _sample_labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Category and tag columns by quota (exact real proportions), colour sampled from real frequencies."""
    cats = np.repeat(np.array(CATEGORIES), _quota(np.array([CATEGORY_COUNTS[c] for c in CATEGORIES]), n))
    tag_idx = np.empty(n, dtype=int)  # 0..2 = tag, 3 = none
    for cat in CATEGORIES:
        rows = np.flatnonzero(cats == cat)
        tc = np.array(TAG_COUNTS[cat], dtype=float)
        weights = np.append(tc, CATEGORY_COUNTS[cat] - tc.sum())
        tag_idx[rows] = rng.permutation(np.repeat(np.arange(4), _quota(weights, len(rows))))
    order = rng.permutation(n)
    cats, tag_idx = cats[order], tag_idx[order]
    names = np.array(list(COLOR_COUNTS))
    freq = np.array(list(COLOR_COUNTS.values()), dtype=float)
    colors = rng.choice(names, size=n, p=freq / freq.sum())
    cols = {"cc3": cats, "color1": colors}
    for i, tag in enumerate(TAGS):
        cols[tag] = (tag_idx == i).astype(np.int64)
    return cols


def _sizes(scale: float) -> tuple[int, int, int]:
    n_unique = max(1, round(REAL_UNIQUE_ROWS * scale))
    n_dup = min(n_unique, round(REAL_DUPLICATE_ROWS * scale))
    n_test = max(1, round(REAL_TEST_ROWS * scale))
    return n_unique, n_dup, n_test


def make_labels(*, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """All label tables as column dicts (no files): ``data`` (unique rows, then duplicates appended as
    in the real file), ``test_labels`` and ``example_predictions``. Deterministic from ``seed``."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng([seed, 0])
    n_unique, n_dup, n_test = _sizes(scale)
    uuids = _make_uuids(rng, n_unique + n_test)
    data = {"uuid": np.array(uuids[:n_unique], dtype=object), **_sample_labels(rng, n_unique)}
    test = {"uuid": np.array(uuids[n_unique:], dtype=object), **_sample_labels(rng, n_test)}
    dup_rows = np.sort(rng.choice(n_unique, size=n_dup, replace=False))
    data = {k: np.concatenate([v, v[dup_rows]]) for k, v in data.items()}
    cat1 = rng.integers(0, len(CATEGORIES), size=n_test)
    cat2 = (cat1 + rng.integers(1, len(CATEGORIES), size=n_test)) % len(CATEGORIES)
    example = {"uuid": test["uuid"], "category1": cat1.astype(np.int64), "category2": cat2.astype(np.int64)}
    for tag in TAGS:
        example[tag] = rng.integers(0, 2, size=n_test).astype(np.int64)
    return {
        "data": data,
        "test_labels": test,
        "example_predictions": example,
        "n_unique": n_unique,
        "n_duplicates": n_dup,
        "n_test": n_test,
    }
