"""The reference statistics an export carries (``assets.extra/reference_stats.json``).

What the model predicted and what its input images looked like on held-out data, with the bin
edges the server's histograms and drift distances use. Computed once at export by the same code
that watches traffic (``stats.observations``), so training/serving skew shows as drift.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import data, pipeline
from ..contract import MODEL_FILE, REFERENCE_STATS_FILE, reference_stats_path
from ..features import file_hash
from ..runs import predict_probabilities
from ..utils import write_json
from .drift import Observation, Summary, summarise
from .stats import image_stats, observations

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# One set of bin edges for the reference, the drift distances and the Prometheus histograms.
_SIZES = [0, 64, 128, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048, 3072, 4096, 8192]
BIN_EDGES: dict[str, list[float]] = {
    "top1_confidence": [round(0.1 * i, 1) for i in range(11)],
    "width": [float(v) for v in _SIZES],
    "height": [float(v) for v in _SIZES],
    "aspect_ratio": [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0, 1.1, 1.25, 1.33, 1.5, 1.75, 2.0, 3.0, 10.0],
    "brightness": [16.0 * i for i in range(17)],
}


@dataclass
class Reference:
    categories: list[str]
    tags: list[str]
    summary: Summary
    edges: dict[str, list[float]]
    created_utc: str
    source: dict

    def to_json(self) -> dict:
        s = self.summary
        return {
            "schema_version": SCHEMA_VERSION,
            "created_utc": self.created_utc,
            "source": self.source,
            "rows": s.rows,
            "categories": self.categories,
            "category_counts": s.category_counts.tolist(),
            "category_distribution": [round(float(v), 6) for v in (s.category_counts / max(s.rows, 1))],
            "tags": self.tags,
            "tag_counts": s.tag_counts.tolist(),
            "tag_rates": [round(float(v), 6) for v in s.tag_rates()],
            "numeric": {name: {"edges": self.edges[name], "counts": s.numeric[name].tolist()} for name in self.edges},
        }


def build_reference(
    rows: list[Observation],
    categories: list[str],
    tags: list[str],
    source: dict,
    edges: dict[str, list[float]] | None = None,
) -> Reference:
    edges = edges or BIN_EDGES
    summary = summarise(rows, len(categories), len(tags), edges)
    if summary.rows == 0:
        raise ValueError(f"no finite prediction among {len(rows)} reference rows ({source})")
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Reference(list(categories), list(tags), summary, edges, created, source)


def _field(doc: dict, key: str, where: str):
    if key not in doc:
        raise ValueError(f"{where}: missing field {key!r}")
    return doc[key]


def reference_from_json(doc: dict, where: str = "reference") -> Reference:
    """Parse and check a reference document; errors name the file and the field."""
    version = _field(doc, "schema_version", where)
    if version != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {version} is not {SCHEMA_VERSION}")
    categories = list(_field(doc, "categories", where))
    tags = list(_field(doc, "tags", where))
    category_counts = np.asarray(_field(doc, "category_counts", where), dtype=np.int64)
    tag_counts = np.asarray(_field(doc, "tag_counts", where), dtype=np.int64)
    if category_counts.shape != (len(categories),):
        raise ValueError(f"{where}: category_counts has {category_counts.size} values for {len(categories)} categories")
    if tag_counts.shape != (len(tags),):
        raise ValueError(f"{where}: tag_counts has {tag_counts.size} values for {len(tags)} tags")
    edges, numeric = {}, {}
    for name, entry in _field(doc, "numeric", where).items():
        bins = [float(v) for v in _field(entry, "edges", f"{where}: numeric.{name}")]
        counts = np.asarray(_field(entry, "counts", f"{where}: numeric.{name}"), dtype=np.int64)
        if len(bins) < 2 or counts.shape != (len(bins) - 1,) or np.any(np.diff(bins) <= 0):
            raise ValueError(f"{where}: numeric.{name} needs increasing edges and one count per bin")
        edges[name], numeric[name] = bins, counts
    rows = int(_field(doc, "rows", where))
    summary = Summary(category_counts, tag_counts, rows, numeric)
    return Reference(categories, tags, summary, edges, str(doc.get("created_utc", "")), dict(doc.get("source", {})))


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return reference_from_json(doc, str(path))


def version_reference(version_dir: str | Path) -> Reference | None:
    """An export version's reference, None when it has none (exports that predate it)."""
    path = reference_stats_path(version_dir)
    return load_reference(path) if path.is_file() else None


# ---------------------------------------------------------------- at export


def reference_images(cfg, limit: int) -> tuple[list[Path], str]:
    """Up to ``limit`` held-out images of a run (its splits file), else its test images; and which."""
    split_file = data.splits_path(cfg.data, cfg.seed)
    ids, split = [], "holdout"
    if split_file.is_file():
        table = pd.read_csv(split_file)
        ids = table.loc[table["split"] == "holdout", cfg.data.id_column].astype(str).tolist()
    if not ids:
        split = "test"
        try:
            ids = data.read_test_ids(cfg.data)[cfg.data.id_column].astype(str).tolist()
        except (OSError, ValueError):
            ids = []
    image_dir = Path(cfg.data.images)
    paths = []
    for uuid_ in sorted(set(ids)):  # sorted: the same sample on every export of a run
        found = next(
            (
                image_dir / f"{uuid_}{ext}"
                for ext in cfg.data.image_extensions
                if (image_dir / f"{uuid_}{ext}").is_file()
            ),
            None,
        )
        if found is not None:
            paths.append(found)
    step = max(1, len(paths) // limit) if limit else 1
    return paths[::step][:limit], split


Probabilities = Callable[[list[Path]], "tuple[np.ndarray, np.ndarray] | None"]


def reference_for_run(model, labels, cfg, limit: int, probabilities: Probabilities | None = None) -> Reference | None:
    """A run's model over up to ``limit`` held-out images -> Reference (None: no images found).

    ``probabilities(paths)`` may supply the model's outputs for those images (training has them
    from its held-out scoring); when it returns None the model runs over the images.
    """
    paths, split = reference_images(cfg, limit)
    if not paths:
        log.warning("no held-out or test images found for %s: the export carries no reference statistics", cfg.run_name)
        return None
    known = probabilities(paths) if probabilities is not None else None
    if known is None:
        ds = pipeline.make_dataset(
            [str(p) for p in paths], image_size=labels.image_size, batch_size=cfg.train.batch_size
        )
        known = predict_probabilities(model, ds, labels.category_output, description="reference statistics")
    p_cat, p_tags = known
    rows, _ = observations(p_cat, p_tags, labels.thresholds, [image_stats(p.read_bytes()) for p in paths])
    return build_reference(
        rows, labels.categories, labels.tags, {"run_name": cfg.run_name, "split": split, "images": len(paths)}
    )


def write_reference(reference: Reference, path: str | Path) -> None:
    write_json(path, reference.to_json())


def model_fingerprint(run_dir: str | Path) -> str:
    """Which saved model a run folder's reference describes (blake2b-128 of ``model.keras``)."""
    return file_hash(Path(run_dir) / MODEL_FILE)


def write_run_reference(
    labels, cfg, run_dir: str | Path, probabilities: Probabilities | None, model=None
) -> Path | None:
    """``<run_dir>/reference_stats.json`` for the run's saved model, tagged with its fingerprint.

    ``probabilities``: as ``reference_for_run``'s (None: ``model`` runs over the images).
    """
    reference = reference_for_run(model, labels, cfg, cfg.monitoring.reference_images, probabilities)
    if reference is None:
        return None
    reference.source["model"] = model_fingerprint(run_dir)
    path = Path(run_dir) / REFERENCE_STATS_FILE
    write_reference(reference, path)
    return path


def run_reference_files(model, labels, cfg, run_dir: str | Path) -> dict[str, Path]:
    """``<run_dir>/reference_stats.json`` for an export's ``assets.extra/``: {name: path}, {} without images.

    Training writes it from its held-out scoring; it is computed here only when it is missing or
    describes another model (an older file, a retrained run).
    """
    path = Path(run_dir) / REFERENCE_STATS_FILE
    if path.is_file():
        try:
            current = load_reference(path).source.get("model") == model_fingerprint(run_dir)
        except (ValueError, OSError):
            current = False
        if current:
            return {REFERENCE_STATS_FILE: path}
    written = write_run_reference(labels, cfg, run_dir, None, model)
    return {REFERENCE_STATS_FILE: written} if written is not None else {}
