"""One synthetic product photo: background, placed and rotated garment, fabric, shading, lighting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .fabric import PALETTE, contrast_colour, fabric_base, pattern, smooth_noise
from .shapes import silhouette


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Solid, gradient, textured (bedsheet/carpet) or floor/wall backgrounds, mostly light neutrals."""

    def neutral():
        base = rng.uniform(150, 250)
        if rng.random() < 0.2:
            return np.clip(PALETTE[rng.integers(len(PALETTE))] * 0.5 + base * 0.5, 0, 255).astype(np.float32)
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
        n = smooth_noise(rng, h, w, int(rng.integers(4, 14)))[..., None]
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
            bg[split:] *= (0.92 + 0.08 * smooth_noise(rng, h - split, w, 30))[..., None]
    return bg


def render_garment(category: str, color: str, tag: str | None, rng: np.random.Generator):
    """One synthetic product photo as a PIL RGB image (portrait, ~300-350 x 400-450 px)."""
    w, h = int(rng.integers(300, 351)), int(rng.integers(400, 451))
    bg = _background(rng, h, w)
    shape = silhouette(category, rng)
    place = _Placement.random(shape, rng, w, h)
    mask_img = _garment_mask(shape, place, w, h)
    # Fabric work only inside the garment's bounding box (about half the frame): the costly part.
    box = mask_img.getbbox() or (0, 0, w, h)
    mask = np.asarray(mask_img.crop(box), dtype=np.float32)[..., None] / 255.0
    u, v = place.garment_coordinates(box)
    px = 1.0 / place.scale
    fabric, base = fabric_base(color, rng, u, v, px)
    fabric = pattern(tag or "", rng, u, v, fabric, base, px)
    shade = _shading(shape["params"], rng, u, v)
    fabric = fabric * (shade * (1 - _detail_lines(shape, place, w, h, box)))[..., None]
    if rng.random() < 0.6:  # soft drop shadow on the background
        bg = _drop_shadow(bg, mask_img, rng, w, h)
    img = np.require(bg, dtype=np.float32, requirements=["W", "C", "O"])
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - mask) + fabric * mask
    out = Image.fromarray(np.clip(_lighting(img, rng, w, h), 0, 255).astype(np.uint8), "RGB")
    if shape["buttons"]:
        _draw_buttons(out, shape, place, rng, base)
    if rng.random() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    return out


@dataclass(frozen=True)
class _Placement:
    """Where the garment lands in the photo: local units -> pixels by scale, rotation and centre."""

    centre_local: np.ndarray
    scale: float
    cos_a: float
    sin_a: float
    cx: float
    cy: float

    @classmethod
    def random(cls, shape: dict, rng: np.random.Generator, w: int, h: int) -> _Placement:
        body = np.array(shape["body"], dtype=np.float64)
        lo, hi = body.min(axis=0), body.max(axis=0)
        size = hi - lo
        scale = min(rng.uniform(0.62, 0.88) * h / size[1], rng.uniform(0.8, 0.93) * w / size[0])
        angle = math.radians(float(np.clip(rng.normal(0, 4.5), -10, 10)))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        # bounding box after rotation, to keep the garment inside the frame
        half = np.abs(np.array([[cos_a, -sin_a], [sin_a, cos_a]])) @ (size * scale / 2)
        cx = rng.uniform(half[0] + 2, max(half[0] + 3, w - half[0] - 2))
        cy = rng.uniform(half[1] + 2, max(half[1] + 3, h - half[1] - 2))
        return cls((lo + hi) / 2, scale, cos_a, sin_a, cx, cy)

    def to_px(self, points) -> list[tuple[float, float]]:
        q = (np.asarray(points, dtype=np.float64) - self.centre_local) * self.scale
        return [(self.cx + x * self.cos_a - y * self.sin_a, self.cy + x * self.sin_a + y * self.cos_a) for x, y in q]

    def garment_coordinates(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Garment coordinates (u, v) of every pixel in ``box`` (inverse transform), so patterns follow
        rotation and scale."""
        x0, y0, x1, y1 = box
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xs - self.cx, ys - self.cy
        u = (dx * self.cos_a + dy * self.sin_a) / self.scale + float(self.centre_local[0])  # python floats keep float32
        v = (-dx * self.sin_a + dy * self.cos_a) / self.scale + float(self.centre_local[1])
        return u, v


def _garment_mask(shape: dict, place: _Placement, w: int, h: int):
    """The garment's silhouette (body, collar, scallops) as a softened ``L`` image."""
    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask_img)
    draw.polygon(place.to_px(shape["body"]), fill=255)
    for poly in shape["extra"]:
        draw.polygon(place.to_px(poly), fill=255)
    for x, y, r in shape["blobs"]:
        (px_, py_), rr = place.to_px([(x, y)])[0], r * place.scale
        draw.ellipse([px_ - rr, py_ - rr, px_ + rr, py_ + rr], fill=255)
    return mask_img.filter(ImageFilter.GaussianBlur(0.7))


def _shading(p: dict, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rounder body (darker edges) and soft folds below the waist."""
    shade = 1.0 - 0.14 * np.minimum(np.abs(u) / (p["hem_w"] + 0.6), 1) ** 2
    for _ in range(p["folds"]):
        fx = rng.uniform(-p["hem_w"], p["hem_w"])
        fold = np.exp(-((u - fx - 0.1 * (v - p["waist_y"])) ** 2) / (2 * rng.uniform(0.03, 0.08) ** 2))
        shade = shade - rng.uniform(0.05, 0.12) * fold * np.clip(v - p["waist_y"] + 0.5, 0, 1)
    return shade


def _detail_lines(shape: dict, place: _Placement, w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Darkening in [0, 1] inside ``box``: the neckline's inside, collar edges and seams."""
    detail_img = Image.new("L", (w, h), 0)
    ddraw = ImageDraw.Draw(detail_img)
    if shape["inside"]:
        ddraw.polygon(place.to_px(shape["inside"]), fill=140)
    line_w = max(1, int(round(place.scale * 0.018)))
    for poly in shape["extra"]:
        ddraw.line(place.to_px(poly + [poly[0]]), fill=90, width=line_w)
    for seam in shape["seams"]:
        ddraw.line(place.to_px(seam), fill=70, width=line_w)
    return np.asarray(detail_img.crop(box), dtype=np.float32) / 255.0


def _drop_shadow(bg: np.ndarray, mask_img, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    off = (int(rng.integers(2, 9)), int(rng.integers(2, 9)))
    shadow_img = Image.new("L", (w, h), 0)
    shadow_img.paste(mask_img, off)
    shadow = np.asarray(shadow_img.filter(ImageFilter.GaussianBlur(6)), dtype=np.float32)[..., None] / 255.0
    return bg * (1 - rng.uniform(0.15, 0.35) * shadow)


def _lighting(img: np.ndarray, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Global brightness/contrast, a directional gradient, sensor noise."""
    gdir = rng.uniform(0, 2 * math.pi)
    gx = (np.arange(w, dtype=np.float32) / w - 0.5) * math.cos(gdir)
    gy = (np.arange(h, dtype=np.float32) / h - 0.5) * math.sin(gdir)
    contrast, bright, slope = rng.uniform(0.8, 1.15), rng.uniform(0.85, 1.12), rng.uniform(0, 0.3)
    light = 1 + slope * (gy[:, None] + gx[None, :])
    gain = contrast * light
    offset = 128 * bright * light - 128 * gain + rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(1, 4)
    return img * gain[..., None] + offset[..., None]


def _draw_buttons(out, shape: dict, place: _Placement, rng: np.random.Generator, base: np.ndarray) -> None:
    bdraw = ImageDraw.Draw(out)
    br = max(1.5, place.scale * 0.04)
    bcol = tuple(int(x) for x in (contrast_colour(rng, base) * 0.5 + base * 0.5))
    for bx, by in place.to_px(shape["buttons"]):
        bdraw.ellipse([bx - br, by - br, bx + br, by + br], fill=bcol, outline=(40, 40, 40))
