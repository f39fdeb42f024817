"""Synthetic Vinted-layout demo dataset: label files with the real file's statistics plus drawn garment photos.

The real Vinted images are not public, so every stage of the project (training, evaluation, serving,
benchmarks, the notebook) is exercised end to end on this generated stand-in. Labels follow the real
``data.parquet`` statistics (category counts, per-category tag rates, colours, ~3% duplicate rows);
images are drawn garments whose silhouette carries the category, whose fabric colour carries ``color1``
and whose pattern carries the tags.

Crash safety: everything is written into a temporary folder beside ``out_dir`` and renamed into place
only when complete, so ``out_dir`` never holds half a dataset.

CLI: ``python -m vinted_classifier.demo OUT_DIR [--scale S] [--seed N] [--force]``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import progress

GENERATOR_VERSION = "demo v1"
CATEGORIES = ("BLOUSES", "CASUAL_DRESSES", "MINI_DRESSES", "SHIRTS", "TANK_TOPS")
TAGS = ("polka dot", "floral", "checker")

# Measured once on the real data.parquet, unique rows (3,436): rows per category and, per category,
# rows carrying each tag (no row carries two tags). Embedded so the generator runs without the real file.
REAL_UNIQUE_ROWS = 3436
REAL_DUPLICATE_ROWS = 111
REAL_TEST_ROWS = 429
CATEGORY_COUNTS = {"BLOUSES": 1130, "CASUAL_DRESSES": 581, "MINI_DRESSES": 560, "SHIRTS": 554, "TANK_TOPS": 611}
TAG_COUNTS = {  # category -> (polka dot, floral, checker)
    "BLOUSES": (322, 268, 219),
    "CASUAL_DRESSES": (163, 139, 125),
    "MINI_DRESSES": (177, 197, 49),
    "SHIRTS": (74, 33, 337),
    "TANK_TOPS": (170, 187, 50),
}
COLOR_COUNTS = {
    "BLACK": 1064, "VARIOUS": 495, "BLUE": 409, "WHITE": 279, "PINK": 228, "RED": 210, "GREY": 114,
    "GREEN": 102, "BODY": 101, "PURPLE": 81, "BROWN": 54, "TURQUOISE": 50, "YELLOW": 49, "NAVY": 42,
    "ORANGE": 34, "BURGUNDY": 20, "ROSE": 19, "CREAM": 18, "KHAKI": 16, "LIGHT-BLUE": 15, "GOLD": 11,
    "CORAL": 8, "DARK-GREEN": 6, "SILVER": 5, "LILAC": 3, "MINT": 2, "MUSTARD": 1,
}
# Fabric colour per color1 name. VARIOUS has no single colour (multicolour patches); BODY is a skin tone.
COLOR_RGB = {
    "BLACK": (28, 28, 32), "VARIOUS": (150, 150, 150), "BLUE": (45, 85, 175), "WHITE": (240, 240, 236),
    "PINK": (240, 165, 195), "RED": (200, 32, 42), "GREY": (130, 130, 134), "GREEN": (52, 135, 64),
    "BODY": (226, 190, 160), "PURPLE": (112, 52, 142), "BROWN": (112, 72, 42), "TURQUOISE": (48, 190, 190),
    "YELLOW": (242, 212, 52), "NAVY": (28, 38, 84), "ORANGE": (242, 132, 32), "BURGUNDY": (112, 22, 44),
    "ROSE": (205, 120, 135), "CREAM": (245, 236, 206), "KHAKI": (172, 160, 112), "LIGHT-BLUE": (162, 202, 236),
    "GOLD": (212, 172, 62), "CORAL": (250, 122, 102), "DARK-GREEN": (22, 72, 42), "SILVER": (192, 194, 200),
    "LILAC": (196, 162, 216), "MINT": (172, 230, 202), "MUSTARD": (212, 166, 32),
}
_PALETTE = np.array([c for k, c in COLOR_RGB.items() if k != "VARIOUS"], dtype=np.float32)
_UUID_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


# --------------------------------------------------------------------------------------------- labels
def _quota(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` summing to ``total`` (largest remainder), so small sets
    still match the real proportions instead of drifting with sampling noise."""
    raw = np.asarray(weights, dtype=float) / np.sum(weights) * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _make_uuids(rng: np.random.Generator, n: int) -> list[str]:
    """Real-format ids: 5 lowercase hex (real ones stay below 0x4e20), ``_``, 24 alphanumerics."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = n - len(out)
        prefixes = rng.integers(0, 20000, size=k)
        tails = rng.choice(_UUID_ALPHABET, size=(k, 24))
        for p, t in zip(prefixes, tails):
            uid = f"{p:05x}_{''.join(t)}"
            if uid not in seen:
                seen.add(uid)
                out.append(uid)
    return out


def _sample_labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Category and tag columns by quota (exact real proportions), colour sampled from real frequencies."""
    cats = np.repeat(np.array(CATEGORIES), _quota(np.array([CATEGORY_COUNTS[c] for c in CATEGORIES]), n))
    tag_idx = np.empty(n, dtype=int)  # 0..2 = tag, 3 = none
    for cat in CATEGORIES:
        rows = np.flatnonzero(cats == cat)
        tc = np.array(TAG_COUNTS[cat], dtype=float)
        weights = np.append(tc, CATEGORY_COUNTS[cat] - tc.sum())
        tag_idx[rows] = rng.permutation(np.repeat(np.arange(4), _quota(weights, len(rows))))
    order = rng.permutation(n)
    cats, tag_idx = cats[order], tag_idx[order]
    names = np.array(list(COLOR_COUNTS))
    freq = np.array(list(COLOR_COUNTS.values()), dtype=float)
    colors = rng.choice(names, size=n, p=freq / freq.sum())
    cols = {"cc3": cats, "color1": colors}
    for i, tag in enumerate(TAGS):
        cols[tag] = (tag_idx == i).astype(np.int64)
    return cols


def _sizes(scale: float) -> tuple[int, int, int]:
    n_unique = max(1, round(REAL_UNIQUE_ROWS * scale))
    n_dup = min(n_unique, round(REAL_DUPLICATE_ROWS * scale))
    n_test = max(1, round(REAL_TEST_ROWS * scale))
    return n_unique, n_dup, n_test


def make_labels(*, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """All label tables as column dicts (no files): ``data`` (unique rows, then duplicates appended as
    in the real file), ``test_labels`` and ``example_predictions``. Deterministic from ``seed``."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng([seed, 0])
    n_unique, n_dup, n_test = _sizes(scale)
    uuids = _make_uuids(rng, n_unique + n_test)
    data = {"uuid": np.array(uuids[:n_unique], dtype=object), **_sample_labels(rng, n_unique)}
    test = {"uuid": np.array(uuids[n_unique:], dtype=object), **_sample_labels(rng, n_test)}
    dup_rows = np.sort(rng.choice(n_unique, size=n_dup, replace=False))
    data = {k: np.concatenate([v, v[dup_rows]]) for k, v in data.items()}
    cat1 = rng.integers(0, len(CATEGORIES), size=n_test)
    cat2 = (cat1 + rng.integers(1, len(CATEGORIES), size=n_test)) % len(CATEGORIES)
    example = {"uuid": test["uuid"], "category1": cat1.astype(np.int64), "category2": cat2.astype(np.int64)}
    for tag in TAGS:
        example[tag] = rng.integers(0, 2, size=n_test).astype(np.int64)
    return {"data": data, "test_labels": test, "example_predictions": example, "n_unique": n_unique,
            "n_duplicates": n_dup, "n_test": n_test}


def _write_table(columns: dict[str, np.ndarray], path: Path, metadata: dict[bytes, bytes]) -> None:
    """pyarrow ``string``/``int64`` exactly as the real files (pandas 3 would write ``large_string``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vinted_classifier.utils import atomic_path

    fields, arrays = [], []
    for name, values in columns.items():
        typ = pa.int64() if np.asarray(values).dtype.kind in "iu" else pa.string()
        fields.append(pa.field(name, typ))
        arrays.append(pa.array(list(values) if typ == pa.string() else values, type=typ))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


# --------------------------------------------------------------------------------------------- images
def _silhouette(category: str, rng: np.random.Generator) -> dict[str, Any]:
    """Garment outline in local units (neck centre at 0,0; chest half-width ~1; y down) plus details.

    Proportions are random per image and the ranges of neighbouring classes overlap a little, so the
    category is learnable but not a lookup."""
    u = rng.uniform
    c = u(0.9, 1.1)
    p: dict[str, Any] = {"collar": False, "placket": False, "ruffle": False, "pocket": False, "belt": False,
                         "neck": "round", "cuffs": False, "folds": 0}
    if category == "BLOUSES":
        sleeve = rng.choice(["short", "three_quarter", "long", "none"], p=[0.34, 0.25, 0.33, 0.08])
        p.update(neck_w=u(0.3, 0.45), shoulder_x=u(1.0, 1.25) * c, armpit_y=u(0.85, 1.1), waist_w=u(0.95, 1.12) * c,
                 hem_y=u(2.2, 2.9), hem_w=u(1.0, 1.25) * c, hem_curve=u(0.0, 0.08), neck=rng.choice(["round", "v"]),
                 ruffle=u() < 0.35, collar=u() < 0.08, placket=u() < 0.15, sleeve_flare=u(0.9, 1.35), folds=2)
    elif category == "CASUAL_DRESSES":
        sleeve = rng.choice(["short", "three_quarter", "long", "none"], p=[0.35, 0.2, 0.2, 0.25])
        p.update(neck_w=u(0.3, 0.45), shoulder_x=u(0.95, 1.1) * c, armpit_y=u(0.85, 1.05), waist_w=u(0.82, 1.0) * c,
                 waist_y=u(1.6, 2.0), hem_y=u(3.6, 5.0), hem_w=u(1.35, 1.95) * c, hem_curve=u(0.05, 0.2),
                 neck=rng.choice(["round", "v"]), belt=u() < 0.3, ruffle=u() < 0.15, sleeve_flare=u(0.9, 1.2), folds=4)
    elif category == "MINI_DRESSES":
        sleeve = rng.choice(["straps", "none", "short", "long"], p=[0.42, 0.25, 0.2, 0.13])
        p.update(neck_w=u(0.32, 0.5), shoulder_x=u(0.9, 1.05) * c, armpit_y=u(0.85, 1.1), waist_w=u(0.72, 0.9) * c,
                 waist_y=u(1.5, 1.8), hem_y=u(2.7, 3.5), hem_w=u(0.95, 1.3) * c, hem_curve=u(0.0, 0.1),
                 neck=rng.choice(["round", "v", "square"]), belt=u() < 0.12, sleeve_flare=u(0.85, 1.1), folds=2)
    elif category == "SHIRTS":
        sleeve = rng.choice(["long", "short"], p=[0.8, 0.2])
        p.update(neck_w=u(0.25, 0.33), shoulder_x=u(1.05, 1.2) * c, armpit_y=u(0.9, 1.1), waist_w=u(0.95, 1.05) * c,
                 hem_y=u(2.6, 3.2), hem_w=u(1.0, 1.08) * c, hem_curve=u(0.12, 0.28), collar=u() < 0.95,
                 placket=True, pocket=u() < 0.4, cuffs=True, sleeve_flare=u(0.75, 0.95), folds=1)
    else:  # TANK_TOPS
        sleeve = rng.choice(["straps", "none"], p=[0.55, 0.45])
        c *= u(0.8, 0.92)
        p.update(neck_w=u(0.28, 0.45), shoulder_x=u(0.55, 0.75) * c, armpit_y=u(0.95, 1.3), waist_w=u(0.85, 0.98) * c,
                 hem_y=u(2.3, 3.0), hem_w=u(0.9, 1.1) * c, hem_curve=u(0.0, 0.08),
                 neck=rng.choice(["round", "v", "square"]),
                 ruffle=u() < 0.08, folds=1)
    p.setdefault("waist_y", (p["armpit_y"] + p["hem_y"]) / 2)
    p.update(c=c, sleeve=str(sleeve), shoulder_y=u(0.12, 0.28))
    if p["sleeve"] == "straps":
        p["shoulder_x"] = p["neck_w"] + u(0.06, 0.12)
    elif p["sleeve"] == "none" and category != "TANK_TOPS":
        p["shoulder_x"] = p["neck_w"] + u(0.2, 0.4)
    return _outline(p, rng)


def _bezier(p0, p1, p2, n: int = 6) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [tuple(q) for q in pts]


def _outline(p: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Right half of the outline, mirrored; sleeves as a quad from shoulder/armpit."""
    c, sx, sy, ay = p["c"], p["shoulder_x"], p["shoulder_y"], p["armpit_y"]
    right: list[tuple[float, float]] = [(p["neck_w"], 0.0), (sx, sy)]
    seams: list[list[tuple[float, float]]] = []
    if p["sleeve"] in ("short", "three_quarter", "long"):
        length = {"short": rng.uniform(0.35, 0.7), "three_quarter": rng.uniform(1.1, 1.6),
                  "long": rng.uniform(1.7, 2.3)}[p["sleeve"]]
        theta = math.radians(rng.uniform(18, 42) if p["sleeve"] != "short" else rng.uniform(30, 55))
        d = np.array([math.sin(theta), math.cos(theta)])
        n = np.array([-math.cos(theta), math.sin(theta)])
        shoulder, armpit = np.array([sx, sy]), np.array([c, ay])
        opening = max(float((armpit - shoulder) @ n), 0.38)  # sleeve width where it meets the body
        flare = p["sleeve_flare"] if p["sleeve"] != "short" else rng.uniform(0.9, 1.1)
        cuff = opening * flare * (0.8 if p["sleeve"] == "long" else 1.0)
        e1 = shoulder + d * length
        e2 = e1 + n * cuff
        # the underarm seam must leave the armpit outwards, or the outline folds into the body
        push = max(0.0, 0.18 - float((e2 - armpit) @ d))
        e1, e2 = e1 + d * push, e2 + d * push
        right += [tuple(e1), tuple(e2)]
        seams.append([(sx, sy), (c, ay)])
        if p["cuffs"] and p["sleeve"] == "long":
            seams.append([tuple(e1 - d * 0.25), tuple(e2 - d * 0.25)])
        p["sleeve_ends"] = (tuple(e1), tuple(e2))
        right.append((c, ay))
    else:
        right += _bezier((sx, sy), (sx + 0.05, ay * 0.9), (c, ay))[1:]
    wy, hy = p["waist_y"], p["hem_y"]
    right += [(p["waist_w"], wy), (p["hem_w"], hy)]
    right += _bezier((p["hem_w"], hy), (p["hem_w"] * 0.5, hy + p["hem_curve"] * 1.6), (0.0, hy + p["hem_curve"]))[1:]
    left = [(-x, y) for x, y in reversed(right)]
    back_dip = 0.06
    back_neck = _bezier((-p["neck_w"], 0.0), (0.0, back_dip * 2), (p["neck_w"], 0.0))[1:-1]
    body = right + left[1:-1] + [(-p["neck_w"], 0.0)] + back_neck
    # Inside of the back, seen through the front neckline.
    nw = p["neck_w"]
    depth = {"round": rng.uniform(0.2, 0.4), "v": rng.uniform(0.45, 0.8), "square": rng.uniform(0.25, 0.45)}[p["neck"]]
    if p["sleeve"] == "straps":
        depth = max(depth, ay * 0.5)
    if p["neck"] == "v":
        front = [(nw, 0.0), (0.0, depth), (-nw, 0.0)]
    elif p["neck"] == "square":
        front = [(nw, 0.0), (nw * 0.95, depth), (-nw * 0.95, depth), (-nw, 0.0)]
    else:
        front = _bezier((nw, 0.0), (nw * 0.9, depth * 2), (-nw, 0.0), 8)[:-1] + [(-nw, 0.0)]
    inside = front + _bezier((-nw, 0.0), (0.0, back_dip * 2), (nw, 0.0))[1:-1]
    extra: list[list[tuple[float, float]]] = []
    if p["collar"]:
        for s in (1, -1):
            extra.append([(s * nw * 1.05, -0.08), (s * (nw + 0.2), 0.22), (s * 0.07, 0.45), (0.0, 0.12)])
        inside = []
    if p["placket"]:
        top = 0.35 if p["collar"] else depth
        for dx in (-0.06, 0.06):
            seams.append([(dx, top), (dx, hy + p["hem_curve"] * 0.95)])
        p["buttons"] = [(0.0, y) for y in np.arange(top + 0.12, hy + p["hem_curve"] - 0.05, rng.uniform(0.3, 0.42))]
    if p["pocket"]:
        x0, y0 = rng.uniform(0.35, 0.5), rng.uniform(0.55, 0.75)
        x1, y1 = x0 + 0.35, y0 + 0.38
        seams.append([(x0, y0), (x1, y0), (x1, y1), ((x0 + x1) / 2, y1 + 0.07), (x0, y1), (x0, y0)])
    if p["belt"]:
        seams.append([(-p["waist_w"], wy - 0.05), (p["waist_w"], wy - 0.05)])
        seams.append([(-p["waist_w"], wy + 0.07), (p["waist_w"], wy + 0.07)])
    blobs: list[tuple[float, float, float]] = []
    if p["ruffle"]:
        n_sc = int(rng.integers(7, 12))
        r = p["hem_w"] / n_sc * 1.1
        for x in np.linspace(-p["hem_w"] + r * 0.8, p["hem_w"] - r * 0.8, n_sc):
            yb = hy + p["hem_curve"] * (1 - (x / p["hem_w"]) ** 2)
            blobs.append((float(x), float(yb), r))
        seams.append([(-p["hem_w"], hy - 0.3), (p["hem_w"], hy - 0.3)])
    return {"body": body, "inside": inside, "extra": extra, "seams": seams, "blobs": blobs,
            "buttons": p.get("buttons", []), "params": p}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (small random grid, bilinear upscaled)."""
    from PIL import Image

    small = (rng.random((max(2, cells * h // w), cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Solid, gradient, textured (bedsheet/carpet) or floor/wall backgrounds, mostly light neutrals."""
    def neutral():
        base = rng.uniform(150, 250)
        if rng.random() < 0.2:
            return np.clip(_PALETTE[rng.integers(len(_PALETTE))] * 0.5 + base * 0.5, 0, 255).astype(np.float32)
        return np.clip(base + rng.normal(0, 10, 3), 0, 255).astype(np.float32)

    kind = rng.choice(["solid", "gradient", "noise", "split"], p=[0.3, 0.25, 0.2, 0.25])
    a, b = neutral(), neutral()
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    if kind == "solid":
        bg = np.broadcast_to(a, (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        if rng.random() < 0.5:
            t = ys
        else:
            t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        bg = a * (1 - t) + b * t
        bg = np.broadcast_to(bg, (h, w, 3)).astype(np.float32)
    elif kind == "noise":
        n = _smooth_noise(rng, h, w, int(rng.integers(4, 14)))[..., None]
        bg = a * (1 - n * 0.6) + b * n * 0.6
        bg = bg + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 8)
    else:
        split = int(h * rng.uniform(0.55, 0.85))
        bg = np.empty((h, w, 3), np.float32)
        bg[:split] = a
        floor = b * rng.uniform(0.6, 0.95)
        bg[split:] = floor
        if rng.random() < 0.5:  # wooden planks
            period = rng.uniform(25, 60)
            x = np.arange(w, dtype=np.float32)
            lines = (np.mod(x, period) < 2).astype(np.float32)[None, :, None]
            bg[split:] *= 1 - 0.25 * lines
            bg[split:] *= (0.92 + 0.08 * _smooth_noise(rng, h - split, w, 30))[..., None]
    return bg


def _contrast_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
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
    col = _PALETTE[rng.integers(len(_PALETTE))].copy()
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


def _pattern(tag: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, fabric: np.ndarray,
             base: np.ndarray, px: float) -> np.ndarray:
    """Draw the tag's pattern onto ``fabric`` in garment coordinates (u, v); ``px`` = one pixel in units.

    Patterns are evaluated per pixel in garment coordinates, so they follow the garment's rotation and
    scale and are clipped to it by the caller's mask."""
    inv_aa = 1.0 / (px * 1.2)  # anti-aliasing ramp of ~1 px
    if tag == "polka dot":
        r = rng.uniform(2.5, 10) * px
        cell, du, dv = _lattice(u, v, r * rng.uniform(2.4, 4.2), stagger=rng.random() < 0.6)
        rad = r * (0.6 + 0.7 * _cell_values(rng, cell)) if rng.random() < 0.2 else r  # irregular sizes
        alpha = np.clip((rad - np.sqrt(du * du + dv * dv)) * inv_aa + 0.5, 0, 1)
        return _blend(fabric, _contrast_colour(rng, base), alpha)
    if tag == "floral":
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
        colours = np.stack([_contrast_colour(rng, base) for _ in range(3)])
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
    if tag == "checker":
        period = rng.uniform(8, 32) * px
        col = _contrast_colour(rng, base)
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
    # untagged: plain, a subtle knit texture or (rarely) one-way stripes, which are not checks
    if rng.random() < 0.08:
        period = rng.uniform(8, 28) * px
        alpha = np.clip((period * 0.4 - _wrap(v, period)) * inv_aa + 0.5, 0, 1) * rng.uniform(0.4, 0.8)
        return _blend(fabric, _contrast_colour(rng, base), alpha)
    if rng.random() < 0.3:
        rib = 0.5 + 0.5 * np.sin(u * (1.0 / (px * rng.uniform(1.5, 3))))
        return fabric * (1 - 0.04 * rib)[..., None]
    return fabric


def _wrap(x: np.ndarray, period: float) -> np.ndarray:
    """``x mod period`` (faster than np.mod for floats)."""
    t = x * (1.0 / period)
    return (t - np.floor(t)) * period


def _fabric_base(color: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, px: float):
    """Fabric before the pattern: ``color1`` with a small per-photo tint; VARIOUS = multicolour patches."""
    h, w = u.shape
    if color != "VARIOUS":
        base = np.clip(np.array(COLOR_RGB[color], np.float32) * rng.uniform(0.9, 1.08, 3), 0, 255).astype(np.float32)
        return np.broadcast_to(base, (h, w, 3)), base  # read-only view; patterns make new arrays
    cols = _PALETTE[rng.choice(len(_PALETTE), size=4, replace=False)]
    kind = rng.choice(["blocks", "stripes", "blobs"])
    if kind == "blocks":
        size = rng.uniform(25, 70) * px
        idx = (np.floor(u / size).astype(int) * 3 + np.floor(v / size).astype(int) * 5) % 4
    elif kind == "stripes":
        size = rng.uniform(10, 40) * px
        idx = np.floor(v / size).astype(int) % 4
    else:
        n1, n2 = _smooth_noise(rng, h, w, 5), _smooth_noise(rng, h, w, 5)
        idx = (n1 > 0.5).astype(int) * 2 + (n2 > 0.5).astype(int)
    fabric = cols[idx]
    return fabric.astype(np.float32), cols.mean(axis=0).astype(np.float32)


def render_garment(category: str, color: str, tag: str | None, rng: np.random.Generator):
    """One synthetic product photo as a PIL RGB image (portrait, ~300-350 x 400-450 px)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = int(rng.integers(300, 351)), int(rng.integers(400, 451))
    bg = _background(rng, h, w)
    shape = _silhouette(category, rng)
    body = np.array(shape["body"], dtype=np.float64)
    lo, hi = body.min(axis=0), body.max(axis=0)
    centre_local = (lo + hi) / 2
    size = hi - lo
    scale = min(rng.uniform(0.62, 0.88) * h / size[1], rng.uniform(0.8, 0.93) * w / size[0])
    angle = math.radians(float(np.clip(rng.normal(0, 4.5), -10, 10)))
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # bounding box after rotation, to keep the garment inside the frame
    half = np.abs(np.array([[cos_a, -sin_a], [sin_a, cos_a]])) @ (size * scale / 2)
    cx = rng.uniform(half[0] + 2, max(half[0] + 3, w - half[0] - 2))
    cy = rng.uniform(half[1] + 2, max(half[1] + 3, h - half[1] - 2))

    def to_px(points) -> list[tuple[float, float]]:
        q = (np.asarray(points, dtype=np.float64) - centre_local) * scale
        return [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in q]

    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask_img)
    draw.polygon(to_px(shape["body"]), fill=255)
    for poly in shape["extra"]:
        draw.polygon(to_px(poly), fill=255)
    for x, y, r in shape["blobs"]:
        (px_, py_), rr = to_px([(x, y)])[0], r * scale
        draw.ellipse([px_ - rr, py_ - rr, px_ + rr, py_ + rr], fill=255)
    mask_img = mask_img.filter(ImageFilter.GaussianBlur(0.7))
    # Fabric work only inside the garment's bounding box (about half the frame): the costly part.
    x0, y0, x1, y1 = mask_img.getbbox() or (0, 0, w, h)
    mask = np.asarray(mask_img.crop((x0, y0, x1, y1)), dtype=np.float32)[..., None] / 255.0

    # garment coordinates of every pixel (inverse transform), so patterns follow rotation and scale
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    u = (dx * cos_a + dy * sin_a) / scale + float(centre_local[0])  # python floats keep float32
    v = (-dx * sin_a + dy * cos_a) / scale + float(centre_local[1])
    px = 1.0 / scale
    fabric, base = _fabric_base(color, rng, u, v, px)
    fabric = _pattern(tag or "", rng, u, v, fabric, base, px)

    # shading: rounder body (darker edges) and soft folds below the waist
    p = shape["params"]
    shade = 1.0 - 0.14 * np.minimum(np.abs(u) / (p["hem_w"] + 0.6), 1) ** 2
    for _ in range(p["folds"]):
        fx = rng.uniform(-p["hem_w"], p["hem_w"])
        fold = np.exp(-((u - fx - 0.1 * (v - p["waist_y"])) ** 2) / (2 * rng.uniform(0.03, 0.08) ** 2))
        shade = shade - rng.uniform(0.05, 0.12) * fold * np.clip(v - p["waist_y"] + 0.5, 0, 1)

    detail_img = Image.new("L", (w, h), 0)
    ddraw = ImageDraw.Draw(detail_img)
    if shape["inside"]:
        ddraw.polygon(to_px(shape["inside"]), fill=140)
    line_w = max(1, int(round(scale * 0.018)))
    for poly in shape["extra"]:
        ddraw.line(to_px(poly + [poly[0]]), fill=90, width=line_w)
    for seam in shape["seams"]:
        ddraw.line(to_px(seam), fill=70, width=line_w)
    detail = np.asarray(detail_img.crop((x0, y0, x1, y1)), dtype=np.float32) / 255.0
    fabric = fabric * (shade * (1 - detail))[..., None]

    if rng.random() < 0.6:  # soft drop shadow on the background
        off = (int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        shadow_img = Image.new("L", (w, h), 0)
        shadow_img.paste(mask_img, off)
        shadow = np.asarray(shadow_img.filter(ImageFilter.GaussianBlur(6)), dtype=np.float32)[..., None] / 255.0
        bg = bg * (1 - rng.uniform(0.15, 0.35) * shadow)
    img = np.require(bg, dtype=np.float32, requirements=["W", "C", "O"])
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - mask) + fabric * mask

    # lighting: global brightness/contrast, a directional gradient, sensor noise
    gdir = rng.uniform(0, 2 * math.pi)
    gx = (np.arange(w, dtype=np.float32) / w - 0.5) * math.cos(gdir)
    gy = (np.arange(h, dtype=np.float32) / h - 0.5) * math.sin(gdir)
    contrast, bright, slope = rng.uniform(0.8, 1.15), rng.uniform(0.85, 1.12), rng.uniform(0, 0.3)
    light = 1 + slope * (gy[:, None] + gx[None, :])
    gain = contrast * light
    offset = 128 * bright * light - 128 * gain + rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(1, 4)
    img = img * gain[..., None] + offset[..., None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")

    if shape["buttons"]:
        bdraw = ImageDraw.Draw(out)
        br = max(1.5, scale * 0.04)
        bcol = tuple(int(x) for x in (_contrast_colour(rng, base) * 0.5 + base * 0.5))
        for bx, by in to_px(shape["buttons"]):
            bdraw.ellipse([bx - br, by - br, bx + br, by + br], fill=bcol, outline=(40, 40, 40))
    if rng.random() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    return out


def _render_job(job: tuple) -> bool:
    """Worker: draw and write one image; the RNG depends only on (seed, index) so any pool size gives
    byte-identical files. Returns whether label noise changed the drawn category."""
    path, category, color, tag, seed, index, label_noise = job
    rng = np.random.default_rng([seed, 1, index])
    noisy = bool(rng.random() < label_noise)
    drawn = category
    if noisy:
        others = [c for c in CATEGORIES if c != category]
        drawn = others[int(rng.integers(len(others)))]
    image = render_garment(drawn, color, tag, rng)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    Path(path).write_bytes(buf.getvalue())
    return noisy


def _render_all(jobs: list[tuple], workers: int) -> int:
    if workers <= 1 or len(jobs) < 32:
        return sum(_render_job(j) for j in progress.bar(jobs, desc="drawing demo images"))
    import multiprocessing as mp

    # Workers allocate ~1.5 MB arrays per step; glibc would mmap/unmap each one (a fifth of the run
    # spent in page faults). Larger malloc thresholds, read by each worker at start, keep them on the heap.
    tuning = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "134217728"}
    saved = {k: os.environ.get(k) for k in tuning}
    os.environ.update({k: v for k, v in tuning.items() if saved[k] is None})
    try:
        # spawn: safe even when the caller has TensorFlow (threads) loaded
        pool = mp.get_context("spawn").Pool(workers)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
    with pool:
        rendered = pool.imap_unordered(_render_job, jobs, chunksize=16)
        return sum(progress.bar(rendered, total=len(jobs), desc="drawing demo images"))


# --------------------------------------------------------------------------------------------- driver
README_TEXT = """SYNTHETIC DEMO DATASET - NOT REAL VINTED DATA

Every image in this folder was drawn by vinted_classifier.demo ({generator}); none is a photo.
The label files follow the layout and statistics of the Vinted ML homework files:
  data.parquet                 labelled items (uuid, cc3, color1, polka dot, floral, checker);
                               the last rows repeat earlier rows, as in the real file
  test.parquet                 test items (uuid only)
  test_labels.parquet          hidden answers for the test items (same schema as data.parquet)
  example_predictions.parquet  the submission format, random values, in test.parquet order
  <uuid>.jpeg                  one image per uuid
About {noise:.0%} of images are drawn as a different category than their label (label noise).
Regenerate with: python -m vinted_classifier.demo OUT_DIR --scale {scale} --seed {seed} --force
"""


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True (--force) to replace it")


def generate_demo_dataset(out_dir: str | Path, *, scale: float = 1.0, seed: int = 0, label_noise: float = 0.03,
                          workers: int | None = None, images: bool = True, force: bool = False) -> dict:
    """Write a complete synthetic Vinted-layout dataset to ``out_dir`` and return a summary.

    ``images=False`` writes the label files only (fast statistics checks). Output is deterministic from
    ``seed`` whatever ``workers`` is. Built in a temp folder beside ``out_dir`` and renamed into place.
    """
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    out_dir = Path(out_dir)
    _check_target(out_dir, force)
    workers = max(1, int(workers or os.cpu_count() or 1))
    start = time.perf_counter()
    labels = make_labels(scale=scale, seed=seed)
    generator = f"{GENERATOR_VERSION} seed={seed} scale={scale}"
    meta = {b"vinted_classifier.synthetic": b"true", b"vinted_classifier.generator": generator.encode()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        n_noisy = 0
        if images:
            jobs = []
            for table in (labels["data"], labels["test_labels"]):
                n = len(table["uuid"]) - (labels["n_duplicates"] if table is labels["data"] else 0)
                for k in range(n):
                    tag = next((t for t in TAGS if table[t][k]), None)
                    jobs.append((str(tmp / f"{table['uuid'][k]}.jpeg"), str(table["cc3"][k]), str(table["color1"][k]),
                                 tag, seed, len(jobs), label_noise))
            n_noisy = _render_all(jobs, workers)
        _write_table(labels["test_labels"], tmp / "test_labels.parquet", meta)
        _write_table({"uuid": labels["test_labels"]["uuid"]}, tmp / "test.parquet", meta)
        _write_table(labels["example_predictions"], tmp / "example_predictions.parquet", meta)
        _write_table(labels["data"], tmp / "data.parquet", meta)
        readme = README_TEXT.format(generator=generator, noise=label_noise, scale=scale, seed=seed)
        (tmp / "README.txt").write_text(readme)
        _check_target(out_dir, force)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n_images = (labels["n_unique"] + labels["n_test"]) if images else 0
    names = ("data", "test", "test_labels", "example_predictions")
    return {
        "out_dir": str(out_dir),
        "paths": {**{n: str(out_dir / f"{n}.parquet") for n in names}, "readme": str(out_dir / "README.txt")},
        "n_rows": len(labels["data"]["uuid"]), "n_unique": labels["n_unique"],
        "n_duplicates": labels["n_duplicates"], "n_test": labels["n_test"], "n_images": n_images,
        "n_label_noise": n_noisy, "seed": seed, "scale": scale, "workers": workers, "generator": generator,
        "seconds": round(time.perf_counter() - start, 3),
    }


def ensure_demo_dataset(folder: str | Path, *, labels_file: str = "data.parquet", scale: float = 1.0,
                        generate: bool = True) -> Path:
    """Generate the demo set into ``folder`` unless its labels file exists; return the folder.

    ``generate=False`` (a user-supplied data folder) never writes there: a missing labels file is an error.
    """
    folder = Path(folder)
    if not (folder / labels_file).is_file():
        if not generate:
            raise FileNotFoundError(f"{folder / labels_file} not found: point data_dir at a Vinted-layout folder")
        generate_demo_dataset(folder, scale=scale, force=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vinted_classifier.demo",
                                     description="Generate the synthetic Vinted-layout demo dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = real sizes (3,547 rows, 429 test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.03)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-images", action="store_true", help="label files only")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        s = generate_demo_dataset(args.out_dir, scale=args.scale, seed=args.seed, label_noise=args.label_noise,
                                  workers=args.workers, images=not args.no_images, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {s['n_rows']} rows ({s['n_duplicates']} duplicates), {s['n_test']} test items, "
          f"{s['n_images']} images to {s['out_dir']} in {s['seconds']:.1f} s with {s['workers']} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
