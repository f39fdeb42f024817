"""Bounded memory for encoded images: refuse bombs, decode big images small before the graph.

A graph that decodes a 25-megapixel photo holds it as uint8 and float32 (about 16 bytes per
pixel with the resize), and glibc keeps that memory after the request. So every DT_STRING image
input is checked here first: its header must announce at most ``max_pixels``; above
``decode_pixels`` the server decodes it itself at reduced size (JPEG: libjpeg's DCT scaling
via PIL ``draft``, 1/2 to 1/8, never below the target; other formats: full decode, then
``reduce``), shrinks it to at most ``decode_pixels`` and hands the graph a lossless PNG of that.
The cost of one image at the limit is bounded by PIL's 4 bytes per decoded pixel (docs/serving.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math

from PIL import Image

from .errors import invalid

# 12 MP: a PNG at the limit decodes to 48 MiB in PIL (4 bytes per pixel) and stays under 64 MiB of
# extra server memory in total (measured by tests/serving/test_serve_memory.py).
DEFAULT_MAX_IMAGE_PIXELS = 12_000_000
# Images above this many pixels reach the graph shrunk to it (far above the model's input size).
DEFAULT_DECODE_PIXELS = 1024 * 1024


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header; None for bytes PIL cannot identify (the graph's call)."""

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        raise invalid(f"Image too large: {exc}") from None
    except Exception:  # noqa: BLE001 - unknown or broken formats are decoded (and refused) by the graph
        return None


def prepare_image(data: bytes, max_pixels: int, decode_pixels: int = DEFAULT_DECODE_PIXELS) -> bytes:
    """The bytes the graph should decode: ``data`` itself, or a shrunk PNG of a big image."""
    size = image_size(data)
    if size is None:
        return data
    width, height = size
    if width * height > max_pixels:
        raise invalid(f"Image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if width * height <= decode_pixels:
        return data
    return _shrink(data, width, height, decode_pixels)


def _shrink(data: bytes, width: int, height: int, decode_pixels: int) -> bytes:

    scale = math.sqrt(decode_pixels / (width * height))
    target = (max(1, int(width * scale)), max(1, int(height * scale)))
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", target)  # JPEG: decode at the smallest DCT scale still >= target
            image.thumbnail(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
            rgb = image.convert("RGB")
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", compress_level=1)
        shrunk = buffer.getvalue()
    except Exception:  # noqa: BLE001 - truncated or corrupt: let the graph give its decode error
        return data
    finally:
        release_freed_memory()
    return shrunk


_LIBC: list = []

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
# Above the largest activation of one image at the default input size (VGG19 block 1 at 160x128:
# 5 MiB) and below image-sized request buffers (multi-MB bodies, PIL's 16 MiB decode blocks).
HEAP_MMAP_THRESHOLD = 8 * 1024 * 1024
# Free memory a heap keeps at its top for the next model call (glibc's own default grows to 64 MiB).
HEAP_TRIM_THRESHOLD = 32 * 1024 * 1024


def _libc():
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            _LIBC.append(ctypes.CDLL(name) if name else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def bound_heap_retention(mmap_threshold: int = HEAP_MMAP_THRESHOLD, trim_threshold: int = HEAP_TRIM_THRESHOLD) -> bool:
    """Give image-sized buffers back to the OS when freed, and keep model-call memory for reuse.

    glibc raises its mmap threshold after big blocks are freed (up to 32 MiB), after which
    image-sized buffers come from a thread's heap, whose top ``malloc_trim`` cannot release: the
    server would keep them. Fixing the threshold stops that. Fixing it also fixes the trim
    threshold (at 128 KiB unless set), which makes every model call hand its activations back and
    page-fault them in again: with 1 MiB and 128 KiB, serving ran about 20% slower than the same
    SavedModel in-process (docs/benchmarks.md, *Serving protocols*). Hence both values.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps big freed blocks in its arenas otherwise)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
