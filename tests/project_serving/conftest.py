"""Fixtures of the project-adapter tests: the generic server's helpers, the app as ``vinted serve`` builds it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The generic server's test helpers (serve_helpers, tf_flags) live beside its tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serve_helpers import model_base_with_v1  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tf_serving_compat.factory import build_app  # noqa: E402
from tf_serving_compat.options import ServerOptions  # noqa: E402
from vinted_classifier.serving import VintedAdapter  # noqa: E402


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    """``<tmp>/models/my_model`` holding version 1."""
    return model_base_with_v1(tmp_path)


@pytest.fixture
def client(model_base: Path):
    """The generic server (no adapter) on ``model_base``."""
    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0))
    try:
        with TestClient(app.app) as test_client:
            yield test_client
    finally:
        app.close()


@pytest.fixture
def project_client(model_base: Path):
    """The server as ``vinted serve`` builds it: generic app plus the project's adapter."""
    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0), adapter=VintedAdapter())
    try:
        with TestClient(app.app) as test_client:
            yield test_client
    finally:
        app.close()
