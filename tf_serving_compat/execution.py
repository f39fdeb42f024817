"""Bounded memory per model call, whatever a request's batch: split execution and admission control.

A model's activations grow linearly with the batch it runs at once (VGG19's first two
convolutions alone take 160x128x64x4 bytes per image each), so one legal request of 1,024
instances could ask TensorFlow for tens of GB and end the process. Two bounds prevent that:

* **Split execution** (TF Serving's ``enable_large_batch_splitting`` with
  ``max_execution_batch_size``): every model call runs at most ``execution_batch_size`` items
  at a time and the pieces' outputs are concatenated in order. The size comes from the model's
  measured memory per item (``measure_memory_per_item``, at load, from its warm-up records)
  and a per-call memory budget, unless set explicitly.
* **Admission control**: the items in flight across all requests (admitted, not yet finished)
  are bounded; a request that would pass the bound is refused at once with UNAVAILABLE (503),
  TF Serving's code for a full batch queue, instead of allocating.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import internal, unavailable
from .images import release_freed_memory

log = logging.getLogger("tf_serving_compat")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Used when a version has no warm-up record to measure with (or measuring is unavailable).
FALLBACK_EXECUTION_BATCH_SIZE = 16
DEFAULT_EXECUTION_MEMORY_BYTES = 256 * 1024 * 1024


def batch_size_of(inputs: dict[str, np.ndarray]) -> int:
    """Items in a request: the size of dimension 0 (1 for scalar inputs)."""
    sizes = [int(array.shape[0]) for array in inputs.values() if np.ndim(array)]
    return max(sizes, default=1)


def run_in_pieces(run: RunFn, inputs: dict[str, np.ndarray], piece: int) -> dict[str, np.ndarray]:
    """``run(inputs)``, executed ``piece`` items at a time along dimension 0 and reassembled in order.

    Inputs without a batch dimension, or of different batch sizes, cannot be split: they run whole.
    """
    sizes = {int(array.shape[0]) if np.ndim(array) else -1 for array in inputs.values()}
    total = sizes.pop() if len(sizes) == 1 else -1
    if total <= piece or piece < 1:
        return run(inputs)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, total, piece):
        part = run({name: array[start : start + piece] for name, array in inputs.items()})
        for name, value in part.items():
            if np.ndim(value) == 0 or value.shape[0] != min(piece, total - start):
                raise internal(
                    f"Output tensor {name} does not have the batch size of its input "
                    "piece, so the request cannot be split into execution batches"
                )
        parts.append(part)
    return {name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]}


@dataclass(frozen=True)
class ExecutionLimits:
    """How big one model call may be: an explicit size, else the memory budget over the measured cost."""

    max_execution_batch_size: int | None = None  # explicit: wins over the measurement
    memory_budget_bytes: int = DEFAULT_EXECUTION_MEMORY_BYTES
    ceiling: int = 1024  # never more than one request's instance limit

    def batch_size(self, bytes_per_item: float | None, measured_items: int | None = None) -> int:
        """Images per model call. A measured size never exceeds the batch it was measured with: that
        shape is the largest whose memory is known (and already warmed up)."""
        if self.max_execution_batch_size:
            return self.max_execution_batch_size
        if bytes_per_item is None:
            return min(FALLBACK_EXECUTION_BATCH_SIZE, self.ceiling)
        ceiling = min(self.ceiling, measured_items) if measured_items else self.ceiling
        if bytes_per_item <= 0:  # below what RSS can resolve: the budget does not bind
            return ceiling
        return int(max(1, min(ceiling, self.memory_budget_bytes // bytes_per_item)))


class Admission:
    """Counts items in flight across every request; refuses what would pass ``limit``."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def acquire(self, items: int) -> None:
        with self._lock:
            if self._in_flight + items > self.limit:
                busy = self._in_flight
                raise unavailable(
                    f"Server at capacity: {busy} images in flight, this request "
                    f"adds {items} and the limit is {self.limit}; retry later"
                )
            self._in_flight += items

    def release(self, items: int) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - items)


# ---------------------------------------------------------------- measuring memory per item


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth(call: Callable[[], object]) -> float | None:
    """Bytes the process's peak RSS rose above its RSS before ``call`` (None where /proc cannot tell).

    Other threads' allocations in the meantime make it larger, never smaller: the execution batch
    it sizes errs on the safe side.
    """

    release_freed_memory()
    before = _current_rss_bytes()
    if before is None or not _reset_peak_rss():
        call()
        return None
    call()
    peak = _peak_rss_bytes()
    return None if peak is None else float(max(0, peak - before))


def measure_memory_per_item(run: RunFn, inputs: dict[str, np.ndarray]) -> float | None:
    """Peak RSS growth of one ``run(inputs)`` per item: meaningful the first time a batch this large runs."""
    growth = peak_rss_growth(lambda: run(inputs))
    return None if growth is None else growth / batch_size_of(inputs)
