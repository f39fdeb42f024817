"""Issue 10, server side: SavedModel warmup before AVAILABLE, and the mixed-precision rewrite decision."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import IMAGE_SIZE, V1_BIAS, V2_BIAS, install_version, jpeg_bytes, template, write_warmup_file
from starlette.testclient import TestClient

from hostinfo import RewriteDecision
from tf_serving_compat.factory import build_app, start_line
from tf_serving_compat.options import ServerOptions
from tf_serving_compat.session_config import SessionSettings, parse_session_config, rewrite_decision
from tf_serving_compat.versions import LoadedVersion

WARMUP = [
    ("serving_default", {"image_bytes": np.array([jpeg_bytes(), jpeg_bytes((9, 9, 9))], dtype=object)}),
    ("serving_pixels", {"input_image": np.zeros((1, *IMAGE_SIZE, 3), np.float32)}),
]


@pytest.fixture
def counted_runs(monkeypatch):
    """Every LoadedVersion.run call as (version, signature, batch size)."""
    calls: list[tuple[int, str, int]] = []
    real_run = LoadedVersion.run

    def run(self, signature_name, inputs):
        calls.append((self.version, signature_name, len(next(iter(inputs.values())))))
        return real_run(self, signature_name, inputs)

    monkeypatch.setattr(LoadedVersion, "run", run)
    return calls


def status(app, name="my_model") -> list[dict]:
    return app.registry.get(name).status()


@pytest.mark.parametrize("enable, iterations, expected_calls", [(True, 1, 2), (True, 3, 6), (False, 3, 0)])
def test_warmup_requests_run_before_the_version_is_available(
    tmp_path, counted_runs, enable, iterations, expected_calls
):
    base = tmp_path / "my_model"
    write_warmup_file(install_version(template(V1_BIAS), base, 1), WARMUP)
    app = build_app(
        ServerOptions(
            model_base_path=base,
            file_system_poll_wait_seconds=0,
            enable_model_warmup=enable,
            num_request_iterations_for_warmup=iterations,
        )
    )
    try:
        # build_app returns after the first scan: warmup already ran, the version is AVAILABLE.
        assert len(counted_runs) == expected_calls
        if expected_calls:
            assert counted_runs[:2] == [(1, "serving_default", 2), (1, "serving_pixels", 1)]
            # The first pass over the records measured the memory per item (execution.py).
            assert app.registry.get("my_model").resolve().bytes_per_item is not None
        assert status(app)[0]["state"] == "AVAILABLE"
        with TestClient(app.app) as c:
            assert (
                c.post(
                    "/v1/models/my_model:predict",
                    json={"signature_name": "serving_pixels", "instances": np.zeros((1, *IMAGE_SIZE, 3)).tolist()},
                ).status_code
                == 200
            )
        assert len(counted_runs) == expected_calls + 1
    finally:
        app.close()


@pytest.mark.parametrize(
    "content, code, fragment",
    [
        (b"this is not a TFRecord file at all", "DATA_LOSS", "Failed to read warmup file"),
        (None, "INVALID_ARGUMENT", 'Serving signature name: "nope" not found in signature def'),
        ("wrong_input", "INVALID_ARGUMENT", "do not match signature serving_default inputs ['image_bytes']"),
        ("bad_image", "INVALID_ARGUMENT", "Unknown image file format"),
        (b"", "INVALID_ARGUMENT", "holds no records"),
    ],
)
def test_bad_warmup_file_fails_that_version_only(tmp_path, content, code, fragment):
    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    broken = install_version(template(V2_BIAS), base, 2)
    if content is None:
        write_warmup_file(broken, [("nope", {"image_bytes": np.array([b"x"], dtype=object)})])
    elif content == "wrong_input":
        write_warmup_file(broken, [("serving_default", {"pixels": np.zeros((1, 2), np.float32)})])
    elif content == "bad_image":
        write_warmup_file(broken, [("serving_default", {"image_bytes": np.array([b"not an image"], dtype=object)})])
    else:
        (broken / "assets.extra").mkdir()
        (broken / "assets.extra" / "tf_serving_warmup_requests").write_bytes(content)
    app = build_app(ServerOptions(model_base_path=base, file_system_poll_wait_seconds=0))
    try:
        by_version = {entry["version"]: entry for entry in status(app)}
        assert by_version["1"]["state"] == "AVAILABLE"  # the previous version keeps serving
        assert by_version["2"]["state"] == "END"
        assert by_version["2"]["status"]["error_code"] == code
        message = by_version["2"]["status"]["error_message"]
        assert "warmup" in message.lower() and fragment in message
        assert app.registry.get("my_model").loaded_versions() == [1]
    finally:
        app.close()


def _session_file(tmp_path, text: str):
    path = tmp_path / "session.config"
    path.write_text(text)
    return path


def test_session_config_parses_like_the_real_binary(tmp_path):
    settings = parse_session_config(
        _session_file(
            tmp_path,
            """
        intra_op_parallelism_threads: 3
        inter_op_parallelism_threads: 2
        graph_options { rewrite_options { auto_mixed_precision_onednn_bfloat16: ON auto_mixed_precision: OFF } }
    """,
        )
    )
    assert (settings.intra_op_threads, settings.inter_op_threads) == (3, 2)
    assert (settings.bf16_toggle, settings.fp16_toggle) == ("ON", "OFF")
    with pytest.raises(ValueError, match="Invalid protobuf file"):
        parse_session_config(_session_file(tmp_path, "graph_options { no_such_field: 1 }"))


BF16_CPU = {"flags": {"avx512_bf16", "avx512f"}, "environ": {}, "gpus": []}
AVX2_CPU = {"flags": {"avx2", "fma"}, "environ": {}, "gpus": []}


@pytest.mark.parametrize(
    "request_, session, host, mode",
    [
        ("auto", None, BF16_CPU, "bf16"),
        ("auto", None, AVX2_CPU, "off"),
        ("auto", SessionSettings(bf16_toggle="OFF", source="s.config"), BF16_CPU, "off"),  # the file wins
        ("on", SessionSettings(bf16_toggle="OFF", source="s.config"), BF16_CPU, "off"),
        ("off", SessionSettings(bf16_toggle="ON", source="s.config"), AVX2_CPU, "bf16"),  # as the real binary would
        ("auto", SessionSettings(fp16_toggle="ON", source="s.config"), AVX2_CPU, "fp16"),
        ("auto", SessionSettings(source="s.config"), BF16_CPU, "bf16"),  # DEFAULT toggles leave our decision
        ("auto", None, {"flags": {"avx512_bf16"}, "environ": {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "gpus": []}, "off"),
    ],
)
def test_rewrite_decision_session_toggles_win(request_, session, host, mode):
    decision = rewrite_decision(request_, session, **host)
    assert isinstance(decision, RewriteDecision)
    assert decision.mode == mode
    if session is not None and (session.bf16_toggle != "DEFAULT" or session.fp16_toggle != "DEFAULT"):
        assert "s.config" in decision.reason


def test_start_line_names_versions_and_rewrite_decision(model_base):
    app = build_app(
        ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0, mixed_precision_rewrite="off")
    )
    try:
        assert app.rewrite == RewriteDecision("off", "switched off by request")
        # No warm-up file: nothing to measure memory with, so the fallback execution size.
        assert start_line(app) == [
            f"Serving model my_model versions [1] from {model_base}; "
            "mixed-precision rewrite off (switched off by request)",
            "Model my_model version 1: at most 16 images per model call; at most 2048 images in flight",
        ]
    finally:
        app.close()
