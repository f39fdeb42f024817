"""Dynamic batching: concurrent requests for one model/version/signature become one model call.

Follows TF Serving's SharedBatchScheduler: tasks join the open batch of their
queue until it reaches ``max_batch_size`` or its oldest task waited
``batch_timeout_micros``; at most ``max_enqueued_batches`` batches wait per
queue, and a task that does not fit is refused at once with UNAVAILABLE (503),
never left hanging. ``num_batch_threads`` worker threads run the batches (TF
releases the GIL), so the asyncio event loop is never blocked.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from .errors import ServingError, internal, invalid, unavailable

log = logging.getLogger("tf_serving_compat")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class BatchingParameters:
    """The BatchingParameters proto fields we honour (TF Serving's defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: list[int] = field(default_factory=list)
    pad_variable_length_inputs: bool = False
    # TF Serving's large batch splitting: a model call runs at most this many items (None: the
    # server's measured default, see execution.py). Our batcher always splits tasks larger than
    # max_batch_size into several; the flag only decides whether this size is taken from the file.
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be >= 0")
        if self.max_enqueued_batches < 1:
            raise ValueError("max_enqueued_batches must be >= 1")
        if self.num_batch_threads < 1:
            raise ValueError("num_batch_threads must be >= 1")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size < 1:
            raise ValueError("max_execution_batch_size must be >= 1")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("the last entry of allowed_batch_sizes must equal max_batch_size")


def _batching_message_class() -> Any:
    """The BatchingParameters message, built from its schema (tensorflow-serving-api lacks the module).

    Same field names and wrapper types as session_bundle_config.proto, so the real
    text format (``max_batch_size { value: 32 }``) parses exactly as in TF Serving.
    """

    try:  # prefer the real generated module when a future package ships it
        # TensorFlow loads only when a model is served: importing this module stays light.
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2  # noqa: PLC0415

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="tf_serving_compat/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    fdp = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]
    for name, number, type_name in fields:
        message.field.add(
            name=name, number=number, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_MESSAGE, type_name=type_name
        )
    message.field.add(name="allowed_batch_sizes", number=6, label=fdp.LABEL_REPEATED, type=fdp.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parse a text-format BatchingParameters file (``--batching_parameters_file``)."""

    message = _batching_message_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid batching parameters: {exc}") from None
    params = BatchingParameters()
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if message.HasField(name):
            setattr(params, name, int(getattr(message, name).value))
    params.allowed_batch_sizes = [int(v) for v in message.allowed_batch_sizes]
    params.pad_variable_length_inputs = bool(message.pad_variable_length_inputs)
    if params.pad_variable_length_inputs:
        log.warning("pad_variable_length_inputs is not supported: requests of different shapes batch separately")
    if message.HasField("enable_large_batch_splitting"):
        params.enable_large_batch_splitting = bool(message.enable_large_batch_splitting.value)
    if message.HasField("max_execution_batch_size"):
        params.max_execution_batch_size = int(message.max_execution_batch_size.value)
    if message.HasField("thread_pool_name"):
        log.warning("batching parameter thread_pool_name is accepted but ignored")
    params.validate()
    return params


def load_batching_parameters(path: str | os.PathLike | None) -> BatchingParameters:
    if path is None:
        params = BatchingParameters()
        params.validate()
        return params
    return parse_batching_parameters(Path(path).read_text())


# ---------------------------------------------------------------- scheduler


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: concurrent.futures.Future


@dataclass
class _Batch:
    run_fn: RunFn
    created: float
    key: Hashable = None
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0


class Batcher:
    """Shared batch scheduler over many queues (one per model/version/signature/shape)."""

    def __init__(self, params: BatchingParameters, metrics: Any = None):
        params.validate()
        self.params = params
        self.metrics = metrics  # monitoring.Metrics: batch-size and queue-depth histograms
        self._cond = threading.Condition()
        self._queues: dict[Hashable, collections.deque[_Batch]] = {}
        self._stopping = False
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # for tests/metrics
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-thread-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def timeout_s(self) -> float:
        return self.params.batch_timeout_micros / 1e6

    def submit(self, key: Hashable, run_fn: RunFn, inputs: dict[str, np.ndarray]) -> concurrent.futures.Future:
        """Queue one request's inputs (batch dim 0); its future gets that request's outputs.

        A request larger than ``max_batch_size`` becomes several tasks (each joins a batch on its
        own) whose outputs are reassembled in order; if the queue cannot take them all, none runs.
        """
        sizes = {int(v.shape[0]) if v.ndim else -1 for v in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise invalid("Batching requires every input to have the same size in dimension 0")
        size = sizes.pop()
        limit = self.params.max_batch_size
        if size <= limit:
            return self._submit_task(key, run_fn, inputs, size)
        futures: list[concurrent.futures.Future] = []
        try:
            for start in range(0, size, limit):
                part = {name: array[start : start + limit] for name, array in inputs.items()}
                futures.append(self._submit_task(key, run_fn, part, min(limit, size - start)))
        except ServingError:
            for future in futures:
                future.cancel()
            raise
        return _gather(futures)

    def _submit_task(
        self, key: Hashable, run_fn: RunFn, inputs: dict[str, np.ndarray], size: int
    ) -> concurrent.futures.Future:
        shapes = tuple(sorted((k, v.shape[1:], str(v.dtype)) for k, v in inputs.items()))
        task = _Task(inputs, size, concurrent.futures.Future())
        with self._cond:
            if self._stopping:
                raise unavailable("Batch scheduler is shutting down")
            queue = self._queues.setdefault((key, shapes), collections.deque())
            if self.metrics is not None:
                self.metrics.observe_queue(str(key[0]) if isinstance(key, tuple) else str(key), len(queue))
            if queue and queue[-1].size + size <= self.params.max_batch_size:
                batch = queue[-1]
            else:
                if len(queue) >= self.params.max_enqueued_batches:
                    raise unavailable("The batch scheduling queue to which this task was submitted is full")
                batch = _Batch(run_fn, time.monotonic(), key=key)
                queue.append(batch)
            batch.tasks.append(task)
            batch.size += size
            self._cond.notify_all()
        return task.future

    def queued_batches(self) -> int:
        """Batches waiting for a thread (all queues); for metrics and tests."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _next_batch(self) -> _Batch | None:
        """Block until some queue has a batch that is full, closed, or timed out."""
        with self._cond:
            while True:
                now = time.monotonic()
                wake_at = None
                for key, queue in list(self._queues.items()):
                    if not queue:
                        del self._queues[key]
                        continue
                    head = queue[0]
                    due = head.created + self.timeout_s
                    if head.size >= self.params.max_batch_size or len(queue) > 1 or due <= now or self._stopping:
                        return queue.popleft()
                    wake_at = due if wake_at is None else min(wake_at, due)
                if self._stopping:
                    return None
                self._cond.wait(None if wake_at is None else max(0.0, wake_at - now))

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        if self.metrics is not None:
            key = batch.key
            self.metrics.observe_batch(str(key[0]) if isinstance(key, tuple) else str(key), sum(t.size for t in tasks))
        try:
            outputs = self._call(batch.run_fn, tasks)
        except Exception as exc:  # noqa: BLE001
            if len(tasks) == 1:
                tasks[0].future.set_exception(exc)
                return
            # One bad request must not fail its neighbours: rerun each task on its own.
            for task in tasks:
                try:
                    task.future.set_result(self._call(batch.run_fn, [task]))
                except Exception as single_exc:  # noqa: BLE001
                    task.future.set_exception(single_exc)
            return
        start = 0
        for task in tasks:
            end = start + task.size
            task.future.set_result({k: v[start:end] for k, v in outputs.items()})
            start = end

    def _call(self, run_fn: RunFn, tasks: list[_Task]) -> dict[str, np.ndarray]:
        total = sum(t.size for t in tasks)
        padded = next((b for b in self.params.allowed_batch_sizes if b >= total), total)
        names = list(tasks[0].inputs)
        if len(tasks) == 1 and padded == total:
            inputs = tasks[0].inputs
        else:
            inputs = {n: np.concatenate([t.inputs[n] for t in tasks], axis=0) for n in names}
            if padded > total:
                inputs = {
                    n: np.concatenate([v, np.repeat(v[:1], padded - total, axis=0)], axis=0) for n, v in inputs.items()
                }
        self.batch_sizes.append(total)
        outputs = run_fn(inputs)
        for name, value in outputs.items():
            if np.ndim(value) == 0 or value.shape[0] != padded:
                raise internal(f"Batched output tensor {name} does not have batch size {padded}")
        return {k: v[:total] for k, v in outputs.items()}

    def stop(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the worker threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)


def _gather(futures: list[concurrent.futures.Future]) -> concurrent.futures.Future:
    """One future for the in-order concatenation of ``futures``' outputs (the first error wins)."""
    combined: concurrent.futures.Future = concurrent.futures.Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def finished(_: concurrent.futures.Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] or combined.done():
                return
        if any(f.cancelled() for f in futures):
            combined.cancel()
            combined.set_running_or_notify_cancel()
            return
        error = next((f.exception() for f in futures if f.exception() is not None), None)
        if error is not None:
            combined.set_exception(error)
            return
        parts = [f.result() for f in futures]
        combined.set_result({name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]})

    def cancel_parts(future: concurrent.futures.Future) -> None:
        if future.cancelled():
            for part in futures:
                part.cancel()

    combined.add_done_callback(cancel_parts)
    for future in futures:
        future.add_done_callback(finished)
    return combined
