"""The release gate end to end on a tiny trained model: pushed, blocked with the reason named, forced, rolled back.

One trained run and one served path shared by the module (tests run in order: each adds a release).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from helpers import tiny_config, write_tiny_dataset

from tf_serving_compat.versions import read_warmup_requests
from vinted_classifier import export
from vinted_classifier.cli import main
from vinted_classifier.contract import ASSETS_DIR, ASSETS_EXTRA_DIR, DEFAULT_MODEL_NAME, labels_path, warmup_path
from vinted_classifier.experiments.tracking import RUN_DIR_TAG, tracked_run
from vinted_classifier.export import serving_module
from vinted_classifier.release import rollout
from vinted_classifier.release.gate import register, run_release
from vinted_classifier.release.infra import free_port
from vinted_classifier.release.report import format_table
from vinted_classifier.release.staging import served_root, stage_run
from vinted_classifier.runs import load_run
from vinted_classifier.train import train

pytestmark = pytest.mark.slow

# The tiny model (VGG16 without pretrained weights, 3 epochs) is weak: the floors are lowered for it, and
# the linear probe on colour features (colour alone separates the tiny set's classes) would beat it.
TINY_GATE = [
    "release.min_top1=0.3",
    "release.min_top2=0.5",
    "release.min_tag_f1=0",
    "release.slice_min_support=5",
    "release.slice_min_top1=0",
    "release.probe_margin=-1",
    "release.max_latency_ratio=20",
    "release.bootstrap_samples=500",
]


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    dataset = write_tiny_dataset(root / "tiny", n_per_category=40, n_test=3)
    cfg = tiny_config(dataset, root / "runs", f"release.staging_dir={root / 'staging'}", *TINY_GATE)
    train(cfg)
    return cfg


def released(cfg, candidate=None, **kwargs) -> dict:
    report = run_release(cfg, candidate, progress=lambda text: None, **kwargs)
    print(format_table(report))
    return report


def stage_variant(cfg, change) -> Path:
    """A candidate from the trained run with ``change(model)`` applied to its weights."""
    run_cfg, labels, model = load_run(cfg.run_dir)
    change(model)
    return export.export_saved_model(
        model,
        labels,
        cfg.release.staging_dir,
        cfg.export.model_name,
        extra_files={"config.yaml": cfg.run_dir / "config.yaml"},
    )


def shuffled_head(model) -> None:
    rng = np.random.default_rng(1)
    head = model.get_layer("head")
    head.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in head.get_weights()])


def nan_head(model) -> None:
    head = model.get_layer("head")
    weights = head.get_weights()
    kernels = [index for index, w in enumerate(weights) if w.ndim == 2]
    weights[kernels[-1]][0, :] = np.nan  # one input row of the last kernel: NaN reaches the outputs
    head.set_weights(weights)


def test_a_good_candidate_is_pushed_with_report_and_provenance(gate):
    old_mask = os.umask(0o022)
    try:
        candidate = stage_run(gate)
        report = released(gate)
    finally:
        os.umask(old_mask)
    assert report["decision"] == "pushed" and report["blocked_by"] == [] and report["pushed_version"] == 1
    pushed = served_root(gate) / "1"
    saved = json.loads((pushed / ASSETS_EXTRA_DIR / "release.json").read_text())
    assert saved["decision"] == "pushed" and saved["candidate"] == str(candidate)
    names = {c["name"] for c in saved["checks"]}
    assert {
        "floor top-1",
        "numerics held-out",
        "numerics black",
        "beats class prior",
        "infra loads and warms up",
        "infra REST = offline",
        "infra gRPC = offline",
        "slice cc3=BLOUSES top-1",
        "cost size",
    } <= names
    assert all(set(c) == {"name", "value", "threshold", "passed", "detail"} for c in saved["checks"])
    provenance = json.loads((pushed / ASSETS_EXTRA_DIR / "provenance.json").read_text())
    assert len(provenance["git"]["commit"]) == 40 and isinstance(provenance["git"]["dirty"], bool)
    assert len(provenance["data"]["labels_sha256"]) == 64 and len(provenance["data"]["splits_sha256"]) == 64
    assert provenance["config"]["model"]["backbone"] == "vgg16"
    assert provenance["holdout_metrics"]["candidate"]["top1"] == report["metrics"]["candidate"]["top1"]
    assert json.loads((pushed / ASSETS_DIR / "export.json").read_text())["version"] == 1
    for name in os.listdir(candidate / ASSETS_EXTRA_DIR):  # reference_stats.json (monitoring) included, unchanged
        assert (pushed / ASSETS_EXTRA_DIR / name).read_bytes() == (candidate / ASSETS_EXTRA_DIR / name).read_bytes()
    for path in [
        pushed / "saved_model.pb",
        labels_path(pushed),
        pushed / ASSETS_DIR / "export.json",
        pushed / ASSETS_EXTRA_DIR / "release.json",
        pushed / ASSETS_EXTRA_DIR / "provenance.json",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, f"{path} is not world-readable"
    state = rollout.load_state(gate.export.saved_model_dir, gate.export.model_name)
    assert state["labels"] == {"stable": 1}
    config = (gate.export.saved_model_dir / "serving_config" / "models.config").read_text()
    assert 'version_labels { key: "stable" value: 1 }' in config and "versions: 1" in config
    assert Path(report["record"]).is_file()


def test_the_pushed_version_is_registered_in_mlflow_with_its_decision(gate, tmp_path):
    # The default local store: SQLite and artefacts under the run's output_dir (a temp folder here).
    tracking = gate.tracking.model_copy(update={"enabled": True, "registered_model_name": "vinted-classifier"})
    cfg = gate.model_copy(update={"tracking": tracking})
    with tracked_run(cfg, tags={RUN_DIR_TAG: str(cfg.run_dir.resolve())}):  # the training run's record
        pass
    pushed = served_root(gate) / "1"
    report = json.loads((pushed / ASSETS_EXTRA_DIR / "release.json").read_text())
    outcome = register(cfg, pushed, report)
    assert outcome["registered"]["name"] == "vinted-classifier" and str(outcome["registered"]["version"]) == "1"
    client = mlflow.MlflowClient()
    run = client.get_run(outcome["run_id"])
    assert run.data.tags["release.v1"] == "pushed"
    logged = {Path(a.path).name for a in client.list_artifacts(outcome["run_id"], "release/v1")}
    assert logged == {"release.json", "provenance.json"}
    version = client.get_model_version("vinted-classifier", "1")
    assert version.tags["release_decision"] == "pushed" and version.tags["release_pushed_version"] == "1"
    assert version.tags["release_forced"] == "False" and version.tags["release_label"] == "stable"


@pytest.mark.parametrize("variant, reason", [(shuffled_head, "vs served "), (nan_head, "numerics held-out")])
def test_a_worse_or_nan_candidate_is_blocked_with_the_reason(gate, variant, reason):
    candidate = stage_variant(gate, variant)
    report = released(
        gate.model_copy(update={"release": gate.release.model_copy(update={"infra_validation": False})}), candidate
    )
    assert report["decision"] == "blocked" and any(name.startswith(reason) for name in report["blocked_by"])
    if variant is nan_head:
        assert report["blocked_by"] == [
            "numerics held-out",
            "numerics black",
            "numerics white",
            "numerics noise",
            "numerics noise 1200x900",
            "numerics grey 1x1 png",
        ]
    assert report["pushed_version"] is None and not (served_root(gate) / "2").exists()
    assert json.loads(Path(report["record"]).read_text())["blocked_by"] == report["blocked_by"]


def test_a_candidate_that_does_not_load_is_blocked(gate, tmp_path):
    broken = gate.release.staging_dir / gate.export.model_name / "90"
    shutil.copytree(gate.release.staging_dir / gate.export.model_name / "1", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    report = released(gate, broken)
    assert report["blocked_by"] == ["candidate loads in process"]
    assert "90/" in report["checks"][0]["detail"] or "90" in report["checks"][0]["detail"]


def test_a_candidate_failing_warm_up_in_the_server_is_blocked(gate):
    broken = gate.release.staging_dir / gate.export.model_name / "91"
    shutil.copytree(gate.release.staging_dir / gate.export.model_name / "1", broken)
    warmup_path(broken).write_bytes(b"\x00garbage, not TFRecords")
    report = released(gate, broken)
    assert report["blocked_by"] == ["infra loads and warms up"]


def test_served_answers_that_differ_from_offline_block(gate, monkeypatch):
    """An export that left dropout on: its answers vary per call, so the server disagrees with offline."""
    original = serving_module._serving_outputs

    def dropout_on(model, labels, images):
        return original(lambda x, training: model(x, training=True), labels, images)

    monkeypatch.setattr(serving_module, "_serving_outputs", dropout_on)
    candidate = stage_variant(gate, lambda model: None)
    monkeypatch.undo()
    report = released(gate, candidate)
    assert "infra REST = offline" in report["blocked_by"] and "infra gRPC = offline" in report["blocked_by"]
    assert report["pushed_version"] is None


def test_the_linear_probe_blocks_the_tiny_model_at_the_default_margin(gate):
    """ "A simpler model is not better": colour features separate the tiny set, the tiny VGG does not."""
    strict = gate.release.model_copy(update={"probe_margin": 0.0, "infra_validation": False})
    report = released(gate.model_copy(update={"release": strict}), gate.release.staging_dir / DEFAULT_MODEL_NAME / "1")
    probe = next(c for c in report["checks"] if c["name"] == "beats linear probe")
    assert probe["passed"] is False and "beats linear probe" in report["blocked_by"]
    assert "candidate not released before" in report["blocked_by"]  # it is version 1 already
    assert report["checks"][0]["detail"] == "already pushed as version 1"
    assert "linear probe on colour features 1.0000" in probe["detail"]


def test_cli_release_exits_1_when_blocked_and_prints_the_table(gate, tmp_path, capsys):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(gate.to_yaml())
    nan = stage_variant(gate, nan_head)
    assert (
        main(
            [
                "release",
                "--config",
                str(config_file),
                "--candidate",
                str(nan),
                "--set",
                "release.infra_validation=false",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "decision: BLOCKED; failed: numerics held-out, numerics black" in out
    assert "numerics held-out" in out and "FAIL" in out and "report: " in out
    empty = tmp_path / "empty"
    assert main(["release", "--config", str(config_file), "--set", f"release.staging_dir={empty}"]) == 2
    assert f"no candidate in the staging area {empty / DEFAULT_MODEL_NAME}" in capsys.readouterr().err


def test_force_pushes_a_blocked_candidate_and_records_it(gate):
    quick = gate.model_copy(update={"release": gate.release.model_copy(update={"infra_validation": False})})
    second = stage_run(gate)  # the good model again: becomes version 2
    assert released(quick, second)["pushed_version"] == 2
    worse = stage_variant(gate, shuffled_head)
    report = released(quick, worse, force=True)
    assert report["decision"] == "forced" and report["forced"] is True
    assert any(name.startswith("vs served ") for name in report["blocked_by"])
    assert report["pushed_version"] == 3
    saved = json.loads((served_root(gate) / "3" / ASSETS_EXTRA_DIR / "release.json").read_text())
    assert saved["forced"] is True and saved["decision"] == "forced"
    state = rollout.load_state(gate.export.saved_model_dir, gate.export.model_name)
    assert state["labels"] == {"stable": 3} and state["events"][-1]["forced"] is True
    assert rollout.served_versions(state) == [2, 3]


def test_rollback_under_load_loses_no_request(gate, tmp_path):
    """Our server follows the model config file; clients ask for label stable while it moves 3 -> 2."""
    port = free_port()
    env = {**os.environ, "TF_SERVING_COMPAT_MODEL_BASE_PATH": str(served_root(gate))}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vinted_classifier.cli",
            "serve",
            f"--rest_api_port={port}",
            "--port=0",
            "--model_config_file_poll_wait_seconds=1",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/v1/models/{gate.export.model_name}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/labels/stable", timeout=2).json()["model_version_status"][0]["version"] == "3":
                    break
            except (requests.ConnectionError, KeyError, ValueError):
                time.sleep(0.5)
        else:
            pytest.fail(f"server not serving stable=3: {(tmp_path / 'server.log').read_text()[-2000:]}")
        image = export.synthetic_jpeg((40, 32))
        body = {"instances": [{"b64": __import__("base64").b64encode(image).decode()}]}
        outcomes: list[int | str] = []
        stop = threading.Event()

        def client():
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        outcomes.append(session.post(f"{url}/labels/stable:predict", json=body, timeout=30).status_code)
                    except requests.RequestException as error:
                        outcomes.append(repr(error))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        state = rollout.rollback(gate.export.saved_model_dir, gate.export.model_name, remove=True)
        assert state["labels"] == {"stable": 2} and not (served_root(gate) / "3").exists()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(f"{url}/labels/stable", timeout=5).json()["model_version_status"][0]["version"] == "2":
                break
            time.sleep(0.2)
        else:
            pytest.fail("the server never moved label stable to version 2")
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert len(outcomes) > 10 and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]
    assert rollout.load_state(gate.export.saved_model_dir, gate.export.model_name)["events"][-1]["event"] == "rollback"


def test_warm_up_records_hold_no_dataset_image(gate):
    """Privacy: the images inside every export are generated, never a (user's) photo from the dataset."""

    candidate = gate.release.staging_dir / gate.export.model_name / "1"
    sent = set()
    for _signature, inputs in read_warmup_requests(warmup_path(candidate)):
        if "image_bytes" in inputs:
            sent.update(inputs["image_bytes"].ravel().tolist())
    dataset = {path.read_bytes() for path in Path(gate.data.data_dir).glob("*.jpeg")}
    assert len(sent) == export.WARMUP_IMAGES and len(dataset) > 100
    assert not sent & dataset
    assert sent == set(export.synthetic_images((gate.model.image_height, gate.model.image_width)))
