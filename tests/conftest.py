"""Shared fixtures: a tiny synthetic Vinted-layout dataset and the real reference files."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(autouse=True)
def float32_graphs_between_tests():
    """Each test starts with TensorFlow's auto-mixed-precision rewrites off.

    In-process inference (``predict_test_set``, the server's app) switches on the host's rewrite
    for the rest of the process: bf16 on a CPU with AVX512_BF16/AMX. Left on, it would turn the next
    test's float32 comparisons into bf16 ones on such hosts only. Tests that never imported
    TensorFlow do not pay for importing it here.
    """
    yield
    if "tensorflow" in sys.modules:
        # Here, not at the top: a test session that never needs TensorFlow never imports it.
        from hostinfo import RewriteDecision, apply_rewrite  # noqa: PLC0415

        apply_rewrite(RewriteDecision("off", "reset between tests"))


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture()
def reset_policy():
    """Start from the float32 policy and restore the previous global Keras policy afterwards."""
    # Keras only for the tests that ask for this fixture.
    import keras  # noqa: PLC0415

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(before)
