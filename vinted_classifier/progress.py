"""Progress bars (counts, rate, ETA) for the slow loops: demo generation, image checks, feature caching, prediction.

A bar is drawn on stderr when stderr is a terminal and the package logs at INFO; never in
logs, CI or tests (not a terminal), with ``-q``-style logging above INFO, or inside
``shown(False)`` (what ``train.verbose=0`` sets). ``VINTED_PROGRESS=0/1`` forces it off/on.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

_FORCED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("vinted_progress_forced", default=None)
ENV_VAR = "VINTED_PROGRESS"


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


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "img") -> Any:
    """A ``tqdm`` bar (a silent pass-through when not :func:`enabled`); use as iterator or context manager."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), leave=False,
                dynamic_ncols=True, file=sys.stderr)


def keras_callback(total_batches: int | None, desc: str):
    """A Keras callback that advances a bar per predicted batch (``model.predict(..., callbacks=[...])``)."""
    import keras

    class _PredictProgress(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            self.bar = bar(total=total_batches, desc=desc, unit="batch")

        def on_predict_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_predict_end(self, logs=None):
            self.bar.close()

    return _PredictProgress()


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
            recall = logs.get("val_tags_recall_" + key[len("val_tags_precision_"):])
            if recall is not None:
                f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    tag_f1 = sum(f1s) / len(f1s) if f1s else None
    width = len(str(epochs))
    return (f"{phase} {epoch:>{width}}/{epochs}  loss {fmt(logs.get('loss'))}  val_loss {fmt(logs.get('val_loss'))}"
            f"  top-1 {fmt(logs.get(f'val_{category_output}_top1'))}  top-2 {fmt(logs.get(f'val_{category_output}_top2'))}"
            f"  tag F1 {fmt(tag_f1)}  {seconds:.1f}s")


def epoch_line_callback(phase: str, category_output: str):
    """A Keras callback printing :func:`epoch_line` after every epoch (instead of Keras's 15-metric line)."""
    import time

    import keras

    class _EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            line = epoch_line({k: float(v) for k, v in (logs or {}).items()}, phase=phase, epoch=epoch + 1,
                              epochs=self.params.get("epochs") or 0, seconds=time.perf_counter() - self.started,
                              category_output=category_output)
            print(line, flush=True)

    return _EpochLine()


def quiet_when_not_verbose(function):
    """Decorator for ``f(cfg, ...)``: with ``cfg.train.verbose == 0`` no bar shows anywhere inside."""
    import functools

    @functools.wraps(function)
    def wrapper(cfg, *args, **kwargs):
        if cfg.train.verbose != 0:
            return function(cfg, *args, **kwargs)
        with shown(False):
            return function(cfg, *args, **kwargs)

    return wrapper
