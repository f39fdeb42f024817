"""The project's Prometheus metrics, fed by an observer of the generic server (``tf_serving_compat.observers``).

``ModelWatcher.on_predict`` only queues the request's tensors (references, no copy); one daemon
thread turns them into statistics, so the request path pays a queue put. Every image's size is read
from its header; at most ``brightness_per_second`` images are also decoded (at 1/8 scale) for their
brightness, which bounds the watcher's CPU whatever the traffic. When the queue is full
the request is dropped from the statistics and counted (``vinted_monitoring_dropped_total``).
Every name starts with ``vinted_`` so nobody mistakes them for TF Serving's ``:tensorflow:serving:``.
Drift gauges and the model's age are computed when Prometheus scrapes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import logging.handlers
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from ..config import PROJECT_ROOT, MonitoringConfig
from ..contract import labels_path
from .drift import IMAGE_FEATURES, SlidingWindow, drift_scores, summarise
from .reference import BIN_EDGES, Reference, version_reference
from .stats import input_stats, observations

log = logging.getLogger(__name__)


@dataclass
class _VersionState:
    """What the watcher knows of one loaded version: its labels, reference, export time, window."""

    labels: dict
    reference: Reference | None
    exported_at: float | None
    window: SlidingWindow
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class VersionMetadata:
    """What the project loads with each served version (``serving.VintedAdapter.load_metadata``):
    its labels.json and its reference statistics, kept by the server on ``LoadedVersion.metadata``."""

    labels: dict
    reference: Reference | None


def load_version_metadata(name: str, version: int, version_dir: Path) -> VersionMetadata:
    """labels.json ({} when absent) and the reference statistics (None when absent or unreadable)."""
    labels_file = labels_path(version_dir)
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else {}
    reference = None
    try:
        reference = version_reference(version_dir)
    except ValueError as exc:
        log.warning("ignoring the reference statistics of %s version %s: %s", name, version, exc)
    return VersionMetadata(labels, reference)


def _export_time(version_dir: Path) -> float | None:
    # The export module imports TensorFlow: only needed once a version is served.
    from ..export import read_export_info  # noqa: PLC0415

    try:
        text = read_export_info(version_dir).get("exported_utc")
        return _dt.datetime.fromisoformat(text).timestamp() if text else None
    except (OSError, ValueError):
        return None


def reject_reason(code: str, message: str) -> str:
    """A small closed set of reasons (bounded label values) from a refusal's code and message."""
    text = message.lower()
    if code == "RESOURCE_EXHAUSTED" and "body" in text:
        return "body_too_large"
    if "image" in text and ("exceeds the limit" in text or "too large" in text):
        return "image_too_large"
    if "too many instances" in text:
        return "too_many_instances"
    if any(word in text for word in ("decode", "image format", "jpeg", "png", "empty image")):
        return "undecodable_image"
    return "invalid_argument" if code == "INVALID_ARGUMENT" else code.lower()


class RateLimit:
    """At most ``rate`` yeses per second, bursts up to one second's worth (a token bucket)."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self._tokens, self._last = rate, clock()

    def __call__(self) -> bool:
        now = self.clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class RequestSampler:
    """Privacy-safe request log: a fraction of rows' image hash, size and prediction, never the image."""

    def __init__(self, path: Path, fraction: float, max_bytes: int, backups: int, seed: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fraction = fraction
        self._random = random.Random(seed)
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def maybe_record(self, row: dict) -> bool:
        if self._random.random() >= self.fraction:
            return False
        record = logging.LogRecord("vinted.samples", logging.INFO, __file__, 0, json.dumps(row), None, None)
        self._handler.handle(record)
        return True

    def close(self) -> None:
        self._handler.close()


def _row_hashes(inputs: dict[str, np.ndarray]) -> list[str]:
    for array in inputs.values():
        if array.dtype == object:
            return [hashlib.sha256(bytes(v)).hexdigest() for v in array.reshape(-1)]
    for array in inputs.values():
        if array.ndim >= 2:
            return [hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest() for row in array]
    return []


class ModelWatcher:
    """A ``PredictObserver``: per model and version, prediction/input statistics, drift and age metrics."""

    def __init__(self, settings: Any = None, clock=time.time, sample_seed: int | None = None):

        self.settings = settings or MonitoringConfig()
        self.clock = clock
        self.enabled = False
        self.serving: Any = None  # the ServingApp, set by attach
        self._queue: queue.Queue = queue.Queue(maxsize=self.settings.queue_size)
        self._versions: dict[tuple[str, int], _VersionState] = {}
        self._versions_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sampler: RequestSampler | None = None
        self._sample_seed = sample_seed
        self._brightness_budget = RateLimit(self.settings.brightness_per_second)

    # ------------------------------------------------------------ the observer protocol

    def attach(self, serving: Any) -> None:
        """Register the metrics on the server's registry; without ``--monitoring_config_file``, stay off."""
        self.serving = serving
        if serving.metrics is None:
            log.info("model statistics off: the server exports no metrics (no --monitoring_config_file)")
            return
        self._declare(serving.metrics.registry)
        if self.settings.sample_fraction > 0:
            path = Path(self.settings.sample_file)
            self._sampler = RequestSampler(
                path if path.is_absolute() else PROJECT_ROOT / path,
                self.settings.sample_fraction,
                self.settings.sample_max_bytes,
                self.settings.sample_backups,
                self._sample_seed,
            )
        self.enabled = True

    def on_predict(self, loaded: Any, signature_name: str, inputs: dict, outputs: dict) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            self._start_thread()
        try:
            self._queue.put_nowait((loaded, signature_name, inputs, outputs, self.clock()))
        except queue.Full:
            self.dropped.labels(loaded.name).inc()

    def on_reject(self, model: str | None, code: str, message: str) -> None:
        if not self.enabled:
            return
        known = model is not None and self.serving.registry.get(model) is not None
        self.rejected.labels(model if known else "unknown", reject_reason(code, message)).inc()

    # ------------------------------------------------------------ the statistics thread

    def _start_thread(self) -> None:
        with self._versions_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vinted-stats", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.record(*item)
            except Exception:  # noqa: BLE001 - statistics must never stop
                log.exception("model statistics failed for one request")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued request is in the metrics (tests, benchmarks)."""
        self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._sampler is not None:
            self._sampler.close()

    def _state(self, loaded: Any) -> _VersionState:
        key = (loaded.name, int(loaded.version))
        state = self._versions.get(key)
        if state is None:
            metadata = loaded.metadata
            if not isinstance(metadata, VersionMetadata):  # a server built without the project's adapter
                metadata = load_version_metadata(*key, loaded.path)
            state = _VersionState(
                metadata.labels,
                metadata.reference,
                _export_time(loaded.path),
                SlidingWindow(self.settings.window_size, self.settings.window_seconds),
            )
            with self._versions_lock:
                state = self._versions.setdefault(key, state)
        return state

    def record(self, loaded: Any, signature_name: str, inputs: dict, outputs: dict, when: float) -> None:
        """One request's statistics into the metrics and the drift window."""
        state = self._state(loaded)
        labels = state.labels
        category_key = labels.get("category_output", "cc3")
        if category_key not in outputs:
            return
        model, version = loaded.name, str(loaded.version)
        images = input_stats(inputs, self._brightness_budget)
        rows, nonfinite = observations(
            outputs[category_key], outputs.get("tags"), labels.get("thresholds"), images, outputs.get("tag_flags")
        )
        if nonfinite:
            self.nonfinite.labels(model, version, signature_name).inc(nonfinite)
        categories = labels.get("categories") or []
        tags = labels.get("tags") or []
        for row in rows:
            if row.category is not None:
                name = categories[row.category] if row.category < len(categories) else str(row.category)
                self.predictions.labels(model, version, name).inc()
                self.confidence.labels(model, version).observe(cast(float, row.confidence))
                for index, present in enumerate(row.tags):
                    if present:
                        self.tag_predicted.labels(
                            model, version, tags[index] if index < len(tags) else str(index)
                        ).inc()
            for feature in IMAGE_FEATURES:
                value = getattr(row, feature)
                if value is not None:
                    self.image_histograms[feature].labels(model, version).observe(value)
        with state.lock:
            for row in rows:
                state.window.add(row, when)
        if self._sampler is not None:
            self._sample(self._sampler, model, version, inputs, rows, categories, tags)

    def _sample(self, sampler: RequestSampler, model, version, inputs, rows, categories, tags) -> None:
        hashes = _row_hashes(inputs)
        for index, row in enumerate(rows):
            sampler.maybe_record(
                {
                    "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
                    "model": model,
                    "version": version,
                    "image_sha256": hashes[index] if index < len(hashes) else None,
                    "width": row.width,
                    "height": row.height,
                    "category": (
                        categories[row.category]
                        if row.category is not None and row.category < len(categories)
                        else row.category
                    ),
                    "confidence": row.confidence,
                    "tags": [t for t, present in zip(tags, row.tags, strict=False) if present],
                }
            )

    # ------------------------------------------------------------ metrics

    def _declare(self, registry) -> None:

        per_version = ("model", "version")
        self.predictions = Counter(
            "vinted_predictions",
            "Served rows with a finite prediction, by top-1 category.",
            (*per_version, "category"),
            registry=registry,
        )
        self.tag_predicted = Counter(
            "vinted_tag_predicted",
            "Served rows with the tag predicted present (rate: divide by vinted_predictions_total).",
            (*per_version, "tag"),
            registry=registry,
        )
        self.confidence = Histogram(
            "vinted_top1_confidence",
            "Top-1 category probability of served rows.",
            per_version,
            buckets=BIN_EDGES["top1_confidence"][1:],
            registry=registry,
        )
        units = {"width": "pixels", "height": "pixels", "aspect_ratio": "ratio", "brightness": "luma"}
        self.image_histograms = {
            feature: Histogram(
                f"vinted_input_image_{feature}",
                f"Input image {feature} ({units[feature]}; brightness: mean luma 0-255) as the server received it.",
                per_version,
                buckets=BIN_EDGES[feature][1:],
                registry=registry,
            )
            for feature in IMAGE_FEATURES
        }
        self.nonfinite = Counter(
            "vinted_nonfinite_outputs",
            "Served rows with a NaN or infinite output.",
            (*per_version, "signature"),
            registry=registry,
        )
        self.rejected = Counter(
            "vinted_rejected_requests", "Predict requests refused, by reason.", ("model", "reason"), registry=registry
        )
        self.dropped = Counter(
            "vinted_monitoring_dropped",
            "Requests left out of the statistics (queue full).",
            ("model",),
            registry=registry,
        )
        registry.register(_ScrapeTimeCollector(self))

    def loaded_versions(self) -> list[Any]:
        out = []
        for manager in list(self.serving.registry.models.values()):
            for version in manager.loaded_versions():
                try:
                    out.append(manager.resolve(version))
                except Exception:  # noqa: BLE001 - unloaded since the listing
                    continue
        return out

    def drift_by_version(self) -> dict[tuple[str, int], tuple[Any, _VersionState, int]]:
        """(drift scores or None without a reference, state, rows in the window) of every loaded version."""
        now = self.clock()
        out = {}
        for loaded in self.loaded_versions():
            state = self._state(loaded)
            with state.lock:
                rows = state.window.snapshot(now)
            scores = None
            if state.reference is not None:
                ref = state.reference
                window = summarise(rows, len(ref.categories), len(ref.tags), ref.edges)
                scores = drift_scores(ref.summary, window)
            out[(loaded.name, int(loaded.version))] = (scores, state, len(rows))
        with self._versions_lock:  # unloaded versions: their windows go, their series stop
            for key in set(self._versions) - set(out):
                del self._versions[key]
        return out


class _ScrapeTimeCollector:
    """Gauges computed per scrape: model age, reference presence, window size and drift distances."""

    def __init__(self, watcher: ModelWatcher):
        self.watcher = watcher

    def describe(self):
        return []

    def collect(self):

        labels = ["model", "version"]
        age = GaugeMetricFamily(
            "vinted_model_age_seconds", "Seconds since the served version was exported.", labels=labels
        )
        has_ref = GaugeMetricFamily(
            "vinted_reference_loaded",
            "1 when the version carries reference statistics (no drift gauges without them).",
            labels=labels,
        )
        samples = GaugeMetricFamily(
            "vinted_drift_window_samples", "Rows with a finite prediction in the drift window.", labels=labels
        )
        linf = GaugeMetricFamily(
            "vinted_drift_linf",
            "L-infinity distance to the reference: category distribution, tag rates.",
            labels=[*labels, "feature"],
        )
        js = GaugeMetricFamily(
            "vinted_drift_js",
            "Jensen-Shannon divergence (bits) to the reference histogram.",
            labels=[*labels, "feature"],
        )
        now = self.watcher.clock()
        for (model, version), (scores, state, _) in self.watcher.drift_by_version().items():
            key = [model, str(version)]
            if state.exported_at is not None:
                age.add_metric(key, max(0.0, now - state.exported_at))
            has_ref.add_metric(key, 1.0 if state.reference is not None else 0.0)
            if scores is None:
                continue
            samples.add_metric(key, scores.samples)
            linf.add_metric([*key, "category"], scores.category_linf)
            linf.add_metric([*key, "tags"], scores.tag_linf)
            for feature, value in scores.js.items():
                if math.isfinite(value):
                    js.add_metric([*key, feature], value)
        yield from (age, has_ref, samples, linf, js)
