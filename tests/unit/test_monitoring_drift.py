"""Drift distances, the sliding window, image statistics and the reference file (exact arithmetic)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from vinted_classifier.config import MonitoringConfig
from vinted_classifier.monitoring.drift import (
    Observation,
    SlidingWindow,
    bin_counts,
    drift_scores,
    js_divergence,
    linf_distance,
    summarise,
)
from vinted_classifier.monitoring.metrics import RateLimit
from vinted_classifier.monitoring.reference import BIN_EDGES, build_reference, load_reference, reference_from_json
from vinted_classifier.monitoring.stats import image_stats, observations, pixel_stats

CATEGORIES = ["A", "B", "C", "D"]
TAGS = ["dots", "flowers"]
LIMITS = MonitoringConfig()
THRESHOLDS = {
    "category_linf": LIMITS.category_linf_threshold,
    "tag_linf": LIMITS.tag_linf_threshold,
    "js": LIMITS.js_threshold,
}


def test_linf_and_js_exact_values():
    assert linf_distance([1, 1, 2], [2, 2, 4]) == 0.0  # counts are normalised first
    assert linf_distance([1, 1, 1, 1], [4, 0, 0, 0]) == 0.75
    assert js_divergence([5, 5], [1, 1]) == 0.0
    assert js_divergence([1, 0], [0, 1]) == 1.0  # disjoint: 1 bit
    expected = (math.log2(1 / 0.75) + 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) / 2
    assert js_divergence([1, 0], [1, 1]) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(js_divergence([0, 0], [1, 1]))
    with pytest.raises(ValueError, match="3 and 2"):
        linf_distance([1, 2, 3], [1, 2])


def test_bin_counts_clip_outside_values_into_the_end_bins():
    assert bin_counts([-5, 0, 0.5, 1, 1.99, 2, 99, None, math.nan], [0, 1, 2]).tolist() == [3, 4]


def _rows(spec):
    """(category, tags, brightness) triples -> observations of a 100x80 image."""
    return [Observation(c, 0.9, tuple(t), 100.0, 80.0, 1.25, b) for c, t, b in spec]


REFERENCE_ROWS = _rows([(i % 4, (i % 2 == 0, i % 4 == 0), 120.0 + (i % 8) * 10) for i in range(16)])


def _scores(rows):
    ref = build_reference(REFERENCE_ROWS, CATEGORIES, TAGS, {"test": True})
    window = summarise(rows, len(CATEGORIES), len(TAGS), ref.edges)
    return drift_scores(ref.summary, window)


def test_the_reference_itself_has_no_drift():
    scores = _scores(REFERENCE_ROWS)
    assert scores.samples == 16
    assert scores.category_linf == 0.0 and scores.tag_linf == 0.0
    assert all(value == 0.0 for value in scores.js.values())
    assert scores.exceeded(THRESHOLDS) == []


def test_one_class_only_drives_the_category_distance_above_its_threshold():
    scores = _scores([r for r in REFERENCE_ROWS if r.category == 0])
    assert scores.category_linf == 0.75  # [1/4]*4 vs [1, 0, 0, 0]
    assert scores.tag_linf == 0.75  # both tags always on in class 0: rates 1, 1 vs 0.5, 0.25
    assert "category" in scores.exceeded(THRESHOLDS) and "tags" in scores.exceeded(THRESHOLDS)
    assert scores.js["brightness"] > 0  # class 0 rows have only two of the eight brightness levels


def test_half_as_bright_images_drive_the_brightness_divergence_above_its_threshold():
    darker = [
        Observation(r.category, r.confidence, r.tags, r.width, r.height, r.aspect_ratio, r.brightness / 2)
        for r in REFERENCE_ROWS
    ]
    scores = _scores(darker)
    # reference 120..190 sits in bins [112,128)..[176,192); halved, 60..95 in [48,64)..[80,96): disjoint.
    assert scores.js["brightness"] == 1.0
    assert scores.exceeded(THRESHOLDS) == ["brightness"]
    assert scores.category_linf == 0.0


def test_window_is_bounded_by_count_and_by_age():
    window = SlidingWindow(max_count=3, max_age_s=10)
    for t in range(5):
        window.add(Observation(category=t), now=float(t))
    assert [o.category for o in window.snapshot(now=5.0)] == [2, 3, 4]  # count bound
    assert [o.category for o in window.snapshot(now=13.5)] == [4]  # 2 and 3 older than 10 s
    assert window.snapshot(now=100.0) == [] and len(window) == 0
    with pytest.raises(ValueError, match="max_count"):
        SlidingWindow(0, 10)


def test_observations_flag_nonfinite_rows_and_use_tag_thresholds():
    probs = np.array([[0.1, 0.7, 0.1, 0.1], [np.nan, 0.5, 0.25, 0.25]])
    tags = np.array([[0.6, 0.2], [0.9, 0.9]])
    rows, nonfinite = observations(
        probs, tags, [0.5, 0.1], [{"width": 4.0, "height": 2.0, "aspect_ratio": 2.0, "brightness": 10.0}, None]
    )
    assert nonfinite == 1
    assert rows[0] == Observation(1, 0.7, (True, True), 4.0, 2.0, 2.0, 10.0)
    assert rows[1] == Observation()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_image_stats_size_from_header_brightness_from_a_reduced_decode():
    flat = np.full((96, 128, 3), 160, np.uint8)
    stats = image_stats(_jpeg(flat))
    assert stats["width"] == 128 and stats["height"] == 96 and stats["aspect_ratio"] == pytest.approx(128 / 96)
    assert stats["brightness"] == pytest.approx(160, abs=1.5)
    darker = image_stats(_jpeg((flat // 2).astype(np.uint8)))
    assert darker["brightness"] == pytest.approx(80, abs=1.5)
    assert image_stats(b"not an image") is None
    pixels = pixel_stats(np.full((2, 12, 10, 3), 0.5, np.float32))
    assert pixels[0] == {"width": 10.0, "height": 12.0, "aspect_ratio": 10 / 12, "brightness": pytest.approx(127.5)}


def test_reference_round_trip_and_errors_name_the_field(tmp_path):
    ref = build_reference(REFERENCE_ROWS, CATEGORIES, TAGS, {"split": "holdout"})
    doc = ref.to_json()
    assert doc["schema_version"] == 1 and doc["category_distribution"] == [0.25] * 4
    assert doc["tag_rates"] == [0.5, 0.25]
    assert doc["numeric"]["brightness"]["edges"] == BIN_EDGES["brightness"]
    path = tmp_path / "reference_stats.json"
    path.write_text(json.dumps(doc))
    again = load_reference(path)
    assert again.summary.category_counts.tolist() == [4, 4, 4, 4]
    assert again.summary.numeric["width"].tolist() == ref.summary.numeric["width"].tolist()
    broken = dict(doc, tag_counts=[1])
    with pytest.raises(ValueError, match="tag_counts has 1 values for 2 tags"):
        reference_from_json(broken, "x.json")
    with pytest.raises(ValueError, match="x.json: missing field 'categories'"):
        reference_from_json({k: v for k, v in doc.items() if k != "categories"}, "x.json")
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_reference(path)


def test_rate_limit_allows_a_burst_then_the_rate():
    now = [0.0]
    limit = RateLimit(2.0, clock=lambda: now[0])
    assert [limit() for _ in range(3)] == [True, True, False]  # a second's worth, then nothing
    now[0] = 0.5
    assert [limit(), limit()] == [True, False]  # half a second: one more
    now[0] = 100.0
    assert sum(limit() for _ in range(5)) == 2  # never more than one second's worth
    stats = image_stats(_jpeg(np.full((8, 8, 3), 50, np.uint8)), brightness=False)
    assert stats == {"width": 8.0, "height": 8.0, "aspect_ratio": 1.0, "brightness": None}
