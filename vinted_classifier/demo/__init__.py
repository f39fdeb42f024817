"""Synthetic Vinted-layout demo dataset: label files with the real file's statistics plus drawn garment photos.

The real Vinted images are not public, so every stage of the project (training, evaluation, serving,
benchmarks, the notebook) is exercised end to end on this generated stand-in. Labels follow the real
``data.parquet`` statistics (category counts, per-category tag rates, colours, ~3% duplicate rows);
images are drawn garments whose silhouette carries the category, whose fabric colour carries ``color1``
and whose pattern carries the tags.

Crash safety: everything is written into a temporary folder beside ``out_dir`` and renamed into place
only when complete, so ``out_dir`` never holds half a dataset.

CLI: ``python -m vinted_classifier.demo OUT_DIR [--scale S] [--seed N] [--force]``.

Modules: ``labels`` (label tables), ``shapes`` (silhouettes), ``fabric`` (colours and patterns),
``render`` (one photo), ``dataset`` (the folder: parquets, images, README).
"""

from __future__ import annotations

from .dataset import GENERATOR_VERSION, ensure_demo_dataset, generate_demo_dataset, main
from .labels import CATEGORIES, CATEGORY_COUNTS, TAGS, make_labels
from .render import render_garment

__all__ = [
    "CATEGORIES",
    "CATEGORY_COUNTS",
    "GENERATOR_VERSION",
    "TAGS",
    "ensure_demo_dataset",
    "generate_demo_dataset",
    "main",
    "make_labels",
    "render_garment",
]
