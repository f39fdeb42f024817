"""The serving host's mixed-precision rewrite: bf16 only where oneDNN really has bf16 units."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hostinfo as host

BF16_CPU = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
AVX512_CPU = {"fpu", "avx2", "avx512f", "avx512bw"}


def test_cpu_flags_parsing(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: sse\n")
    assert host.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16", "amx_tile", "sse"}
    assert host.cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, "bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "off"),  # AVX-512 without bf16: emulated bf16 is 2.7x slower
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "off"),  # bf16 convolutions fail outright
        ({"DNNL_MAX_CPU_ISA": "AVX2"}, "off"),  # oneDNN's older variable name
        ({"ONEDNN_MAX_CPU_ISA": "AVX9000"}, "off"),  # unknown cap: never guess bf16
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "off"),
    ],
)
def test_bf16_cpu_rewrite_follows_the_onednn_isa_cap(environ, expected):
    decision = host.decide_rewrite("auto", gpus=[], flags=BF16_CPU, environ=environ)
    assert decision.mode == expected, decision
    assert decision.grappler_option == ({"bf16": "auto_mixed_precision_onednn_bfloat16"}.get(expected))


def test_cpu_without_bf16_units_never_gets_the_rewrite():
    decision = host.decide_rewrite("auto", gpus=[], flags=AVX512_CPU, environ={})
    assert (decision.mode, decision.reason) == ("off", "CPU has no AVX512_BF16/AMX")
    forced = host.decide_rewrite("on", gpus=[], flags=AVX512_CPU, environ={})
    assert forced.mode == "bf16" and forced.reason.startswith("forced on although")
    assert host.decide_rewrite("off", gpus=[], flags=BF16_CPU, environ={}).mode == "off"


@pytest.mark.parametrize(
    ("gpus", "request_", "expected"),
    [
        ([(8, 0)], "auto", "fp16"),
        ([(6, 1)], "auto", "off"),  # Pascal: no tensor cores, float16 is no faster
        ([(6, 1)], "on", "fp16"),
        ([None], "auto", "off"),
        ([(6, 1), (7, 5)], "auto", "fp16"),
    ],
)
def test_gpu_rewrite_needs_compute_capability_7(gpus, request_, expected):
    # A GPU host decides on the GPU even where the CPU has bf16 units.
    assert host.decide_rewrite(request_, gpus=gpus, flags=BF16_CPU, environ={}).mode == expected


def test_unknown_request_is_named():
    with pytest.raises(ValueError, match="'bf16'.*auto, on, off"):
        host.decide_rewrite("bf16", gpus=[])


def test_describe_names_the_grappler_option():
    decision = host.RewriteDecision("bf16", "CPU has amx_bf16")
    assert decision.describe() == (
        "mixed-precision rewrite bf16 (auto_mixed_precision_onednn_bfloat16; CPU has amx_bf16)"
    )


def test_apply_in_a_capped_process_leaves_every_rewrite_off():
    """In a process simulated as AVX2-only, auto switches nothing on, even on a bf16 machine."""
    code = (
        "import json, tensorflow as tf; from hostinfo import configure_rewrite;"
        "d = configure_rewrite('auto'); o = tf.config.optimizer.get_experimental_options();"
        "print(json.dumps([d.mode, o.get('auto_mixed_precision_onednn_bfloat16'), o.get('auto_mixed_precision')]))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["off", False, False]


def test_hostinfo_imports_nothing_heavy_nor_the_server_or_the_project():
    """Training and serving both import hostinfo: importing it must not load TensorFlow or either side."""
    code = (
        "import sys, hostinfo; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'tf_serving_compat', 'vinted_classifier', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
