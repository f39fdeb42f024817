"""Prometheus metrics under TF Serving's names (``--monitoring_config_file``).

TF Serving exports its monitoring counters as ``:tensorflow:serving:request_count`` etc. on
``prometheus_config.path`` of the REST port, with ``# TYPE`` counter/gauge/histogram. Counters keep
their exact TF Serving names (no ``_total`` suffix), histograms have ``_bucket``/``_sum``/``_count``;
latencies are in microseconds, as TF Serving reports them. Metrics TF Serving does not have are
named ``:tf_serving_compat:...``, so nobody mistakes them for TF Serving's.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

DEFAULT_PATH = "/monitoring/prometheus/metrics"
_LATENCY_BUCKETS_US = tuple(float(10 * 1.8**i) for i in range(33))  # 10 us .. ~1.5e9 us
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_QUEUE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class PrometheusConfig:
    enable: bool = False
    path: str = DEFAULT_PATH


def _monitoring_message_class() -> Any:
    """``MonitoringConfig`` built from its schema (tensorflow-serving-api does not ship the module)."""

    proto = descriptor_pb2.FileDescriptorProto(
        name="tf_serving_compat/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    fdp = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_STRING)
    config = proto.message_type.add(name="MonitoringConfig")
    config.field.add(
        name="prometheus_config",
        number=1,
        label=fdp.LABEL_OPTIONAL,
        type=fdp.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def parse_monitoring_config(text: str) -> PrometheusConfig:

    message = _monitoring_message_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid monitoring config: {exc}") from None
    prometheus = message.prometheus_config
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/"):
        raise ValueError(f"Invalid monitoring config: prometheus_config.path must start with '/': {path!r}")
    return PrometheusConfig(bool(prometheus.enable), path)


def load_monitoring_config(path: str | os.PathLike) -> PrometheusConfig:
    return parse_monitoring_config(Path(path).read_text())


class _Scalars:
    """Counters and gauges under their exact names, written as TF Serving's exporter writes them.

    prometheus_client would rename a counter's ``# TYPE`` line to ``<name>_total``; TF Serving's
    ``prometheus_exporter.cc`` writes ``# TYPE <name> counter`` (or ``gauge``) and samples under
    the same name, with integer values. This writes exactly that.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple], float] = {}
        self._docs: dict[str, tuple[str, tuple[str, ...], str]] = {}

    def declare(self, name: str, doc: str, labels: tuple[str, ...], kind: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric kind must be counter or gauge, not {kind!r}")
        self._docs[name] = (doc, labels, kind)

    def inc(self, name: str, *label_values: str, amount: float = 1.0) -> None:
        key = (name, tuple(str(v) for v in label_values))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, *label_values: str | int, value: float) -> None:
        with self._lock:
            self._values[(name, tuple(str(v) for v in label_values))] = value

    def value(self, name: str, *label_values: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(str(v) for v in label_values)), 0.0)

    def text(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines = []
        for name, (doc, labels, kind) in self._docs.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
            for (sample_name, values), value in items:
                if sample_name == name:
                    pairs = ",".join(f'{label}="{_escape(v)}"' for label, v in zip(labels, values, strict=False))
                    number = str(int(value)) if float(value).is_integer() else repr(float(value))
                    lines.append(f"{name}{{{pairs}}} {number}")
        return "\n".join(lines) + "\n" if lines else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# Metrics that TF Serving does not have are named under ``:tf_serving_compat:``, never ``:tensorflow:``.
BATCH_SIZE = ":tf_serving_compat:batching:processed_batch_size"
QUEUE_DEPTH = ":tf_serving_compat:batching:queue_depth"
MODEL_STATE = ":tf_serving_compat:model_state"
REQUEST_COUNT = ":tensorflow:serving:request_count"


class Metrics:
    """The server's metrics; ``exposition()`` is the Prometheus text for ``path``."""

    def __init__(self, path: str = DEFAULT_PATH):

        disable_created_metrics()  # TF Serving has no *_created series
        self.path = path
        self.registry = CollectorRegistry(auto_describe=True)  # histograms; scalars are written by _Scalars
        self.counters = _Scalars()
        self.counters.declare(REQUEST_COUNT, "The total number of requests.", ("model_name", "status"), "counter")
        self.counters.declare(
            MODEL_STATE,
            "Version states: 1 for the current state of each model version (tf_serving_compat's own).",
            ("model_name", "model_version", "state"),
            "gauge",
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            buckets=_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
            buckets=_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Rows per batched model call (tf_serving_compat's own).",
            ("model_name",),
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Histogram(
            QUEUE_DEPTH,
            "Batches waiting in the batching queues when a request is enqueued (tf_serving_compat's own).",
            ("model_name",),
            buckets=_QUEUE_BUCKETS,
            registry=self.registry,
        )
        self._states: dict[tuple[str, int], str] = {}
        self._state_lock = threading.Lock()

    @property
    def content_type(self) -> str:

        return CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:

        return self.counters.text().encode() + generate_latest(self.registry)

    def observe_request(
        self, api: str, model: str | None, status: str | int, seconds: float, entrypoint: str = "REST"
    ) -> None:
        """One finished request: its canonical status (gRPC) or HTTP status mapped back to one."""
        if isinstance(status, int):
            status = _HTTP_TO_CODE.get(status, "UNKNOWN") if status != 200 else "OK"
        model = model or ""
        self.counters.inc(REQUEST_COUNT, model, status)
        self.request_latency.labels(model, api, entrypoint).observe(seconds * 1e6)

    def observe_runtime(self, model: str, api: str, seconds: float) -> None:
        self.runtime_latency.labels(model, api, "TF2").observe(seconds * 1e6)

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def observe_queue(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).observe(depth)

    def observe_state(self, model: str, version: int, state: str) -> None:
        with self._state_lock:
            previous = self._states.get((model, version))
            self._states[(model, version)] = state
            if previous is not None:
                self.counters.set(MODEL_STATE, model, version, previous, value=0)
            self.counters.set(MODEL_STATE, model, version, state, value=1)


_HTTP_TO_CODE = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    500: "INTERNAL",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
}
