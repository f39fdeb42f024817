"""Precision policy: auto follows the hardware, explicit names pass, the global policy is restored."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vinted_classifier import precision as P

GPU_AMPERE = {"gpus": [{"name": "/physical_device:GPU:0", "compute_capability": (8, 0)}], "cpu_bf16": True}
GPU_PASCAL = {"gpus": [{"name": "/physical_device:GPU:0", "compute_capability": (6, 1)}], "cpu_bf16": True}
CPU_BF16 = {"gpus": [], "cpu_bf16": True, "cpu_flags": ["amx_bf16", "avx512_bf16"]}
CPU_PLAIN = {"gpus": [], "cpu_bf16": False, "cpu_flags": []}


pytestmark = pytest.mark.usefixtures("reset_policy")  # tests/conftest.py


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (GPU_AMPERE, "mixed_float16"),
        (GPU_PASCAL, "float32"),
        (CPU_BF16, "mixed_bfloat16"),
        # bf16 units present but oneDNN capped below them (ONEDNN_MAX_CPU_ISA=AVX2): no bf16 training
        ({"gpus": [], "cpu_bf16": False, "cpu_flags": ["amx_bf16"]}, "float32"),
        (CPU_PLAIN, "float32"),
        ({}, "float32"),
    ],
)
def test_auto_follows_hardware(hardware, expected):
    assert P.resolve_precision("auto", hardware) == expected


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_passes_through(name):
    assert P.resolve_precision(name, CPU_PLAIN) == name


def test_bad_name_errors():
    with pytest.raises(ValueError, match=r"unknown precision 'float16'.*mixed_bfloat16"):
        P.resolve_precision("float16", CPU_PLAIN)
    with pytest.raises(ValueError, match="unknown precision policy 'bf16'"):
        with P.use_precision("bf16"):
            pass


def test_detect_hardware_honours_the_onednn_isa_cap():

    code = (
        "import json; from vinted_classifier.precision import detect_hardware as d, resolve_precision as r;"
        "h = d(); print(json.dumps([h['cpu_bf16'], h['cpu_bf16_reason'], r('auto', h)]))"
    )
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    capable, reason, policy = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert capable is False and policy == "float32"
    assert "AVX2" in reason or "no AVX512_BF16" in reason


def test_use_precision_restores_even_on_error():
    # Keras only in the tests that set a policy: the module's import test must see it absent.
    import keras  # noqa: PLC0415

    keras.mixed_precision.set_global_policy("float32")
    with P.use_precision("mixed_bfloat16") as policy:
        assert policy == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError, match="boom"):
        with P.use_precision("mixed_float16"):
            raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_set_precision_returns_previous():
    # Keras only in the tests that set a policy: the module's import test must see it absent.
    import keras  # noqa: PLC0415

    assert P.set_precision("mixed_bfloat16") == "float32"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert P.set_precision("float32") == "mixed_bfloat16"


def test_import_sets_no_policy():

    code = (
        "import sys, vinted_classifier.precision, vinted_classifier.model, vinted_classifier.weights;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
