"""TensorFlow's auto-mixed-precision rewrite that suits this host, decided and applied.

An exported float32 graph runs on every CPU and GPU. Where the host has fast low-precision
units, Grappler's auto-mixed-precision pass rewrites that graph at load time:
``auto_mixed_precision_onednn_bfloat16`` on CPUs with AVX512_BF16/AMX, ``auto_mixed_precision``
(float16) on GPUs with compute capability >= 7.0. The bf16 pass must never run on a CPU
without bf16 units: oneDNN then emulates bf16 (about 2.7x slower than float32 on AVX-512)
or fails outright (AVX2: "could not create a primitive descriptor").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from .cpu import cpu_bf16_reason, gpu_compute_capabilities

log = logging.getLogger(__name__)

REWRITE_REQUESTS = ("auto", "on", "off")
GRAPPLER_OPTION = {"bf16": "auto_mixed_precision_onednn_bfloat16", "fp16": "auto_mixed_precision"}


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


def decide_rewrite(
    request: str = "auto",
    *,
    gpus: list[tuple[int, int] | None] | None = None,
    flags: set[str] | None = None,
    environ: dict[str, str] | None = None,
) -> RewriteDecision:
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
            return RewriteDecision(
                "fp16", f"GPU compute capability {fast[0] if fast else 'unknown'}" + ("" if fast else ", forced on")
            )
        return RewriteDecision("off", f"GPU compute capability {gpus[0]} < 7.0")
    capable, why = cpu_bf16_reason(flags, environ)
    if capable:
        return RewriteDecision("bf16", why)
    if request == "on":
        return RewriteDecision("bf16", f"forced on although {why}")
    return RewriteDecision("off", why)


def apply_rewrite(decision: RewriteDecision) -> None:
    """Switch the decided pass on (and the others off) for graphs TensorFlow builds from now on."""
    # TensorFlow is imported only when a rewrite is applied: importing hostinfo stays cheap.
    import tensorflow as tf  # noqa: PLC0415

    tf.config.optimizer.set_experimental_options(
        {option: decision.grappler_option == option for option in GRAPPLER_OPTION.values()}
    )
    log.info("%s", decision.describe())


def configure_rewrite(request: str = "auto") -> RewriteDecision:
    """Decide for this host and apply; returns the decision (for start lines and run records)."""
    decision = decide_rewrite(request)
    apply_rewrite(decision)
    return decision
