"""Shared fixtures: a tiny synthetic Vinted-layout dataset and the real reference files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write_tiny_dataset

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["VINTED_OFFLINE"] = "1"  # weights=auto never tries a download in tests (the notebook kernel inherits it)

# The real Vinted label files, beside the repository (not committed); tests that need them skip without.
REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "vinted"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "data.parquet").is_file():
        pytest.skip(f"reference Vinted label files not found at {REFERENCE} (they live in ../shared, beside the repo)")
    return REFERENCE


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture()
def reset_policy():
    """Start from the float32 policy and restore the previous global Keras policy afterwards."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(before)
