"""Numbered, immutable versions under a model's base path, each written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from ..contract import (
    ASSETS_DIR,
    ASSETS_EXTRA_DIR,
    DEFAULT_MODEL_NAME,
    DEFAULT_SIGNATURE,
    PIXELS_SIGNATURE,
    RunLabels,
    labels_path,
    warmup_path,
)
from ..monitoring.reference import run_reference_files
from ..runs import load_run
from ..serving_files import write_serving_config
from ..utils import package_versions, write_json
from .rebuild import compute_precision, model_in_precision
from .serving_module import build_serving_module, save_serving_module
from .warmup import synthetic_images, warmup_records, write_warmup_file

log = logging.getLogger(__name__)

PROVENANCE_FILES = ("config.yaml", "run.json", "metrics.json")
# Precision and provenance of a version, beside labels.json.
EXPORT_INFO_FILE = "export.json"


def existing_versions(model_root: Path) -> list[int]:
    """Numeric version folders under a model's base path (others are ignored, like TF Serving)."""
    if not model_root.is_dir():
        return []
    return sorted(int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_root: Path) -> int:
    versions = existing_versions(model_root)
    return versions[-1] + 1 if versions else 1


def export_saved_model(
    model,
    labels: RunLabels,
    base_dir: str | Path,
    model_name: str = DEFAULT_MODEL_NAME,
    version: int | None = None,
    *,
    precision: str = "float32",
    model_cfg=None,
    warmup_images: list[bytes] | None = None,
    extra_files: dict[str, Path] | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write ``<base_dir>/<model_name>/<version>/`` atomically; return its path.

    ``precision``: the dtype the graph computes in (see the package docstring); ``model_cfg`` lets a
    model trained under another policy be rebuilt in it. ``warmup_images``: encoded images for the
    warm-up records (generated ones when empty: never pass users' photos). ``extra_files``: copied into
    ``assets.extra/``.
    """
    model_root = Path(base_dir) / model_name
    model_root.mkdir(parents=True, exist_ok=True)
    version = next_version(model_root) if version is None else int(version)
    final = model_root / str(version)
    if final.exists():
        raise FileExistsError(f"version {version} already exists at {final}; versions are immutable")
    info = {
        "precision": precision,
        "trained_compute_dtype": compute_precision(model),
        "model_name": model_name,
        "version": version,
        "signatures": [DEFAULT_SIGNATURE, PIXELS_SIGNATURE],
    }
    serving_model = model_in_precision(model, model_cfg, labels, precision)
    staging = model_root / f".export-{version}-{uuid.uuid4().hex[:8]}"  # not numeric: servers skip it
    try:
        save_serving_module(build_serving_module(serving_model, labels), staging)
        _write_assets(staging, labels, {**info, "exported_utc": _now_utc(), **(provenance or {})})
        images = list(warmup_images or []) or synthetic_images(labels.image_size)
        write_warmup_file(warmup_path(staging), warmup_records(model_name, labels, images))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / ASSETS_EXTRA_DIR / name)
        os.rename(staging, final)  # one atomic step on the same filesystem
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d (%s graph) to %s", model_name, version, precision, final)
    return final


def _now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _write_assets(version_dir: Path, labels: RunLabels, info: dict) -> None:
    (version_dir / ASSETS_DIR).mkdir(exist_ok=True)
    labels.save(labels_path(version_dir))
    write_json(version_dir / ASSETS_DIR / EXPORT_INFO_FILE, info)


def export_run(
    run_dir: str | Path,
    base_dir: str | Path | None = None,
    model_name: str | None = None,
    precision: str | None = None,
    *,
    serving_config: bool = True,
) -> Path:
    """Export a finished run's best model with its labels, thresholds, warm-up and provenance.

    Writes into ``base_dir`` directly: ``vinted export`` passes the release staging area
    (``vinted_classifier.release``), tests and ``--direct`` the served base path. With
    ``serving_config`` it (re)writes ``<base_dir>/serving_config/`` for the real
    ``tensorflow_model_server``. Warm-up records use generated images only.
    """
    run_dir = Path(run_dir)
    cfg, labels, model = load_run(run_dir)
    base_dir = Path(base_dir or cfg.export.saved_model_dir)
    model_name = model_name or cfg.export.model_name
    extra = {name: run_dir / name for name in PROVENANCE_FILES if (run_dir / name).is_file()}
    extra.update(run_reference_files(model, labels, cfg, run_dir))
    path = export_saved_model(
        model,
        labels,
        base_dir,
        model_name,
        precision=precision or cfg.export.precision,
        model_cfg=cfg.model,
        warmup_images=synthetic_images(labels.image_size),
        extra_files=extra,
        provenance={
            "run_name": cfg.run_name,
            "run_dir": str(run_dir.resolve()),
            "package_versions": package_versions(("tensorflow", "keras")),
        },
    )
    if serving_config:
        write_serving_config(base_dir, model_name)
    return path


def read_export_info(version_dir: str | Path) -> dict:
    """``assets/export.json`` of a version (precision, provenance); {} for exports that predate it."""
    path = Path(version_dir) / ASSETS_DIR / EXPORT_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
