"""Images and model outputs -> ``Observation`` rows; the one code path for export, serving and reports.

Image statistics come from the encoded bytes: size from the header, brightness from a JPEG
decoded at 1/8 scale in grayscale (libjpeg's DCT scaling via PIL's draft mode: about 1/64 of the
pixels), so watching inputs costs a fraction of a full decode (docs/monitoring.md).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from .drift import Observation

# width, height, aspect_ratio, brightness (None when the brightness was not measured).
ImageStats = dict[str, float | None]

# Luma weights of ITU-R BT.601, what PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_BRIGHTNESS_PIXELS = 64 * 64  # non-JPEG images are reduced to about this many pixels first


def image_stats(data: bytes, brightness: bool = True) -> ImageStats | None:
    """width, height, aspect_ratio, brightness (mean luma 0..255; None unless asked) of an encoded image;
    None if unreadable. The size costs a header parse; the brightness a reduced decode."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return None
            luma = _brightness(image, width, height) if brightness else None
    except Exception:  # noqa: BLE001 - an unreadable image has no statistics; the graph reports it
        return None
    return {"width": float(width), "height": float(height), "aspect_ratio": width / height, "brightness": luma}


def _brightness(image, width: int, height: int) -> float:
    image.draft("L", (max(1, width // 8), max(1, height // 8)))  # JPEG only; other formats ignore it
    factor = int(math.sqrt(image.size[0] * image.size[1] / _BRIGHTNESS_PIXELS))
    small = image.reduce(factor) if factor >= 2 else image
    return float(np.asarray(small.convert("L"), dtype=np.float64).mean())


def pixel_stats(pixels: np.ndarray) -> list[ImageStats | None]:
    """The same statistics for float pixels in [0, 1], shape [N, H, W, 3] (the pixel signature)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        return [None] * (pixels.shape[0] if pixels.ndim else 1)
    height, width = pixels.shape[1:3]
    out: list[ImageStats | None] = []
    for row in pixels:
        luma = float(np.mean(row.astype(np.float64) @ _LUMA)) * 255.0
        out.append(
            {"width": float(width), "height": float(height), "aspect_ratio": width / max(height, 1), "brightness": luma}
            if math.isfinite(luma)
            else None
        )
    return out


def input_stats(inputs: dict[str, np.ndarray], brightness=lambda: True) -> list[ImageStats | None]:
    """Per-row image statistics of a request: its string input (encoded images) or its [N,H,W,3] input.

    ``brightness()`` is asked per encoded image whether to decode it for its brightness (a rate cap).
    """
    for array in inputs.values():
        if array.dtype == object or array.dtype.kind in "SU":
            return [image_stats(value, brightness()) for value in array.reshape(-1)]
    for array in inputs.values():
        if array.ndim == 4:
            return pixel_stats(array)
    return []


def observations(
    category_probs: np.ndarray,
    tag_probs: np.ndarray | None,
    thresholds=None,
    images=None,
    tag_flags: np.ndarray | None = None,
) -> tuple[list[Observation], int]:
    """(one Observation per row, rows with a non-finite output).

    A row whose probabilities are not all finite gets no category, confidence or tags (its argmax
    means nothing); it still carries its image statistics.
    """
    category_probs = np.asarray(category_probs, dtype=np.float64)
    rows = category_probs.shape[0]
    tag_probs = np.zeros((rows, 0)) if tag_probs is None else np.asarray(tag_probs, dtype=np.float64)
    finite = np.isfinite(category_probs).all(axis=1) & np.isfinite(tag_probs).all(axis=1)
    if tag_flags is not None:
        flags = np.asarray(tag_flags).astype(bool)
    else:  # the export's tuned thresholds; 0.5 where a model carries none
        n_tags = tag_probs.shape[1]
        cut = np.asarray(thresholds if thresholds is not None and len(thresholds) == n_tags else [0.5] * n_tags)
        flags = tag_probs >= cut
    images = list(images or []) + [None] * rows
    out = []
    for i in range(rows):
        stats = images[i] or {}
        if finite[i]:
            code = int(np.argmax(category_probs[i]))
            out.append(Observation(code, float(category_probs[i, code]), tuple(bool(f) for f in flags[i]), **stats))
        else:
            out.append(Observation(**stats))
    return out, int(rows - finite.sum())
