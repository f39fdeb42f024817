"""What this host computes fast, and the mixed-precision rewrite to match (training and serving share it).

``cpu``: CPU flags, oneDNN's ISA cap, GPU compute capabilities. ``rewrite``: Grappler's
auto-mixed-precision decision (``decide_rewrite``) and its application (``apply_rewrite``).
Importing this package imports nothing heavy: TensorFlow is loaded only to ask about GPUs or
to apply a rewrite.
"""

from __future__ import annotations

from .cpu import (
    CPU_BF16_FLAGS,
    ONEDNN_ISAS,
    cpu_bf16_reason,
    cpu_flags,
    gpu_compute_capabilities,
    onednn_enabled,
    onednn_isa_cap,
)
from .rewrite import (
    GRAPPLER_OPTION,
    REWRITE_REQUESTS,
    RewriteDecision,
    apply_rewrite,
    configure_rewrite,
    decide_rewrite,
)

__all__ = [
    "CPU_BF16_FLAGS",
    "GRAPPLER_OPTION",
    "ONEDNN_ISAS",
    "REWRITE_REQUESTS",
    "RewriteDecision",
    "apply_rewrite",
    "configure_rewrite",
    "cpu_bf16_reason",
    "cpu_flags",
    "decide_rewrite",
    "gpu_compute_capabilities",
    "onednn_enabled",
    "onednn_isa_cap",
]
