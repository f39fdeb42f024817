"""The portable export: a float32 graph that runs on every CPU, warm-up, provenance, serving files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from helpers import tiny_config, write_tiny_dataset
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow_serving.config import model_server_config_pb2

from hostinfo import RewriteDecision, decide_rewrite
from tf_serving_compat.batching import parse_batching_parameters
from tf_serving_compat.monitoring import parse_monitoring_config
from vinted_classifier import data, export, pipeline
from vinted_classifier.cli import main
from vinted_classifier.model import build_model
from vinted_classifier.precision import use_precision
from vinted_classifier.runs import load_run, predict_probabilities
from vinted_classifier.serving_files import SESSION_FILES, real_server_args, write_serving_config
from vinted_classifier.train import train

PREDICT_SCRIPT = r"""
import json, sys
import tensorflow as tf
from hostinfo import configure_rewrite
decision = configure_rewrite("auto")
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures["serving_default"](image_bytes=tf.constant([open(f, "rb").read() for f in json.loads(sys.argv[2])]))
print(json.dumps({"rewrite": decision.mode, "cc3": out["cc3"].numpy().tolist(), "tags": out["tags"].numpy().tolist()}))
"""  # noqa: E501


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    dataset = write_tiny_dataset(root / "tiny", n_test=4)
    cfg = tiny_config(dataset, root / "runs")
    return cfg, train(cfg).run_dir


@pytest.fixture(scope="module")
def bf16_trained_model(trained):
    """The trained weights in a model built under mixed_bfloat16, as a bf16 training host makes it.

    (This project's CI machine may lack bf16 units, so the model is built, never run, in bf16.)
    """
    cfg, run_dir = trained
    _, labels, model = load_run(run_dir)
    with use_precision("mixed_bfloat16"):
        bf16 = build_model(cfg.model.model_copy(update={"weights": "none"}), labels.categories, labels.tags).model
    export.copy_weights(model, bf16)
    assert export.compute_precision(bf16) == "bfloat16"
    return bf16


def test_a_bf16_trained_model_exports_a_float32_graph_that_runs_on_every_isa(trained, bf16_trained_model, tmp_path):
    cfg, run_dir = trained
    _, labels, model = load_run(run_dir)
    version = export.export_saved_model(bf16_trained_model, labels, tmp_path, "m", model_cfg=cfg.model)
    assert export.compute_op_dtypes(version) == {"Conv2D": {"float32"}, "MatMul": {"float32"}}
    assert export.read_export_info(version)["precision"] == "float32"
    assert export.read_export_info(version)["trained_compute_dtype"] == "bfloat16"
    files = data.prepare(cfg.data, cfg.seed).paths("holdout")[:3]
    p_cat, p_tags = predict_probabilities(
        model, pipeline.make_dataset(files, image_size=labels.image_size, batch_size=4), "cc3"
    )
    for isa in ("AVX2", "AVX512_CORE", None):
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        env.update(
            {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
        )
        proc = subprocess.run(
            [sys.executable, "-c", PREDICT_SCRIPT, str(version), json.dumps(files)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, (isa, proc.stderr[-2000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if isa is not None:
            assert out["rewrite"] == "off", isa  # capped below bf16: the rewrite must stay off
        else:
            # uncapped (and no GPU): bf16 exactly where the CPU has it
            assert out["rewrite"] == decide_rewrite("auto", gpus=[], environ=env).mode
        # Same float32 weights and graph as the in-process model; kernels may differ per ISA. Where the
        # host's bf16 rewrite ran, the probabilities carry bf16 rounding (8-bit mantissa: ~0.4% relative).
        atol = 1e-5 if out["rewrite"] == "off" else 1e-2
        np.testing.assert_allclose(out["cc3"], p_cat, atol=atol, err_msg=str(isa))
        np.testing.assert_allclose(out["tags"], p_tags, atol=atol, err_msg=str(isa))


def test_bfloat16_export_holds_bf16_convolutions(trained, tmp_path):
    cfg, run_dir = trained
    _, labels, model = load_run(run_dir)
    version = export.export_saved_model(model, labels, tmp_path, "m", precision="bfloat16", model_cfg=cfg.model)
    dtypes = export.compute_op_dtypes(version)
    assert dtypes["Conv2D"] == {"bfloat16"}
    assert export.read_export_info(version)["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="needs its ModelConfig"):
        export.export_saved_model(model, labels, tmp_path, "m2", precision="float16")
    with pytest.raises(ValueError, match="'int8'"):
        export.export_saved_model(model, labels, tmp_path, "m3", precision="int8", model_cfg=cfg.model)
    assert not (tmp_path / "m3").exists() or not any((tmp_path / "m3").iterdir())


def _efficientnet(cfg, labels, policy: str, **changes):
    model_cfg = cfg.model.model_copy(update={"backbone": "efficientnet_b0", "weights": "none", **changes})
    with use_precision(policy):
        return model_cfg, build_model(model_cfg, labels.categories, labels.tags).model


def _layer_names(model) -> set[str]:
    return {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)}


def test_rebuilding_in_another_precision_copies_weights_despite_keras_auto_names(trained):
    """EfficientNet's auto-named layers get new names when built again in one process."""
    cfg, run_dir = trained
    _, labels, _ = load_run(run_dir)
    model_cfg, trained_model = _efficientnet(cfg, labels, "float32")
    rng = np.random.default_rng(0)
    for variable in trained_model.weights:  # distinct values, so a swapped pair would show
        variable.assign(rng.normal(size=variable.shape).astype(variable.dtype))
    bf16 = export.model_in_precision(trained_model, model_cfg, labels, "bfloat16")
    assert export.compute_precision(bf16) == "bfloat16"
    assert _layer_names(bf16) - _layer_names(trained_model), "the rebuild reused every name: case not covered"
    assert len(bf16.weights) == len(trained_model.weights)
    for copied, original in zip(bf16.weights, trained_model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(copied), np.asarray(original), err_msg=original.path)


def test_rebuilding_into_a_different_architecture_names_the_layer(trained):
    cfg, run_dir = trained
    _, labels, _ = load_run(run_dir)
    _, trained_model = _efficientnet(cfg, labels, "float32", dense_units=16)
    _, other = _efficientnet(cfg, labels, "mixed_bfloat16", dense_units=8)
    with pytest.raises(ValueError, match=r"layer 'head_dense' .*\(Dense, weight shapes .*\(\d+, 8\).*does not match"):
        export.copy_weights(trained_model, other)


def test_export_run_writes_warmup_provenance_and_serving_files(trained, tmp_path):
    cfg, run_dir = trained
    version = export.export_run(run_dir, tmp_path / "sm", "my_model")
    extra = version / "assets.extra"
    assert sorted(p.name for p in extra.iterdir()) == sorted(
        ["config.yaml", "metrics.json", "reference_stats.json", "run.json", export.WARMUP_FILE]
    )
    assert (extra / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    info = export.read_export_info(version)
    assert info["run_name"] == cfg.run_name and info["version"] == 1 and info["precision"] == "float32"

    records = export.read_warmup_file(extra / export.WARMUP_FILE)
    requests = [r.predict_log.request for r in records]
    assert [(q.model_spec.name, q.model_spec.signature_name) for q in requests] == [
        ("my_model", "serving_default")
    ] * len(export.WARMUP_BATCH_SIZES) + [("my_model", "serving_pixels")]
    loaded = tf.saved_model.load(str(version))
    dataset_images = {p.read_bytes() for p in cfg.data.images.glob("*.jpeg")}
    generated = set(export.synthetic_images(cfg.model.image_size))
    for request, batch in zip(requests, [*export.WARMUP_BATCH_SIZES, 1], strict=True):
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        if request.model_spec.signature_name == "serving_default":
            sent = set(inputs["image_bytes"].numpy().tolist())
            assert sent <= generated and not sent & dataset_images  # generated, never a (user's) photo
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["cc3"].shape == (batch, 3) and outputs["tag_flags"].shape == (batch, 3)

    config_dir = tmp_path / "sm" / "serving_config"
    assert sorted(p.name for p in config_dir.iterdir()) == sorted(
        ["models.config", "models.container.config", "batching.config", "monitoring.config", *SESSION_FILES.values()]
    )


def test_serving_files_parse_with_the_real_protos(tmp_path):
    folder = write_serving_config(tmp_path / "sm", "my_model")
    on = rewriter_config_pb2.RewriterConfig.ON
    sessions = {
        mode: text_format.Parse((folder / name).read_text(), config_pb2.ConfigProto())
        for mode, name in SESSION_FILES.items()
    }
    assert sessions["off"] == config_pb2.ConfigProto()
    assert sessions["bf16"].graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == on
    assert sessions["bf16"].graph_options.rewrite_options.auto_mixed_precision != on
    assert sessions["fp16"].graph_options.rewrite_options.auto_mixed_precision == on
    assert sessions["fp16"].gpu_options.allow_growth
    for name, base in [
        ("models.config", str((tmp_path / "sm" / "my_model").resolve())),
        ("models.container.config", "/models/my_model"),
    ]:
        config = text_format.Parse((folder / name).read_text(), model_server_config_pb2.ModelServerConfig())
        (model,) = config.model_config_list.config
        assert (model.name, model.base_path, model.model_platform) == ("my_model", base, "tensorflow")
    params = parse_batching_parameters((folder / "batching.config").read_text())
    assert (params.max_batch_size, params.batch_timeout_micros) == (32, 1000)
    assert max(export.WARMUP_BATCH_SIZES) == params.max_batch_size  # warm-up covers the full batch
    monitoring = parse_monitoring_config((folder / "monitoring.config").read_text())
    assert (monitoring.enable, monitoring.path) == (True, "/monitoring/prometheus/metrics")


@pytest.mark.parametrize("mode", ["off", "bf16", "fp16"])
def test_real_server_args_pick_the_session_file_of_the_decision(mode, tmp_path):
    args = real_server_args(tmp_path, RewriteDecision(mode, "test"), rest_port=9001, grpc_port=8501)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in args)
    assert flags["tensorflow_session_config_file"] == str(tmp_path.resolve() / SESSION_FILES[mode])
    assert (flags["rest_api_port"], flags["port"]) == ("9001", "8501")
    assert flags["model_config_file"] == str(tmp_path.resolve() / "models.config")
    assert flags["enable_batching"] == "true" and flags["enable_model_warmup"] == "true"


def test_cli_export_prints_precision_and_the_real_server_command(trained, tmp_path, capsys):
    cfg, _ = trained
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        cfg.model_copy(update={"export": cfg.export.model_copy(update={"saved_model_dir": tmp_path / "sm"})}).to_yaml()
    )
    # --direct: the served base path itself (plain `vinted export` stages a candidate for `vinted release`).
    assert main(["export", "--direct", "--config", str(config_file), "--set", "tracking.enabled=false"]) == 0
    out = capsys.readouterr().out
    assert "graph precision: float32 (trained computing in float32)" in out
    session_file = SESSION_FILES[decide_rewrite("auto").mode]
    assert f"--tensorflow_session_config_file={(tmp_path / 'sm' / 'serving_config' / session_file).resolve()}" in out
    assert (tmp_path / "sm" / "my_model" / "1" / "assets" / "export.json").is_file()
