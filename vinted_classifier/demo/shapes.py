"""Garment silhouettes per category: outline polygon, neckline, sleeves, seams and details, in local units."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def silhouette(category: str, rng: np.random.Generator) -> dict[str, Any]:
    """Garment outline in local units (neck centre at 0,0; chest half-width ~1; y down) plus details.

    Proportions are random per image and the ranges of neighbouring classes overlap a little, so the
    category is learnable but not a lookup."""
    u = rng.uniform
    c = u(0.9, 1.1)
    p: dict[str, Any] = {
        "collar": False,
        "placket": False,
        "ruffle": False,
        "pocket": False,
        "belt": False,
        "neck": "round",
        "cuffs": False,
        "folds": 0,
    }
    sleeve, params, c = _PROPORTIONS.get(category, _tank_top)(rng, c)
    p.update(params)
    p.setdefault("waist_y", (p["armpit_y"] + p["hem_y"]) / 2)
    p.update(c=c, sleeve=sleeve, shoulder_y=u(0.12, 0.28))
    if p["sleeve"] == "straps":
        p["shoulder_x"] = p["neck_w"] + u(0.06, 0.12)
    elif p["sleeve"] == "none" and category != "TANK_TOPS":
        p["shoulder_x"] = p["neck_w"] + u(0.2, 0.4)
    return _outline(p, rng)


def _blouse(rng: np.random.Generator, c: float) -> tuple[str, dict[str, Any], float]:
    u = rng.uniform
    sleeve = rng.choice(["short", "three_quarter", "long", "none"], p=[0.34, 0.25, 0.33, 0.08])
    params = dict(
        neck_w=u(0.3, 0.45),
        shoulder_x=u(1.0, 1.25) * c,
        armpit_y=u(0.85, 1.1),
        waist_w=u(0.95, 1.12) * c,
        hem_y=u(2.2, 2.9),
        hem_w=u(1.0, 1.25) * c,
        hem_curve=u(0.0, 0.08),
        neck=rng.choice(["round", "v"]),
        ruffle=u() < 0.35,
        collar=u() < 0.08,
        placket=u() < 0.15,
        sleeve_flare=u(0.9, 1.35),
        folds=2,
    )
    return str(sleeve), params, c


def _casual_dress(rng: np.random.Generator, c: float) -> tuple[str, dict[str, Any], float]:
    u = rng.uniform
    sleeve = rng.choice(["short", "three_quarter", "long", "none"], p=[0.35, 0.2, 0.2, 0.25])
    params = dict(
        neck_w=u(0.3, 0.45),
        shoulder_x=u(0.95, 1.1) * c,
        armpit_y=u(0.85, 1.05),
        waist_w=u(0.82, 1.0) * c,
        waist_y=u(1.6, 2.0),
        hem_y=u(3.6, 5.0),
        hem_w=u(1.35, 1.95) * c,
        hem_curve=u(0.05, 0.2),
        neck=rng.choice(["round", "v"]),
        belt=u() < 0.3,
        ruffle=u() < 0.15,
        sleeve_flare=u(0.9, 1.2),
        folds=4,
    )
    return str(sleeve), params, c


def _mini_dress(rng: np.random.Generator, c: float) -> tuple[str, dict[str, Any], float]:
    u = rng.uniform
    sleeve = rng.choice(["straps", "none", "short", "long"], p=[0.42, 0.25, 0.2, 0.13])
    params = dict(
        neck_w=u(0.32, 0.5),
        shoulder_x=u(0.9, 1.05) * c,
        armpit_y=u(0.85, 1.1),
        waist_w=u(0.72, 0.9) * c,
        waist_y=u(1.5, 1.8),
        hem_y=u(2.7, 3.5),
        hem_w=u(0.95, 1.3) * c,
        hem_curve=u(0.0, 0.1),
        neck=rng.choice(["round", "v", "square"]),
        belt=u() < 0.12,
        sleeve_flare=u(0.85, 1.1),
        folds=2,
    )
    return str(sleeve), params, c


def _shirt(rng: np.random.Generator, c: float) -> tuple[str, dict[str, Any], float]:
    u = rng.uniform
    sleeve = rng.choice(["long", "short"], p=[0.8, 0.2])
    params = dict(
        neck_w=u(0.25, 0.33),
        shoulder_x=u(1.05, 1.2) * c,
        armpit_y=u(0.9, 1.1),
        waist_w=u(0.95, 1.05) * c,
        hem_y=u(2.6, 3.2),
        hem_w=u(1.0, 1.08) * c,
        hem_curve=u(0.12, 0.28),
        collar=u() < 0.95,
        placket=True,
        pocket=u() < 0.4,
        cuffs=True,
        sleeve_flare=u(0.75, 0.95),
        folds=1,
    )
    return str(sleeve), params, c


def _tank_top(rng: np.random.Generator, c: float) -> tuple[str, dict[str, Any], float]:
    u = rng.uniform
    sleeve = rng.choice(["straps", "none"], p=[0.55, 0.45])
    c *= u(0.8, 0.92)
    params = dict(
        neck_w=u(0.28, 0.45),
        shoulder_x=u(0.55, 0.75) * c,
        armpit_y=u(0.95, 1.3),
        waist_w=u(0.85, 0.98) * c,
        hem_y=u(2.3, 3.0),
        hem_w=u(0.9, 1.1) * c,
        hem_curve=u(0.0, 0.08),
        neck=rng.choice(["round", "v", "square"]),
        ruffle=u() < 0.08,
        folds=1,
    )
    return str(sleeve), params, c


# Per category: sleeve style, proportions and details, drawn in this order from the image's RNG.
_PROPORTIONS = {
    "BLOUSES": _blouse,
    "CASUAL_DRESSES": _casual_dress,
    "MINI_DRESSES": _mini_dress,
    "SHIRTS": _shirt,
    "TANK_TOPS": _tank_top,
}


def _bezier(p0, p1, p2, n: int = 6) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [tuple(q) for q in pts]


def _outline(p: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Right half of the outline, mirrored; sleeves as a quad from shoulder/armpit."""
    sx, sy, ay = p["shoulder_x"], p["shoulder_y"], p["armpit_y"]
    right: list[tuple[float, float]] = [(p["neck_w"], 0.0), (sx, sy)]
    seams: list[list[tuple[float, float]]] = []
    if p["sleeve"] in ("short", "three_quarter", "long"):
        right += _sleeve(p, rng, seams)
    else:
        right += _bezier((sx, sy), (sx + 0.05, ay * 0.9), (p["c"], ay))[1:]
    wy, hy = p["waist_y"], p["hem_y"]
    right += [(p["waist_w"], wy), (p["hem_w"], hy)]
    right += _bezier((p["hem_w"], hy), (p["hem_w"] * 0.5, hy + p["hem_curve"] * 1.6), (0.0, hy + p["hem_curve"]))[1:]
    left = [(-x, y) for x, y in reversed(right)]
    back_neck = _bezier((-p["neck_w"], 0.0), (0.0, _BACK_DIP * 2), (p["neck_w"], 0.0))[1:-1]
    body = right + left[1:-1] + [(-p["neck_w"], 0.0)] + back_neck
    inside, depth = _neckline(p, rng)
    extra: list[list[tuple[float, float]]] = []
    if p["collar"]:
        nw = p["neck_w"]
        for s in (1, -1):
            extra.append([(s * nw * 1.05, -0.08), (s * (nw + 0.2), 0.22), (s * 0.07, 0.45), (0.0, 0.12)])
        inside = []
    seams += _trim_seams(p, rng, depth)
    blobs = _ruffle(p, rng, seams)
    return {
        "body": body,
        "inside": inside,
        "extra": extra,
        "seams": seams,
        "blobs": blobs,
        "buttons": p.get("buttons", []),
        "params": p,
    }


# How far the back of the neckline dips below the shoulders' line.
_BACK_DIP = 0.06


def _sleeve(
    p: dict[str, Any], rng: np.random.Generator, seams: list[list[tuple[float, float]]]
) -> list[tuple[float, float]]:
    """Outline points of the right sleeve (shoulder -> cuff -> armpit); adds its seams; sets ``sleeve_ends``."""
    c, sx, sy, ay = p["c"], p["shoulder_x"], p["shoulder_y"], p["armpit_y"]
    length = {"short": rng.uniform(0.35, 0.7), "three_quarter": rng.uniform(1.1, 1.6), "long": rng.uniform(1.7, 2.3)}[
        p["sleeve"]
    ]
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
    seams.append([(sx, sy), (c, ay)])
    if p["cuffs"] and p["sleeve"] == "long":
        seams.append([tuple(e1 - d * 0.25), tuple(e2 - d * 0.25)])
    p["sleeve_ends"] = (tuple(e1), tuple(e2))
    return [tuple(e1), tuple(e2), (c, ay)]


def _neckline(p: dict[str, Any], rng: np.random.Generator) -> tuple[list[tuple[float, float]], float]:
    """Inside of the back seen through the front neckline (polygon), and the neckline's depth."""
    nw = p["neck_w"]
    depth = {"round": rng.uniform(0.2, 0.4), "v": rng.uniform(0.45, 0.8), "square": rng.uniform(0.25, 0.45)}[p["neck"]]
    if p["sleeve"] == "straps":
        depth = max(depth, p["armpit_y"] * 0.5)
    if p["neck"] == "v":
        front = [(nw, 0.0), (0.0, depth), (-nw, 0.0)]
    elif p["neck"] == "square":
        front = [(nw, 0.0), (nw * 0.95, depth), (-nw * 0.95, depth), (-nw, 0.0)]
    else:
        front = _bezier((nw, 0.0), (nw * 0.9, depth * 2), (-nw, 0.0), 8)[:-1] + [(-nw, 0.0)]
    return front + _bezier((-nw, 0.0), (0.0, _BACK_DIP * 2), (nw, 0.0))[1:-1], depth


def _trim_seams(p: dict[str, Any], rng: np.random.Generator, depth: float) -> list[list[tuple[float, float]]]:
    """Placket (and its buttons in ``p``), pocket and belt lines."""
    seams: list[list[tuple[float, float]]] = []
    wy, hy = p["waist_y"], p["hem_y"]
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
    return seams


def _ruffle(
    p: dict[str, Any], rng: np.random.Generator, seams: list[list[tuple[float, float]]]
) -> list[tuple[float, float, float]]:
    """Scallops along the hem (circles) and the ruffle's seam, when the garment has one."""
    blobs: list[tuple[float, float, float]] = []
    if p["ruffle"]:
        hy = p["hem_y"]
        n_sc = int(rng.integers(7, 12))
        r = p["hem_w"] / n_sc * 1.1
        for x in np.linspace(-p["hem_w"] + r * 0.8, p["hem_w"] - r * 0.8, n_sc):
            yb = hy + p["hem_curve"] * (1 - (x / p["hem_w"]) ** 2)
            blobs.append((float(x), float(yb), r))
        seams.append([(-p["hem_w"], hy - 0.3), (p["hem_w"], hy - 0.3)])
    return blobs
