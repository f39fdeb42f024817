"""The staging area candidates wait in, and the atomic push into the served base path."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..contract import ASSETS_DIR, ASSETS_EXTRA_DIR
from ..export import existing_versions, export_run
from ..utils import write_json


def staging_root(cfg) -> Path:
    return Path(cfg.release.staging_dir) / cfg.export.model_name


def served_root(cfg) -> Path:
    return Path(cfg.export.saved_model_dir) / cfg.export.model_name


def stage_run(cfg, precision: str | None = None) -> Path:
    """``vinted export``: the run's best model as the next candidate in the staging area."""
    return export_run(cfg.run_dir, cfg.release.staging_dir, cfg.export.model_name, precision, serving_config=False)


def latest_candidate(cfg) -> Path:
    root = staging_root(cfg)
    versions = existing_versions(root)
    if not versions:
        raise FileNotFoundError(f"no candidate in the staging area {root}: run `vinted export` first")
    return root / str(versions[-1])


def push(candidate: Path, root: Path, version: int, extra_json: dict[str, dict]) -> Path:
    """Copy ``candidate`` into ``<root>/<version>`` in one rename; add ``extra_json`` files to assets.extra.

    The copy is built under a hidden name (servers skip it) and renamed into place, so a server
    polling the base path never sees a half-written version. ``assets/export.json`` gets the served
    version number; everything else (``reference_stats.json`` included) is carried unchanged.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / str(version)
    if final.exists():
        raise FileExistsError(f"version {version} already exists at {final}; versions are immutable")
    hidden = root / f".push-{version}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(candidate, hidden, symlinks=False)
        info_path = hidden / ASSETS_DIR / "export.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        write_json(info_path, {**info, "version": version, "staged_as": str(candidate)})
        for name, payload in extra_json.items():
            write_json(hidden / ASSETS_EXTRA_DIR / name, payload)
        os.rename(hidden, final)
    finally:
        if hidden.exists():
            shutil.rmtree(hidden, ignore_errors=True)
    return final
