"""docker-compose.yml runs the real tensorflow_model_server on exactly what `vinted export` writes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hostinfo import RewriteDecision
from vinted_classifier.serving_files import CONFIG_DIR_NAME, SESSION_FILES, real_server_args, write_serving_config

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args)


def test_compose_flags_and_paths_match_the_export(tmp_path):
    service = yaml.safe_load(COMPOSE.read_text())["services"]["tf-serving"]
    host_dir, container_root = service["volumes"][0].removesuffix(":ro").split(":")
    assert host_dir == "./model_training/saved_model" and container_root == "/models"
    written = {p.name for p in write_serving_config(tmp_path, "my_model").iterdir()}
    compose = _flags([re.sub(r"\$\{SESSION_CONFIG:-([^}]+)\}", r"\1", arg) for arg in service["command"]])
    for flag, value in compose.items():
        if flag.endswith("_file"):
            folder, name = value.rsplit("/", 1)
            assert folder == f"{container_root}/{CONFIG_DIR_NAME}", flag
            assert name in written, (flag, name)
    assert compose["model_config_file"].endswith("models.container.config")
    assert compose["tensorflow_session_config_file"].endswith(SESSION_FILES["off"])  # safe on every CPU
    # Same flags as `vinted serve` gives the real binary, apart from the ports and the model config's paths.
    ours = _flags(real_server_args(tmp_path, RewriteDecision("off", "test")))
    assert set(ours) == set(compose)
    for flag in set(ours) - {
        "port",
        "rest_api_port",
        "model_config_file",
        "batching_parameters_file",
        "monitoring_config_file",
        "tensorflow_session_config_file",
    }:
        assert ours[flag] == compose[flag], flag
    assert compose["port"] == "8500" and "127.0.0.1:8500:8500" in service["ports"]
    assert f"127.0.0.1:9000:{compose['rest_api_port']}" in service["ports"]
