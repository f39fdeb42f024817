"""Versions on disk: status states, hot swap under load, failed loads, policies and labels."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
from serve_helpers import V1_BIAS, V2_BIAS, b64, install_version, jpeg_bytes, reference_outputs, template
from starlette.testclient import TestClient

from tf_serving_compat.factory import build_app
from tf_serving_compat.options import ServerOptions
from tf_serving_compat.versions import ModelManager, ModelSpecConfig, VersionPolicy, parse_model_config_file

IMAGE = jpeg_bytes((120, 60, 200), noise=20)
BODY = {"instances": [b64(IMAGE)]}


def cc3(version_bias: float) -> list[float]:
    return reference_outputs(template(version_bias), "serving_default", image_bytes=[IMAGE])["cc3"][0].tolist()


def wait_for(predicate, timeout: float = 15.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def status_of(c) -> list[dict]:
    return c.get("/v1/models/my_model").json()["model_version_status"]


def predicted_cc3(c, path="/v1/models/my_model:predict") -> list[float]:
    response = c.post(path, json=BODY)
    assert response.status_code == 200, response.text
    return [float(np.float32(v)) for v in response.json()["predictions"][0]["cc3"]]


def test_version_policy_selection():
    assert VersionPolicy().aspired([3, 1, 2]) == [3]
    assert VersionPolicy("latest", num_versions=2).aspired([3, 1, 2]) == [2, 3]
    assert VersionPolicy("all").aspired([3, 1]) == [1, 3]
    assert VersionPolicy("specific", versions=frozenset({1, 5})).aspired([1, 2, 3]) == [1]
    assert VersionPolicy().aspired([]) == []


def test_latest_version_served_and_old_one_ends(tmp_path):
    base = tmp_path / "m"
    install_version(template(V1_BIAS), base, 1)
    install_version(template(V2_BIAS), base, 2)
    (base / "not_a_version").mkdir()
    (base / "7").mkdir()  # no saved_model.pb yet: still being written, skipped silently
    app = build_app(ServerOptions(model_base_path=base, file_system_poll_wait_seconds=0))
    try:
        with TestClient(app.app) as c:
            assert status_of(c) == [
                {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
            np.testing.assert_array_equal(np.float32(predicted_cc3(c)), np.float32(cc3(V2_BIAS)))
            assert c.post("/v1/models/my_model/versions/1:predict", json=BODY).status_code == 404
    finally:
        app.close()


def test_hot_swap_under_load_has_zero_failures(client, model_base):
    old, new = np.float32(cc3(V1_BIAS)), np.float32(cc3(V2_BIAS))
    assert not np.array_equal(old, new)
    results: list[tuple[int, list[float] | str]] = []
    stop = threading.Event()

    def load_loop():
        while not stop.is_set():
            response = client.post("/v1/models/my_model:predict", json=BODY)
            if response.status_code == 200:
                results.append((200, response.json()["predictions"][0]["cc3"]))
            else:
                results.append((response.status_code, response.text))

    worker = threading.Thread(target=load_loop)
    worker.start()
    try:
        wait_for(lambda: len(results) >= 5)
        install_version(template(V2_BIAS), model_base, 2)  # tmp dir + one rename
        swapped_at = time.monotonic()
        wait_for(lambda: results and results[-1][0] == 200 and np.array_equal(np.float32(results[-1][1]), new))
        swap_seconds = time.monotonic() - swapped_at
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(30)
    failures = [r for r in results if r[0] != 200]
    assert failures == []
    assert swap_seconds < 10
    seen = [np.float32(r[1]) for r in results]
    assert all(np.array_equal(s, old) or np.array_equal(s, new) for s in seen)
    first_new = next(i for i, s in enumerate(seen) if np.array_equal(s, new))
    assert all(np.array_equal(s, new) for s in seen[first_new:])  # never back to the old version
    assert status_of(client) == [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
    ]


def test_corrupt_version_is_reported_and_never_replaces_working_one(client, model_base, tmp_path):
    staging = tmp_path / "staging2"
    shutil.copytree(template(V2_BIAS), staging)
    (staging / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel proto" * 3)
    staging.rename(model_base / "2")
    entries = wait_for(
        lambda: [e for e in status_of(client) if e["version"] == "2" and e["state"] == "END"] and status_of(client)
    )
    by_version = {e["version"]: e for e in entries}
    assert by_version["1"] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert by_version["2"]["state"] == "END"
    assert by_version["2"]["status"]["error_code"] not in ("OK", "")
    assert by_version["2"]["status"]["error_message"]
    time.sleep(0.5)  # several polls: the broken version is not retried in a loop nor swapped in
    np.testing.assert_array_equal(np.float32(predicted_cc3(client)), np.float32(cc3(V1_BIAS)))
    assert client.get("/v1/models/my_model/versions/1").json()["model_version_status"][0]["state"] == "AVAILABLE"
    # Fixing the directory (rewritten in place via a rename) is picked up.
    shutil.rmtree(model_base / "2")
    install_version(template(V2_BIAS), model_base, 2)
    wait_for(
        lambda: (
            status_of(client)[0]
            == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        )
    )
    np.testing.assert_array_equal(np.float32(predicted_cc3(client)), np.float32(cc3(V2_BIAS)))


CONFIG = """
model_config_list {
  config {
    name: "my_model"
    base_path: "%s"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "%s"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_config_file_labels_and_policies(tmp_path):
    base = tmp_path / "my_model"
    other = tmp_path / "other"
    for version, bias in ((1, V1_BIAS), (2, V2_BIAS)):
        install_version(template(bias), base, version)
        install_version(template(bias), other, version)
    install_version(template(V2_BIAS), base, 3)  # not in the specific policy
    config = tmp_path / "models.config"
    config.write_text(CONFIG % (base, other))
    specs = parse_model_config_file(config)
    assert [s.name for s in specs] == ["my_model", "other"]
    assert specs[0].labels == {"stable": 1, "canary": 2}
    assert specs[0].policy == VersionPolicy("specific", versions=frozenset({1, 2}))
    assert specs[1].policy == VersionPolicy("latest", num_versions=2)
    app = build_app(ServerOptions(model_config_file=config, file_system_poll_wait_seconds=0))
    try:
        with TestClient(app.app) as c:
            assert [e["version"] for e in status_of(c)] == ["2", "1"]
            assert all(e["state"] == "AVAILABLE" for e in status_of(c))
            stable = predicted_cc3(c, "/v1/models/my_model/labels/stable:predict")
            canary = predicted_cc3(c, "/v1/models/my_model/labels/canary:predict")
            np.testing.assert_array_equal(np.float32(stable), np.float32(cc3(V1_BIAS)))
            np.testing.assert_array_equal(np.float32(canary), np.float32(cc3(V2_BIAS)))
            assert c.get("/v1/models/my_model/labels/canary").json()["model_version_status"][0]["version"] == "2"
            assert c.get("/v1/models/my_model/labels/stable/metadata").json()["model_spec"]["version"] == "1"
            unknown = c.post("/v1/models/my_model/labels/beta:predict", json=BODY)
            assert unknown.status_code == 400
            assert unknown.json() == {"error": "Unrecognized servable version label: beta"}
            assert [e["version"] for e in c.get("/v1/models/other").json()["model_version_status"]] == ["2", "1"]
            np.testing.assert_array_equal(
                np.float32(predicted_cc3(c, "/v1/models/other:predict")), np.float32(cc3(V2_BIAS))
            )
            assert c.get("/healthz").json()["models"] == {"my_model": [1, 2], "other": [1, 2]}
    finally:
        app.close()


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }", "model_platform"),
        ("model_config_list { config { nme: 'a' } }", "Invalid model config file"),
        ("model_config_list { }", "no models configured"),
        ("model_config_list { config { name: 'a' } }", "no base_path"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    config = tmp_path / "bad.config"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_model_config_file(config)


def test_missing_base_path_serves_nothing_but_answers(tmp_path):
    app = build_app(ServerOptions(model_base_path=tmp_path / "absent", file_system_poll_wait_seconds=0))
    try:
        with TestClient(app.app) as c:
            response = c.get("/v1/models/my_model")
            assert response.status_code == 404
            assert response.json() == {"error": "Could not find any versions of model my_model"}
            predict = c.post("/v1/models/my_model:predict", json=BODY)
            assert predict.status_code == 404
            assert predict.json() == {"error": "Servable not found for request: Latest(my_model)"}
            assert c.get("/healthz").status_code == 503
    finally:
        app.close()


class _FakeVersion:
    """Stands in for LoadedVersion so load timing can be controlled without TensorFlow."""

    def __init__(self, name, version, path, gate=None):
        if gate is not None:
            gate.wait(10)
        self.name, self.version, self.path = name, version, path
        self.bytes_per_item, self.measured_with = None, None  # nothing measured, as without warm-up records


def test_loading_state_is_reported_and_old_version_serves_meanwhile(tmp_path):

    base = tmp_path / "m"
    for version in (1, 2):
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"x")
    gate = threading.Event()
    gates = {1: None, 2: gate}
    (base / "2").rename(tmp_path / "hold")
    manager = ModelManager(
        ModelSpecConfig("m", base), loader=lambda name, version, path: _FakeVersion(name, version, path, gates[version])
    )
    manager.poll()
    assert manager.resolve().version == 1
    (tmp_path / "hold").rename(base / "2")
    poller = threading.Thread(target=manager.poll)
    poller.start()
    try:
        wait_for(lambda: any(e["version"] == "2" and e["state"] == "LOADING" for e in manager.status()))
        assert manager.resolve().version == 1  # the old version answers while 2 loads
        assert [e["state"] for e in manager.status()] == ["LOADING", "AVAILABLE"]
    finally:
        gate.set()
        poller.join(10)
    assert manager.resolve().version == 2
    assert [(e["version"], e["state"]) for e in manager.status()] == [("2", "AVAILABLE"), ("1", "END")]


def test_broken_newest_version_at_start_falls_back_in_the_same_scan(tmp_path):

    base = tmp_path / "m"
    for version in (1, 2, 3):
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"x")

    def loader(name, version, path):
        if version == 3:
            raise ValueError("broken export")
        return _FakeVersion(name, version, path)

    manager = ModelManager(ModelSpecConfig("m", base), loader=loader)
    manager.poll()  # one scan only
    assert manager.resolve().version == 2
    assert manager.status() == [
        {
            "version": "3",
            "state": "END",
            "status": {"error_code": "INVALID_ARGUMENT", "error_message": "broken export"},
        },
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]
    manager.poll()  # the failed version is not retried while its files are unchanged
    assert manager.status()[0]["state"] == "END" and manager.resolve().version == 2
