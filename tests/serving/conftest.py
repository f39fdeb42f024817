"""Fixtures of the serving tests: a model base path with version 1, the app, a test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import V1_BIAS, install_version, template


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    """``<tmp>/models/my_model`` holding version 1."""
    base = tmp_path / "models" / "my_model"
    install_version(template(V1_BIAS), base, 1)
    return base


@pytest.fixture
def serving(model_base: Path):
    """The generic server (no project routes) on ``model_base``."""
    from tf_serving_compat.server import build_app

    app = build_app(model_base_path=model_base, file_system_poll_wait_seconds=0.2, rest_api_timeout_in_ms=20000)
    yield app
    app.close()


@pytest.fixture
def client(serving):
    from starlette.testclient import TestClient

    with TestClient(serving.app) as test_client:
        yield test_client


@pytest.fixture
def project_client(model_base: Path):
    """The server as ``vinted serve`` builds it: generic app plus the project's /predict_image."""
    from starlette.testclient import TestClient

    from vinted_classifier.serving import build_project_app

    app = build_project_app(model_base_path=model_base, file_system_poll_wait_seconds=0)
    try:
        with TestClient(app.app) as test_client:
            yield test_client
    finally:
        app.close()
