"""Mixed precision that follows the hardware.

float16 only pays off on GPUs with tensor cores (compute capability >= 7.0);
bfloat16 pays off on CPUs with AVX512_BF16 / AMX. Everything else stays float32.
Nothing here runs at import; the global Keras policy is only changed on request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hostinfo import (
    CPU_BF16_FLAGS,
    RewriteDecision,
    configure_rewrite,
    cpu_bf16_reason,
    cpu_flags,
    gpu_compute_capabilities,
)

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def detect_hardware() -> dict[str, Any]:
    """Describe the accelerators relevant to the precision choice.

    Returns ``{"gpus": [{"name", "compute_capability"}], "cpu_bf16": bool, "cpu_flags": [...],
    "cpu_bf16_reason": str}``. ``cpu_bf16`` honours oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``), so a
    host simulated as AVX2-only never trains in bf16.
    """
    # TensorFlow only when asked: importing this module must stay TensorFlow-free (test_precision).
    import tensorflow as tf  # noqa: PLC0415

    gpus = [
        {"name": device.name, "compute_capability": capability}
        for device, capability in zip(tf.config.list_physical_devices("GPU"), gpu_compute_capabilities(), strict=False)
    ]
    flags = cpu_flags()
    capable, reason = cpu_bf16_reason(flags)
    return {
        "gpus": gpus,
        "cpu_bf16": capable,
        "cpu_flags": sorted(f for f in flags if f in CPU_BF16_FLAGS),
        "cpu_bf16_reason": reason,
    }


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
    if hardware.get("cpu_bf16"):
        return "mixed_bfloat16"
    return "float32"


def _check(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown precision policy {policy!r}; expected one of {', '.join(POLICIES)}")


def set_precision(policy: str) -> str:
    """Set the global Keras policy (entry points only); returns the previous policy name."""
    _check(policy)
    # Keras only when a policy is set: importing this module must stay TensorFlow-free.
    import keras  # noqa: PLC0415

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    return previous


@contextlib.contextmanager
def use_precision(policy: str) -> Iterator[str]:
    """Run a block under ``policy`` and restore the previous global policy afterwards."""
    _check(policy)
    # Keras only when a policy is set: importing this module must stay TensorFlow-free.
    import keras  # noqa: PLC0415

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def configure_inference(request: str = "auto") -> RewriteDecision:
    """Switch on the host's auto-mixed-precision rewrite for in-process inference; returns the decision.

    Call before the first model call of the process: graphs already optimised keep their precision.
    """
    return configure_rewrite(request)
