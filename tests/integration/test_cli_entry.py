"""The command line as a user meets it: `python -m vinted_classifier`, quiet TensorFlow start-up, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

from vinted_classifier import cli
from vinted_classifier.config import PROJECT_ROOT


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vinted_classifier", *args],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_m_lists_every_command():
    completed = _run("--help")
    assert completed.returncode == 0, completed.stderr
    for command in (
        "demo",
        "train",
        "evaluate",
        "predict",
        "export",
        "release",
        "promote",
        "rollback",
        "serve",
        "weights",
    ):
        assert command in completed.stdout


def test_a_model_command_prints_only_its_own_error(tmp_path):
    """TensorFlow is imported (quietly) before the command runs: stderr holds our one line, no C++ start-up logs."""
    completed = _run("evaluate", "--set", f"output_dir={tmp_path}", "--set", "run_name=missing")
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"error: no trained model at {tmp_path / 'missing' / 'model.keras'} (run `make train` or `vinted train`)"
    ]


def test_weights_status_names_the_three_sources():
    completed = _run("weights", env={"VINTED_OFFLINE": "1"})
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "ImageNet weights for vgg19, in the order model.weights=auto tries them:"
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3."]
    assert "skipped (VINTED_OFFLINE=1)" in lines[2]


def test_verbose_lets_tensorflow_log(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    cli.quiet_native_logs(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    cli.quiet_native_logs(verbose=False, import_tensorflow=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
