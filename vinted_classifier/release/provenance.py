"""Where a release came from: code (git commit, dirty flag), data (label and split file hashes), config."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from ..config import PROJECT_ROOT
from ..contract import ASSETS_EXTRA_DIR
from ..data import splits_path


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """``{"commit", "dirty"}`` of the working tree; ``commit`` None (with the reason) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return {"commit": None, "dirty": None, "error": str(error)[:300]}
    return {"commit": commit, "dirty": bool(changes.strip())}


def file_sha256(path: Path) -> str | None:
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(run_cfg) -> dict:
    """sha256 of the label file and the split file the held-out rows come from."""
    labels_file = Path(run_cfg.data.data_dir) / run_cfg.data.labels_file
    splits_file = splits_path(run_cfg.data, run_cfg.seed)
    return {
        "labels_file": str(labels_file),
        "labels_sha256": file_sha256(labels_file),
        "splits_file": str(splits_file),
        "splits_sha256": file_sha256(splits_file),
    }


def provenance(run_cfg, candidate: Path, metrics: dict) -> dict:
    """The provenance record written as ``assets.extra/provenance.json`` of a pushed version."""
    config_file = Path(candidate) / ASSETS_EXTRA_DIR / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else run_cfg.model_dump(mode="json")
    return {
        "git": git_state(),
        "data": data_fingerprint(run_cfg),
        "config": config,
        "holdout_metrics": metrics,
        "candidate": str(candidate),
    }
