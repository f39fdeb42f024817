"""Fabric: the ``color1`` base colour and the tag's pattern, drawn per pixel in garment coordinates."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Fabric colour per color1 name. VARIOUS has no single colour (multicolour patches); BODY is a skin tone.
COLOR_RGB = {
    "BLACK": (28, 28, 32),
    "VARIOUS": (150, 150, 150),
    "BLUE": (45, 85, 175),
    "WHITE": (240, 240, 236),
    "PINK": (240, 165, 195),
    "RED": (200, 32, 42),
    "GREY": (130, 130, 134),
    "GREEN": (52, 135, 64),
    "BODY": (226, 190, 160),
    "PURPLE": (112, 52, 142),
    "BROWN": (112, 72, 42),
    "TURQUOISE": (48, 190, 190),
    "YELLOW": (242, 212, 52),
    "NAVY": (28, 38, 84),
    "ORANGE": (242, 132, 32),
    "BURGUNDY": (112, 22, 44),
    "ROSE": (205, 120, 135),
    "CREAM": (245, 236, 206),
    "KHAKI": (172, 160, 112),
    "LIGHT-BLUE": (162, 202, 236),
    "GOLD": (212, 172, 62),
    "CORAL": (250, 122, 102),
    "DARK-GREEN": (22, 72, 42),
    "SILVER": (192, 194, 200),
    "LILAC": (196, 162, 216),
    "MINT": (172, 230, 202),
    "MUSTARD": (212, 166, 32),
}
PALETTE = np.array([c for k, c in COLOR_RGB.items() if k != "VARIOUS"], dtype=np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (small random grid, bilinear upscaled)."""
    small = (rng.random((max(2, cells * h // w), cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def contrast_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A pattern colour that stands out from the fabric (white on dark, dark or vivid on light)."""
    lum = float(base @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    if lum < 100:
        return np.array([245, 245, 240], np.float32) if rng.random() < 0.7 else _vivid(rng, light=True)
    if rng.random() < 0.5:
        return np.array([20, 22, 40], np.float32) * rng.uniform(0.8, 1.4)
    if rng.random() < 0.5 and lum < 200:
        return np.array([248, 248, 244], np.float32)
    return _vivid(rng, light=False)


def _vivid(rng: np.random.Generator, light: bool) -> np.ndarray:
    col = PALETTE[rng.integers(len(PALETTE))].copy()
    return np.clip(col * 0.6 + 100, 0, 255) if light else col * 0.8


def _cell_values(rng: np.random.Generator, cell: np.ndarray) -> np.ndarray:
    """A random value per lattice cell (256 distinct, repeating every 16 cells), gathered per pixel."""
    return np.take(rng.random(256).astype(np.float32), cell)


def _lattice(u: np.ndarray, v: np.ndarray, period: float, stagger: bool):
    """Cell id (0..255) and offset from the cell centre for a square lattice, rows optionally staggered."""
    inv = 1.0 / period
    jf = np.floor(v * inv)
    uf = u * inv + ((jf % 2) * 0.5 if stagger else 0.0)
    i_f = np.floor(uf)
    du = (uf - i_f - 0.5) * period
    dv = (v * inv - jf - 0.5) * period
    cell = ((i_f.astype(np.int32) & 15) << 4) | (jf.astype(np.int32) & 15)
    return cell, du, dv


def _blend(under: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return under + (colour - under) * alpha[..., None]


def pattern(
    tag: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray, base: np.ndarray, px: float
) -> np.ndarray:
    """Draw the tag's pattern onto ``fabric`` in garment coordinates (u, v); ``px`` = one pixel in units.

    Patterns are evaluated per pixel in garment coordinates, so they follow the garment's rotation and
    scale and are clipped to it by the caller's mask."""
    draw = {"polka dot": _polka_dots, "floral": _floral, "checker": _checks}.get(tag, _untagged)
    return draw(rng, u, v, fabric, base, px)


def _aa(px: float) -> float:
    """Inverse width of the anti-aliasing ramp (~1 px)."""
    return 1.0 / (px * 1.2)


def _polka_dots(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray, base: np.ndarray, px: float
) -> np.ndarray:
    r = rng.uniform(2.5, 10) * px
    cell, du, dv = _lattice(u, v, r * rng.uniform(2.4, 4.2), stagger=rng.random() < 0.6)
    rad = r * (0.6 + 0.7 * _cell_values(rng, cell)) if rng.random() < 0.2 else r  # irregular sizes
    alpha = np.clip((rad - np.sqrt(du * du + dv * dv)) * _aa(px) + 0.5, 0, 1)
    return _blend(fabric, contrast_colour(rng, base), alpha)


def _floral(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray, base: np.ndarray, px: float
) -> np.ndarray:
    inv_aa = _aa(px)
    size = rng.uniform(5, 14) * px
    period = size * rng.uniform(2.2, 3.4)
    cell, du, dv = _lattice(u, v, period, stagger=True)
    du = du + (_cell_values(rng, cell) - 0.5) * (period * 0.35)
    dv = dv + (_cell_values(rng, cell) - 0.5) * (period * 0.35)
    kind = _cell_values(rng, cell)
    scale = size * (0.7 + 0.5 * kind)
    petals = int(rng.integers(4, 7))
    ang = np.arctan2(dv, du) + _cell_values(rng, cell) * 6.283
    r = np.sqrt(du * du + dv * dv)
    present = _cell_values(rng, cell) < rng.uniform(0.75, 1.0)
    edge = scale * (0.725 + 0.275 * np.cos(petals * ang))
    petal_a = np.clip((edge - r) * inv_aa + 0.5, 0, 1) * present
    centre_a = np.clip((scale * 0.28 - r) * inv_aa + 0.5, 0, 1) * present
    colours = np.stack([contrast_colour(rng, base) for _ in range(3)])
    if rng.random() < 0.6:  # flowers in up to three colours
        petal_col = colours[np.minimum((kind * 3).astype(np.int32), 2)]
        out = fabric + (petal_col - fabric) * petal_a[..., None]
    else:
        out = _blend(fabric, colours[0], petal_a)
    if rng.random() < 0.6:  # leaves beside the flowers
        leaf_col = np.array([60, 120, 55], np.float32) * rng.uniform(0.7, 1.2)
        lu, lv = (du - scale * 1.15) / (scale * 0.55), (dv + scale * 0.4) / (scale * 0.25)
        leaf_a = np.clip((1 - lu * lu - lv * lv) * 3, 0, 1) * present * (1 - petal_a)
        out = _blend(out, leaf_col, leaf_a)
    centre_col = np.array([235, 200, 60], np.float32) if rng.random() < 0.6 else base * 0.6
    return _blend(out, centre_col, centre_a)


def _checks(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray, base: np.ndarray, px: float
) -> np.ndarray:
    inv_aa = _aa(px)
    period = rng.uniform(8, 32) * px
    col = contrast_colour(rng, base)
    kind = rng.choice(["gingham", "tartan", "windowpane", "buffalo"], p=[0.35, 0.35, 0.15, 0.15])
    if kind == "buffalo":
        period *= 1.6
    width = period * (0.5 if kind in ("gingham", "buffalo") else rng.uniform(0.12, 0.3))
    fu, fv = _wrap(u, period), _wrap(v, period)
    bu = np.clip((width - fu) * inv_aa + 0.5, 0, 1)
    bv = np.clip((width - fv) * inv_aa + 0.5, 0, 1)
    if kind == "buffalo":
        alpha = np.abs(bu - bv) * 0.95
    else:
        alpha = (np.maximum(bu, bv) * 0.55 + bu * bv * 0.45) * rng.uniform(0.55, 0.8)
    out = _blend(fabric, col, alpha)
    if kind == "tartan":  # thin over-check lines in a third colour
        half = period * 0.5
        lu = np.clip((px * 1.5 - np.abs(fu - half)) * inv_aa + 0.5, 0, 1)
        lv = np.clip((px * 1.5 - np.abs(fv - half)) * inv_aa + 0.5, 0, 1)
        out = _blend(out, _vivid(rng, light=rng.random() < 0.5), np.maximum(lu, lv) * 0.8)
    return out


def _untagged(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray, base: np.ndarray, px: float
) -> np.ndarray:
    """Plain, a subtle knit texture or (rarely) one-way stripes, which are not checks."""
    if rng.random() < 0.08:
        period = rng.uniform(8, 28) * px
        alpha = np.clip((period * 0.4 - _wrap(v, period)) * _aa(px) + 0.5, 0, 1) * rng.uniform(0.4, 0.8)
        return _blend(fabric, contrast_colour(rng, base), alpha)
    if rng.random() < 0.3:
        rib = 0.5 + 0.5 * np.sin(u * (1.0 / (px * rng.uniform(1.5, 3))))
        return fabric * (1 - 0.04 * rib)[..., None]
    return fabric


def _wrap(x: np.ndarray, period: float) -> np.ndarray:
    """``x mod period`` (faster than np.mod for floats)."""
    t = x * (1.0 / period)
    return (t - np.floor(t)) * period


def fabric_base(color: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, px: float):
    """Fabric before the pattern: ``color1`` with a small per-photo tint; VARIOUS = multicolour patches."""
    h, w = u.shape
    if color != "VARIOUS":
        base = np.clip(np.array(COLOR_RGB[color], np.float32) * rng.uniform(0.9, 1.08, 3), 0, 255).astype(np.float32)
        return np.broadcast_to(base, (h, w, 3)), base  # read-only view; patterns make new arrays
    cols = PALETTE[rng.choice(len(PALETTE), size=4, replace=False)]
    kind = rng.choice(["blocks", "stripes", "blobs"])
    if kind == "blocks":
        size = rng.uniform(25, 70) * px
        idx = (np.floor(u / size).astype(int) * 3 + np.floor(v / size).astype(int) * 5) % 4
    elif kind == "stripes":
        size = rng.uniform(10, 40) * px
        idx = np.floor(v / size).astype(int) % 4
    else:
        n1, n2 = smooth_noise(rng, h, w, 5), smooth_noise(rng, h, w, 5)
        idx = (n1 > 0.5).astype(int) * 2 + (n2 > 0.5).astype(int)
    fabric = cols[idx]
    return fabric.astype(np.float32), cols.mean(axis=0).astype(np.float32)
