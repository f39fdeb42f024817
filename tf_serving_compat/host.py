"""What this host computes fast, and TensorFlow's auto-mixed-precision rewrite to match.

An exported float32 graph runs on every CPU and GPU. Where the host has fast low-precision
units, Grappler's auto-mixed-precision pass rewrites that graph at load time:
``auto_mixed_precision_onednn_bfloat16`` on CPUs with AVX512_BF16/AMX, ``auto_mixed_precision``
(float16) on GPUs with compute capability >= 7.0. The bf16 pass must never run on a CPU
without bf16 units: oneDNN then emulates bf16 (about 2.7x slower than float32 on AVX-512)
or fails outright (AVX2: "could not create a primitive descriptor").

oneDNN's ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps the instruction set
oneDNN uses; it is honoured here, so ``ONEDNN_MAX_CPU_ISA=AVX2`` simulates an AVX2-only host.
Nothing here imports TensorFlow at module import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

RewriteRequest = Literal["auto", "on", "off"]
REWRITE_REQUESTS = ("auto", "on", "off")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA names from the oldest to the newest; bf16 compute needs AVX512_CORE_BF16 or later.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")
_FIRST_BF16_ISA = ONEDNN_ISAS.index("AVX512_CORE_BF16")
GRAPPLER_OPTION = {"bf16": "auto_mixed_precision_onednn_bfloat16", "fp16": "auto_mixed_precision"}


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
    environ = os.environ if environ is None else environ
    value = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def onednn_enabled(environ: dict[str, str] | None = None) -> bool:
    """TensorFlow's oneDNN ops are on unless ``TF_ENABLE_ONEDNN_OPTS`` says 0/false."""
    environ = os.environ if environ is None else environ
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false", "off", "no")


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
    """Compute capability of each visible GPU (None where TensorFlow cannot tell); imports TF."""
    import tensorflow as tf

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        except Exception:  # noqa: BLE001 - details are best effort; unknown means "no fast fp16"
            capability = None
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


@dataclass(frozen=True)
class RewriteDecision:
    """Which auto-mixed-precision pass to switch on (``mode``: bf16, fp16 or off) and why."""

    mode: Literal["bf16", "fp16", "off"]
    reason: str

    @property
    def grappler_option(self) -> str | None:
        return GRAPPLER_OPTION.get(self.mode)

    def describe(self) -> str:
        if self.mode == "off":
            return f"mixed-precision rewrite off ({self.reason})"
        return f"mixed-precision rewrite {self.mode} ({self.grappler_option}; {self.reason})"


def decide_rewrite(request: str = "auto", *, gpus: list[tuple[int, int] | None] | None = None,
                   flags: set[str] | None = None, environ: dict[str, str] | None = None) -> RewriteDecision:
    """Pick the rewrite for this host.

    ``auto``: fp16 on a GPU with compute capability >= 7.0, else bf16 on a bf16-capable CPU, else off.
    ``on``: the host's kind (fp16 with any GPU, bf16 otherwise) even where detection says no.
    ``off``: never. ``gpus`` defaults to asking TensorFlow (only when the request is not ``off``).
    """
    if request not in REWRITE_REQUESTS:
        raise ValueError(f"mixed-precision rewrite {request!r}: expected one of {', '.join(REWRITE_REQUESTS)}")
    if request == "off":
        return RewriteDecision("off", "switched off by request")
    gpus = gpu_compute_capabilities() if gpus is None else gpus
    if gpus:
        fast = [cc for cc in gpus if cc is not None and tuple(cc) >= (7, 0)]
        if fast or request == "on":
            return RewriteDecision("fp16", f"GPU compute capability {fast[0] if fast else 'unknown'}"
                                   + ("" if fast else ", forced on"))
        return RewriteDecision("off", f"GPU compute capability {gpus[0]} < 7.0")
    capable, why = cpu_bf16_reason(flags, environ)
    if capable:
        return RewriteDecision("bf16", why)
    if request == "on":
        return RewriteDecision("bf16", f"forced on although {why}")
    return RewriteDecision("off", why)


def apply_rewrite(decision: RewriteDecision) -> None:
    """Switch the decided pass on (and the others off) for graphs TensorFlow builds from now on."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options(
        {option: decision.grappler_option == option for option in GRAPPLER_OPTION.values()})
    log.info("%s", decision.describe())


def configure_rewrite(request: str = "auto") -> RewriteDecision:
    """Decide for this host and apply; returns the decision (for start lines and run records)."""
    decision = decide_rewrite(request)
    apply_rewrite(decision)
    return decision
