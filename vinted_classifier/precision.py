"""Mixed precision that follows the hardware.

float16 only pays off on GPUs with tensor cores (compute capability >= 7.0);
bfloat16 pays off on CPUs with AVX512_BF16 / AMX. Everything else stays float32.
Nothing here runs at import; the global Keras policy is only changed on request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
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


def _gpu_compute_capability(device: Any) -> tuple[int, int] | None:
    import tensorflow as tf

    try:
        details = tf.config.experimental.get_device_details(device)
    except Exception:  # noqa: BLE001 - details are best effort, a missing one means "unknown"
        return None
    capability = details.get("compute_capability")
    return tuple(capability) if capability else None


def detect_hardware() -> dict[str, Any]:
    """Describe the accelerators relevant to the precision choice.

    Returns ``{"gpus": [{"name", "compute_capability"}], "cpu_bf16": bool, "cpu_flags": [...]}``.
    """
    import tensorflow as tf

    gpus = [
        {"name": device.name, "compute_capability": _gpu_compute_capability(device)}
        for device in tf.config.list_physical_devices("GPU")
    ]
    flags = _cpu_flags()
    relevant = sorted(flag for flag in flags if flag in _CPU_BF16_FLAGS)
    return {"gpus": gpus, "cpu_bf16": bool(relevant), "cpu_flags": relevant}


def resolve_precision(requested: str, hardware: dict[str, Any] | None = None) -> str:
    """Pick the Keras policy name: explicit names pass through, ``auto`` looks at the hardware."""
    if requested in POLICIES:
        return requested
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}; expected auto or one of {', '.join(POLICIES)}")
    hardware = detect_hardware() if hardware is None else hardware
    for gpu in hardware.get("gpus", []):
        capability = gpu.get("compute_capability")
        if capability is not None and tuple(capability) >= (7, 0):
            return "mixed_float16"
    if hardware.get("gpus"):
        return "float32"  # an older GPU does the work; bf16 CPU flags are irrelevant then
    if hardware.get("cpu_bf16") or any(f in _CPU_BF16_FLAGS for f in hardware.get("cpu_flags", [])):
        return "mixed_bfloat16"
    return "float32"


def _check(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown precision policy {policy!r}; expected one of {', '.join(POLICIES)}")


def set_precision(policy: str) -> str:
    """Set the global Keras policy (entry points only); returns the previous policy name."""
    _check(policy)
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    return previous


@contextlib.contextmanager
def use_precision(policy: str) -> Iterator[str]:
    """Run a block under ``policy`` and restore the previous global policy afterwards."""
    _check(policy)
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
