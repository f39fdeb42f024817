"""Progress (counts, rate, ETA) for the slow loops: demo generation, image checks, feature caching, prediction.

A bar is drawn on stderr when stderr is a terminal and the package logs at INFO. Without a
terminal (a log file, CI, a notebook's captured output) a long step prints a plain line instead,
at most every ``LINE_INTERVAL_SECONDS`` (count, rate, ETA), so a log shows where a run is; steps
shorter than that print nothing. Neither shows with logging above INFO or inside ``shown(False)``
(what ``train.verbose=0`` sets). ``VINTED_PROGRESS=0/1`` forces bars off/on.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from tqdm import tqdm

_FORCED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("vinted_progress_forced", default=None)
ENV_VAR = "VINTED_PROGRESS"
LINE_INTERVAL_SECONDS = 30.0  # without a terminal: at most one line per step this often


def enabled() -> bool:
    """Whether a bar started now would be drawn."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    setting = os.environ.get(ENV_VAR)
    if setting in ("0", "1"):
        return setting == "1"
    return sys.stderr.isatty() and logging.getLogger("vinted_classifier").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def shown(flag: bool | None) -> Iterator[None]:
    """Force bars on (True) or off (False) for the duration; None keeps the automatic rule."""
    token = _FORCED.set(flag)
    try:
        yield
    finally:
        _FORCED.reset(token)


def lines_enabled() -> bool:
    """Whether a step started now would print plain progress lines (no bar, but someone may read the log)."""
    if _FORCED.get() is False or os.environ.get(ENV_VAR) == "0" or enabled():
        return False
    return logging.getLogger("vinted_classifier").isEnabledFor(logging.INFO)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def progress_line(desc: str, done: int, total: int | None, seconds: float, unit: str) -> str:
    """``caching features: 120/240 batch (50%), 4.0 batch/s, ETA 0:30``: what one plain line says."""
    rate = done / seconds if seconds > 0 else 0.0
    if total is None:
        return f"{desc}: {done} {unit}, {rate:.1f} {unit}/s, {_clock(seconds)} elapsed"
    eta = (total - done) / rate if rate > 0 else None
    return (
        f"{desc}: {done}/{total} {unit} ({done / total:.0%}), {rate:.1f} {unit}/s, "
        f"ETA {'?' if eta is None else _clock(eta)}"
    )


class PlainLines:
    """A ``tqdm`` look-alike (iterate, ``update``, ``close``, ``with``) that prints a line every interval."""

    def __init__(
        self, iterable: Iterable | None, *, total: int | None, desc: str, unit: str, interval: float | None = None
    ):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.interval = LINE_INTERVAL_SECONDS if interval is None else interval
        self.n, self.printed = 0, 0
        self.printed_at: int | None = None
        self.started = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        self.printed, self.printed_at = self.printed + 1, self.n
        print(progress_line(self.desc, self.n, self.total, now - self.started, self.unit), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.printed and self.n != self.printed_at:  # a step that spoke says where it finished
            self._print(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "img") -> Any:
    """A ``tqdm`` bar on a terminal, plain lines without one, else a silent pass-through; iterator or ``with``."""
    if lines_enabled():
        return PlainLines(iterable, total=total, desc=desc, unit=unit)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled(),
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def keras_callback(total_batches: int | None, desc: str):
    """A Keras callback that advances a bar per predicted batch (``model.predict(..., callbacks=[...])``)."""
    # Keras only when a callback is built: data loading and the CLI use this module without TensorFlow.
    import keras  # noqa: PLC0415

    class _PredictProgress(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            self.bar = bar(total=total_batches, desc=desc, unit="batch")

        def on_predict_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_predict_end(self, logs=None):
            self.bar.close()

    return _PredictProgress()


def fit_lines_callback(phase: str):
    """Without a terminal: a plain line at most every interval inside a long epoch.

    A CPU fine-tune epoch takes minutes, too long to stay silent.
    """
    # Keras only when a callback is built: data loading and the CLI use this module without TensorFlow.
    import keras  # noqa: PLC0415

    class _BatchLines(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs = self.params.get("epochs") or 0
            self.lines = PlainLines(
                None, total=self.params.get("steps"), unit="batch", desc=f"{phase} epoch {epoch + 1}/{epochs}"
            )

        def on_train_batch_end(self, batch, logs=None):
            self.lines.update(1)

    return _BatchLines()


def epoch_line(logs: dict, *, phase: str, epoch: int, epochs: int, seconds: float, category_output: str) -> str:
    """One short line a person reads: loss (train/val), validation top-1, top-2 and mean tag F1, and time.

    Tag F1 is computed per tag from Keras's validation precision and recall (at Keras's fixed 0.5,
    not the tuned thresholds the final evaluation uses), then averaged over tags; a value missing
    from ``logs`` prints as ``-``. Everything else stays in history.csv/TensorBoard.
    """

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    f1s = []
    for key, precision in logs.items():
        if key.startswith("val_tags_precision_"):
            recall = logs.get("val_tags_recall_" + key[len("val_tags_precision_") :])
            if recall is not None:
                f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    tag_f1 = sum(f1s) / len(f1s) if f1s else None
    width = len(str(epochs))
    top1, top2 = logs.get(f"val_{category_output}_top1"), logs.get(f"val_{category_output}_top2")
    return (
        f"{phase} {epoch:>{width}}/{epochs}  loss {fmt(logs.get('loss'))}  val_loss {fmt(logs.get('val_loss'))}"
        f"  top-1 {fmt(top1)}  top-2 {fmt(top2)}  tag F1 {fmt(tag_f1)}  {seconds:.1f}s"
    )


def epoch_line_callback(phase: str, category_output: str):
    """A Keras callback printing :func:`epoch_line` after every epoch (instead of Keras's 15-metric line)."""
    # Keras only when a callback is built: data loading and the CLI use this module without TensorFlow.
    import keras  # noqa: PLC0415

    class _EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            line = epoch_line(
                {k: float(v) for k, v in (logs or {}).items()},
                phase=phase,
                epoch=epoch + 1,
                epochs=self.params.get("epochs") or 0,
                seconds=time.perf_counter() - self.started,
                category_output=category_output,
            )
            print(line, flush=True)

    return _EpochLine()


def quiet_when_not_verbose(function):
    """Decorator for ``f(cfg, ...)``: with ``cfg.train.verbose == 0`` no bar shows anywhere inside."""

    @functools.wraps(function)
    def wrapper(cfg, *args, **kwargs):
        if cfg.train.verbose != 0:
            return function(cfg, *args, **kwargs)
        with shown(False):
            return function(cfg, *args, **kwargs)

    return wrapper
