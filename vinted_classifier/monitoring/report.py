"""``vinted drift``: a batch of images (a day's uploads) against a model's reference statistics.

The same observations, summaries and distances as the server's drift gauges, for a folder of
images or a parquet of uuids, scored by an export (its ``serving_default`` signature, as served)
or by a run's Keras model. Writes ``drift.csv`` (one row per distance), ``drift.json`` and
``drift.png`` (reference vs batch), atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image, ImageEnhance

from .. import pipeline
from ..contract import (
    DEFAULT_CATEGORY_COLUMN,
    DEFAULT_SIGNATURE,
    MODEL_FILE,
    REFERENCE_STATS_FILE,
    TAGS_OUTPUT,
    labels_path,
    reference_stats_path,
)
from ..progress import bar
from ..runs import load_run
from ..utils import atomic_path, write_json
from .drift import NUMERIC_FEATURES, DriftScores, Summary, drift_scores, summarise
from .reference import Reference, load_reference, reference_for_run
from .stats import image_stats, observations

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_BATCH = 32


@dataclass
class DriftReport:
    reference: Reference
    batch: Summary
    scores: DriftScores
    table: pd.DataFrame
    images: int
    unreadable: list[str]


def batch_images(
    images: str | Path | None = None,
    parquet: str | Path | None = None,
    image_dir: str | Path | None = None,
    id_column: str = "uuid",
) -> list[Path]:
    """The images to score: every image file in a folder, or ``<uuid>.<ext>`` for a parquet's uuids."""
    if (images is None) == (parquet is None):
        raise ValueError("give exactly one of --images DIR or --parquet FILE")
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images: no folder {folder}")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files in {folder}")
        return paths
    assert parquet is not None  # exactly one of the two was given
    parquet = Path(parquet)
    if not parquet.is_file():
        raise FileNotFoundError(f"--parquet: no file {parquet}")
    frame = pd.read_parquet(parquet)
    if id_column not in frame.columns:
        raise ValueError(f"{parquet}: no column {id_column!r} (columns: {', '.join(map(str, frame.columns))})")
    folder = Path(image_dir) if image_dir is not None else parquet.parent
    paths, missing = [], []
    for uuid_ in frame[id_column].astype(str):
        found = next(
            (folder / f"{uuid_}{ext}" for ext in IMAGE_EXTENSIONS if (folder / f"{uuid_}{ext}").is_file()), None
        )
        (paths.append(found) if found is not None else missing.append(uuid_))
    if missing:
        raise FileNotFoundError(
            f"{parquet}: {len(missing)} uuid(s) without an image in {folder}, e.g. {', '.join(missing[:5])}"
        )
    return paths


def _latest_version(base: Path) -> Path | None:
    versions = sorted(
        (int(p.name), p) for p in base.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    return versions[-1][1] if versions else None


class _Scorer:
    """An export (as served) or a run (its Keras model) over encoded images: outputs with labels."""

    def __init__(self, against: str | Path, reference_images: int = 256):
        against = Path(against)
        if not against.exists():
            raise FileNotFoundError(f"--against: no export or run at {against}")
        version = (
            against
            if (against / "saved_model.pb").is_file()
            else (_latest_version(against) if against.is_dir() else None)
        )
        if version is not None:
            self._from_export(version)
        elif (against / MODEL_FILE).is_file():
            self._from_run(against, reference_images)
        else:
            raise FileNotFoundError(
                f"--against: {against} is neither an export version (saved_model.pb), a model's "
                "base path (numbered versions) nor a run folder (model.keras)"
            )

    def _from_export(self, version: Path) -> None:
        reference_path = reference_stats_path(version)
        if not reference_path.is_file():
            raise FileNotFoundError(
                f"{version}: no {reference_path.relative_to(version)} (an export older than "
                "the reference statistics; re-export, or pass the run folder)"
            )
        self.reference = load_reference(reference_path)
        self.labels = json.loads(labels_path(version).read_text())
        self.source = str(version)
        signature = tf.saved_model.load(str(version)).signatures[DEFAULT_SIGNATURE]

        def run(encoded: list[bytes]) -> dict[str, np.ndarray]:
            out = signature(image_bytes=tf.constant(encoded, dtype=tf.string))
            return {k: v.numpy() for k, v in out.items()}

        self._run = run

    def _from_run(self, run_dir: Path, reference_images: int) -> None:
        cfg, labels, model = load_run(run_dir)
        path = run_dir / REFERENCE_STATS_FILE
        reference = load_reference(path) if path.is_file() else reference_for_run(model, labels, cfg, reference_images)
        if reference is None:
            raise FileNotFoundError(f"{run_dir}: no {REFERENCE_STATS_FILE} and no held-out images to compute one")
        self.reference = reference
        self.labels = {
            "category_output": labels.category_output,
            "categories": labels.categories,
            "tags": labels.tags,
            "thresholds": labels.thresholds,
        }
        self.source = str(run_dir)

        def run(encoded: list[bytes]) -> dict[str, np.ndarray]:
            images = tf.stack([pipeline.decode_and_resize(tf.constant(b), labels.image_size) for b in encoded])
            out = model(images, training=False)
            return {k: np.asarray(v, np.float32) for k, v in out.items()}

        self._run = run

    def __call__(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        return self._run(encoded)


def drift_report(
    against: str | Path, paths: list[Path], thresholds: dict[str, float], reference_images: int = 256
) -> DriftReport:
    scorer = _Scorer(against, reference_images)
    ref, labels = scorer.reference, scorer.labels
    category_key = labels.get("category_output", DEFAULT_CATEGORY_COLUMN)
    rows, unreadable = [], []
    for start in bar(
        range(0, len(paths), _BATCH), total=math.ceil(len(paths) / _BATCH), desc="drift: scoring", unit="batch"
    ):
        chunk = paths[start : start + _BATCH]
        encoded = [p.read_bytes() for p in chunk]
        stats = [image_stats(b) for b in encoded]
        unreadable += [str(p) for p, s in zip(chunk, stats, strict=True) if s is None]
        kept = [b for b, s in zip(encoded, stats, strict=True) if s is not None]
        if not kept:
            continue
        out = scorer(kept)
        batch_rows, _ = observations(
            out[category_key],
            out.get(TAGS_OUTPUT),
            labels.get("thresholds", []),
            [s for s in stats if s is not None],
            out.get("tag_flags"),
        )
        rows += batch_rows
    if not rows:
        raise ValueError(f"none of the {len(paths)} images could be read")
    batch = summarise(rows, len(ref.categories), len(ref.tags), ref.edges)
    scores = drift_scores(ref.summary, batch)
    return DriftReport(ref, batch, scores, drift_table(scores, thresholds), len(rows), unreadable)


def drift_table(scores: DriftScores, thresholds: dict[str, float]) -> pd.DataFrame:
    records = [
        ("category distribution", "L-infinity", scores.category_linf, thresholds["category_linf"]),
        ("tag rates", "L-infinity", scores.tag_linf, thresholds["tag_linf"]),
    ]
    records += [
        (name, "Jensen-Shannon", scores.js.get(name, math.nan), thresholds["js"])
        for name in NUMERIC_FEATURES
        if name in scores.js
    ]
    table = pd.DataFrame(records, columns=["feature", "distance", "value", "threshold"])
    table["drift"] = table["value"] > table["threshold"]
    return table


def _bars(ax, names, ref, batch, title):
    x = np.arange(len(names))
    ax.bar(x - 0.2, ref, 0.4, label="reference")
    ax.bar(x + 0.2, batch, 0.4, label="batch")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)


def drift_figure(report: DriftReport, path: str | Path) -> None:
    ref, batch = report.reference, report.batch
    fig = Figure(figsize=(16, 7))
    axes = fig.subplots(2, 4)
    value = dict(zip(report.table["feature"], report.table["value"], strict=True))
    _bars(
        axes[0, 0],
        ref.categories,
        ref.summary.category_counts / max(ref.summary.rows, 1),
        batch.category_counts / max(batch.rows, 1),
        f"top-1 category (L-inf {value['category distribution']:.2f})",
    )
    _bars(
        axes[0, 1], ref.tags, ref.summary.tag_rates(), batch.tag_rates(), f"tag rates (L-inf {value['tag rates']:.2f})"
    )
    for ax, name in zip(list(axes.flat)[2:], NUMERIC_FEATURES, strict=False):  # the last panel stays empty
        edges = ref.edges[name]
        labels = [f"{edges[i]:g}" for i in range(len(edges) - 1)]
        _bars(
            ax,
            labels,
            ref.summary.numeric[name] / max(ref.summary.numeric[name].sum(), 1),
            batch.numeric[name] / max(batch.numeric[name].sum(), 1),
            f"{name} (JS {value.get(name, math.nan):.2f})",
        )
    axes[0, 0].legend(fontsize=8)
    axes.flat[-1].axis("off")
    fig.suptitle(f"drift: {report.images} images vs the reference ({ref.summary.rows} held-out rows)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def write_report(report: DriftReport, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / "drift.csv", "json": out_dir / "drift.json", "figure": out_dir / "drift.png"}
    with atomic_path(paths["table"], suffix=".csv") as tmp:
        report.table.to_csv(tmp, index=False)
    ref, batch = report.reference, report.batch
    write_json(
        paths["json"],
        {
            "images": report.images,
            "unreadable": report.unreadable,
            "distances": report.table.to_dict(orient="records"),
            "batch_category_distribution": dict(
                zip(ref.categories, (batch.category_counts / max(batch.rows, 1)).tolist(), strict=True)
            ),
            "reference_category_distribution": dict(
                zip(ref.categories, (ref.summary.category_counts / max(ref.summary.rows, 1)).tolist(), strict=True)
            ),
            "batch_tag_rates": dict(zip(ref.tags, batch.tag_rates().tolist(), strict=True)),
        },
    )
    drift_figure(report, paths["figure"])
    return paths


def thresholds_from(cfg_monitoring) -> dict[str, float]:
    return {
        "category_linf": cfg_monitoring.category_linf_threshold,
        "tag_linf": cfg_monitoring.tag_linf_threshold,
        "js": cfg_monitoring.js_threshold,
    }


def shifted_copy(
    cfg,
    out_dir: str | Path,
    *,
    darken: float = 0.5,
    scale: float = 0.5,
    drop_category: str | None = "most frequent",
    limit: int | None = None,
) -> tuple[Path, dict]:
    """A shifted copy of a run's test images (the notebook's drift demo): darker, smaller, one category fewer.

    The category comes from the demo's hidden ``test_labels.parquet`` (none removed without it).
    Returns (folder of images, what was done).
    """
    data_dir = Path(cfg.data.data_dir)
    ids = pd.read_parquet(data_dir / cfg.data.test_file)[cfg.data.id_column].astype(str).tolist()
    dropped = None
    labels_file = data_dir / "test_labels.parquet"
    if drop_category is not None and labels_file.is_file():
        answers = pd.read_parquet(labels_file).set_index(cfg.data.id_column)[cfg.data.category_column]
        dropped = answers.value_counts().index[0] if drop_category == "most frequent" else drop_category
        ids = [u for u in ids if answers.get(u) != dropped]
    ids = ids[:limit] if limit else ids
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for uuid_ in ids:
        source = next(
            (
                Path(cfg.data.images) / f"{uuid_}{ext}"
                for ext in cfg.data.image_extensions
                if (Path(cfg.data.images) / f"{uuid_}{ext}").is_file()
            ),
            None,
        )
        if source is None:
            raise FileNotFoundError(f"no image for test uuid {uuid_} in {cfg.data.images}")
        with Image.open(source) as image:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            small = image.convert("RGB").resize(size)
        ImageEnhance.Brightness(small).enhance(darken).save(out / f"{uuid_}.jpeg", quality=90)
    return out, {"images": len(ids), "darken": darken, "scale": scale, "dropped_category": dropped}


def drift_demo(
    cfg, version_dir: str | Path, out_dir: str | Path, limit: int | None = None
) -> tuple[pd.DataFrame, Path, dict]:
    """The test set as it is and a shifted copy of it against an export's reference: (both tables side
    by side, the shifted batch's figure, what was shifted)."""
    out_dir = Path(out_dir)
    thresholds = thresholds_from(cfg.monitoring)
    shifted_dir, shift = shifted_copy(cfg, out_dir / "shifted_test", limit=limit)
    test_paths = batch_images(parquet=Path(cfg.data.data_dir) / cfg.data.test_file, image_dir=cfg.data.images)
    as_is = drift_report(version_dir, test_paths[:limit] if limit else test_paths, thresholds)
    shifted = drift_report(version_dir, batch_images(images=shifted_dir), thresholds)
    files = write_report(shifted, out_dir / "report")
    table = as_is.table.merge(
        shifted.table, on=["feature", "distance", "threshold"], suffixes=(" (test set)", " (shifted)")
    )
    return table, files["figure"], shift
