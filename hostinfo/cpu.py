"""What this host computes fast: CPU feature flags, oneDNN's ISA cap, GPU compute capabilities.

oneDNN's ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps the instruction set
oneDNN uses; it is honoured here, so ``ONEDNN_MAX_CPU_ISA=AVX2`` simulates an AVX2-only host.
Only ``gpu_compute_capabilities`` imports TensorFlow, when called.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA names from the oldest to the newest; bf16 compute needs AVX512_CORE_BF16 or later.
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
)
_FIRST_BF16_ISA = ONEDNN_ISAS.index("AVX512_CORE_BF16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def onednn_isa_cap(environ: dict[str, str] | None = None) -> str | None:
    """The ISA oneDNN is capped at by the environment, upper-cased; None when uncapped."""
    env = os.environ if environ is None else environ
    value = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def onednn_enabled(environ: dict[str, str] | None = None) -> bool:
    """TensorFlow's oneDNN ops are on unless ``TF_ENABLE_ONEDNN_OPTS`` says 0/false."""
    env = os.environ if environ is None else environ
    return env.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false", "off", "no")


def cpu_bf16_reason(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """(whether oneDNN computes bf16 natively on this CPU, why)."""
    flags = cpu_flags() if flags is None else flags
    native = sorted(flag for flag in CPU_BF16_FLAGS if flag in flags)
    if not native:
        return False, "CPU has no AVX512_BF16/AMX"
    if not onednn_enabled(environ):
        return False, "oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0)"
    cap = onednn_isa_cap(environ)
    if cap is not None:
        if cap not in ONEDNN_ISAS:
            return False, f"unknown ONEDNN_MAX_CPU_ISA={cap}"
        if ONEDNN_ISAS.index(cap) < _FIRST_BF16_ISA:
            return False, f"ONEDNN_MAX_CPU_ISA={cap} excludes bf16"
    return True, f"CPU has {'+'.join(native)}" + (f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else "")


def gpu_compute_capabilities() -> list[tuple[int, int] | None]:
    """Compute capability of each visible GPU (None where TensorFlow cannot tell)."""
    # TensorFlow is imported only when a caller asks about GPUs: importing hostinfo stays cheap.
    import tensorflow as tf  # noqa: PLC0415

    capabilities: list[tuple[int, int] | None] = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        except Exception:  # noqa: BLE001 - details are best effort; unknown means "no fast fp16"
            capability = None
        capabilities.append((int(capability[0]), int(capability[1])) if capability else None)
    return capabilities
