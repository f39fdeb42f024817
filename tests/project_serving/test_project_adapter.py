"""The project adapter (vinted_classifier.serving): /predict_image, the launcher, and the package boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_flags
import yaml
from serve_helpers import V1_BIAS, b64, install_version, jpeg_bytes, png_header_only, reference_outputs, template
from starlette.testclient import TestClient

from hostinfo import RewriteDecision, decide_rewrite
from tf_serving_compat.cli import boolean_flags, build_parser
from tf_serving_compat.factory import app_from_args, build_app, start_line
from tf_serving_compat.options import ServerOptions
from vinted_classifier.serving import VintedAdapter, split_args
from vinted_classifier.serving_files import real_server_args, write_serving_config

PROJECT = Path(__file__).resolve().parents[2]
SERVING_TESTS = PROJECT / "tests" / "serving"  # tf_flags, the real binary's flag rules


def error_of(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


def test_serving_package_does_not_import_the_project():
    """tf_serving_compat must stay publishable alone: building its app imports no vinted_classifier."""
    code = (
        "import sys; import tf_serving_compat.server, tf_serving_compat.app, tf_serving_compat.grpc_service, "
        "tf_serving_compat.monitoring, tf_serving_compat.factory, tf_serving_compat.versions, hostinfo; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vinted_classifier'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    sources = "\n".join(p.read_text() for p in (PROJECT / "tf_serving_compat").glob("*.py"))
    assert "vinted_classifier" not in sources


def test_generic_app_has_no_upload_route(client):
    response = client.post("/predict_image", content=jpeg_bytes())
    assert response.status_code == 404
    assert error_of(response) == "Not found: POST /predict_image"


def test_predict_image_upload(project_client, model_base):
    image = jpeg_bytes((30, 30, 220), noise=10)
    expected = reference_outputs(model_base / "1", "serving_default", image_bytes=[image])
    response = project_client.post("/predict_image", files={"file": ("photo.jpeg", image, "image/jpeg")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "my_model" and body["version"] == "1"
    codes = expected["top2_codes"][0].tolist()
    assert [t["code"] for t in body["top2"]] == codes
    assert [t["name"] for t in body["top2"]] == [n.decode() for n in expected["top2_names"][0]]
    assert [np.float32(t["probability"]) for t in body["top2"]] == [expected["cc3"][0][c] for c in codes]
    assert list(body["tags"]) == ["polka dot", "floral", "checker"]
    for i, tag in enumerate(["polka dot", "floral", "checker"]):
        assert np.float32(body["tags"][tag]["probability"]) == expected["tags"][0][i]
        assert body["tags"][tag]["present"] == bool(expected["tag_flags"][0][i])
    raw = project_client.post(
        "/models/my_model/predict_image?version=1", content=image, headers={"content-type": "image/jpeg"}
    )
    assert raw.status_code == 200 and raw.json() == body


@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"files": {"other": ("a.jpeg", b"x", "image/jpeg")}}, 400, "Missing multipart file field 'file'"),
        ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 400, "Unknown image file format."),
        ({"content": b""}, 400, "Empty image"),
        ({"files": {"file": ("b.png", png_header_only(9000, 9000), "image/png")}}, 400, "exceeds the limit"),
    ],
)
def test_predict_image_errors(project_client, kwargs, status, fragment):
    response = project_client.post("/predict_image", **kwargs)
    assert response.status_code == status
    assert fragment in error_of(response)


def test_predict_image_unknown_model(project_client):
    response = project_client.post("/models/nope/predict_image", content=jpeg_bytes())
    assert response.status_code == 404
    assert error_of(response) == "Servable not found for request: Latest(nope)"


@pytest.mark.parametrize("query", ["version=\uff11", "version=" + "9" * 5000, "version=-1", "version=1.0"])
def test_predict_image_version_must_be_ascii_digits(project_client, query):
    response = project_client.post(f"/predict_image?{query}", content=jpeg_bytes())
    assert response.status_code == 400
    assert error_of(response).startswith("Failed to convert version: ")


def test_predict_image_body_limit(model_base):

    options = ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0, max_body_bytes=2000)
    app = build_app(options, adapter=VintedAdapter())
    try:
        with TestClient(app.app) as c:
            upload = c.post("/predict_image", files={"file": ("a.jpeg", b"y" * 5000, "image/jpeg")})
            assert upload.status_code == 413
            assert "exceeds the limit of 2000 bytes" in error_of(upload)
    finally:
        app.close()


# ---------------------------------------------------------------- the launcher


def test_split_args_keeps_our_flags_from_the_real_binary_and_writes_name_equals_value():

    real, own = split_args(
        [
            "--port",
            "0",
            "--host=0.0.0.0",
            "--enable_batching",
            "--max_body_bytes",
            "10",
            "--model_name=x",
            "--mixed_precision_rewrite=off",
            "--grpc_max_threads",
            "3",
            "--enable_model_warmup",
            "false",
        ]
    )
    assert real == [
        "--port=0",
        "--enable_batching=true",
        "--model_name=x",
        "--grpc_max_threads=3",
        "--enable_model_warmup=false",
    ]
    assert own == ["--host=0.0.0.0", "--max_body_bytes=10", "--mixed_precision_rewrite=off"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_base_path"], "flag --model_base_path needs a value"),
        (["--no_such_flag=1"], "unknown flag --no_such_flag"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_split_args_refuses_what_neither_server_would_parse(argv, message):

    with pytest.raises(ValueError, match=message):
        split_args(argv)


def test_the_strict_flag_rules_refuse_the_two_word_form():
    """The fake binary's rules are TensorFlow's: they must reject what the real binary ignores."""

    assert tf_flags.parse(["--model_base_path=/m", "--enable_batching", "--port=1"]) == {
        "model_base_path": "/m",
        "enable_batching": "true",
        "port": "1",
    }
    for argv in (
        ["--model_base_path", "/m"],
        ["--port"],
        ["--port=x"],
        ["--enable_batching=yes"],
        ["--host=1"],
        ["--port=2147483648"],
    ):
        with pytest.raises(ValueError):
            tf_flags.parse(argv)


def test_our_parser_takes_every_flag_of_tensorflow_model_server_with_its_type():
    """TF Serving's main.cc flag table (tests/serving/data): each flag parses here with its type."""

    table = tf_flags.flag_table()
    assert len(table) >= 48 and "xla_gpu_compilation_enabled" in table
    parser = build_parser()
    samples = {
        "int32": ("7", 7),
        "int64": ("7", 7),
        "float": ("0.5", 0.5),
        "string": ("/some/path", "/some/path"),
        "bool": ("true", True),
    }
    for name, kind in table.items():
        text, expected = samples[kind]
        if kind == "float" or name == "file_system_poll_wait_seconds":
            expected = float(text)
        args = parser.parse_args([f"--{name}={text}"])
        assert getattr(args, name if name != "version" else "version") == expected, name
        assert (name in boolean_flags(parser)) == (kind == "bool"), name
        if kind in ("int32", "int64"):
            with pytest.raises(SystemExit):
                parser.parse_args([f"--{name}=not-a-number"])


def _fake_real_server(folder: Path) -> Path:
    """A ``tensorflow_model_server`` on PATH that parses argv with TensorFlow's rules and records it.

    Anything the real binary would not take (``--name value``, unknown flags, bad values) makes it
    exit 255 with the reason, as the real one prints its usage and returns -1.
    """
    folder.mkdir()
    script = folder / "tensorflow_model_server"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nsys.path.insert(0, {str(SERVING_TESTS)!r})\n"
        "import tf_flags\n"
        "try:\n    tf_flags.parse(sys.argv[1:])\nexcept ValueError as exc:\n"
        "    print(exc, file=sys.stderr)\n    sys.exit(255)\n"
        f"open({str(folder / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    return folder / "argv.json"


def _vinted_serve(args: list[str], bin_dir: Path, default_base: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        TF_SERVING_COMPAT_MODEL_BASE_PATH=str(default_base),
    )
    return subprocess.run(
        [sys.executable, "-m", "vinted_classifier.cli", "serve", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_vinted_serve_runs_the_real_binary_with_the_exports_serving_files(tmp_path):

    saved_model_dir = tmp_path / "saved_model"
    (saved_model_dir / "my_model").mkdir(parents=True)
    config_dir = write_serving_config(saved_model_dir, "my_model")
    recorded = _fake_real_server(tmp_path / "bin")
    done = _vinted_serve(
        [
            "--rest_api_port=9123",
            "--port",
            "8123",
            "--host=0.0.0.0",
            "--max_body_bytes=10",
            "--mixed_precision_rewrite=off",
            "--enable_batching=false",
        ],
        tmp_path / "bin",
        saved_model_dir / "my_model",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    argv = json.loads(recorded.read_text())
    assert not [a for a in argv if a.startswith(("--host", "--max_body_bytes", "--mixed_precision_rewrite"))]
    assert "--rest_api_port=9123" in argv and "--port=8123" in argv
    assert f"--tensorflow_session_config_file={config_dir.resolve() / 'session_default.config'}" in argv
    assert f"--monitoring_config_file={config_dir.resolve() / 'monitoring.config'}" in argv
    assert f"--model_config_file={config_dir.resolve() / 'models.config'}" in argv
    assert not [a for a in argv if a.startswith("--model_base_path")]  # the config file names the model
    assert argv[-1] == "--enable_batching=false"  # the user's flags come last, so they win
    assert "not passed to tensorflow_model_server" in done.stderr


def test_vinted_serve_without_serving_files_passes_model_flags(tmp_path):
    recorded = _fake_real_server(tmp_path / "bin")
    base = tmp_path / "elsewhere" / "my_model"
    done = _vinted_serve(
        ["--model_base_path", str(base), "--model_name=my_model"], tmp_path / "bin", tmp_path / "default" / "my_model"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(recorded.read_text()) == [
        "--port=8500",
        "--rest_api_port=9000",
        f"--model_base_path={base}",
        "--model_name=my_model",
    ]


def test_our_server_serves_the_real_binarys_flags_from_the_exports_serving_files(tmp_path):
    """The flags `vinted serve` gives tensorflow_model_server also run our server, files and all."""

    saved_model_dir = tmp_path / "saved_model"
    install_version(template(V1_BIAS), saved_model_dir / "my_model", 1)
    config_dir = write_serving_config(saved_model_dir, "my_model")
    flags = real_server_args(config_dir, RewriteDecision("off", "test host"), 9123, 8123)
    args = build_parser().parse_args(flags)
    app = app_from_args(args)
    try:
        assert app.batcher is not None and app.batcher.params.max_batch_size == 32
        assert app.metrics is not None and app.metrics.path == "/monitoring/prometheus/metrics"
        # session_default.config sets no toggle, so our server's host-aware decision stands
        # (bf16 on a CPU with AVX512_BF16/AMX, off on AVX2).
        assert app.rewrite.mode == decide_rewrite("auto").mode
        assert start_line(app)[0].startswith("Serving model my_model versions [1] from ")
        with TestClient(app.app) as c:
            response = c.post("/v1/models/my_model:predict", json={"instances": [b64(jpeg_bytes())]})
            assert response.status_code == 200 and len(response.json()["predictions"][0]["cc3"]) == 4
            metrics = c.get("/monitoring/prometheus/metrics").text
            assert ':tensorflow:serving:request_count{model_name="my_model",status="OK"} 1' in metrics
    finally:
        app.close()


def test_deployments_hand_the_real_binary_only_flags_it_parses():
    """docker-compose.yml and the Kubernetes Deployment run tensorflow_model_server itself: their argv must
    pass TensorFlow's flag rules against TF Serving's flag table, or the real server would ignore them."""

    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    manifests = list(yaml.safe_load_all((PROJECT / "deploy" / "serving" / "tf-serving.yaml").read_text()))
    deployment = next(m for m in manifests if m and m.get("kind") == "Deployment")
    argvs = {
        "docker-compose.yml": compose["services"]["tf-serving"]["command"],
        "deploy/serving/tf-serving.yaml": deployment["spec"]["template"]["spec"]["containers"][0]["args"],
    }
    for where, argv in argvs.items():
        parsed = tf_flags.parse(argv)
        assert parsed["model_config_file"] and parsed["enable_batching"] == "true", where
