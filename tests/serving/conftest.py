"""Fixtures of the serving tests: a model base path with version 1, the app, a test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import model_base_with_v1
from starlette.testclient import TestClient

from tf_serving_compat.factory import build_app
from tf_serving_compat.options import ServerOptions


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    """``<tmp>/models/my_model`` holding version 1."""
    return model_base_with_v1(tmp_path)


@pytest.fixture
def serving(model_base: Path):
    """The generic server (no project routes) on ``model_base``."""

    app = build_app(
        ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0.2, rest_api_timeout_in_ms=20000)
    )
    yield app
    app.close()


@pytest.fixture
def client(serving):

    with TestClient(serving.app) as test_client:
        yield test_client
