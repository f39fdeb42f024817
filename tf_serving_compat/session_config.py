"""``--tensorflow_session_config_file``: thread pools and rewrite toggles, and the rewrite they leave.

The real binary applies the ConfigProto's rewrite toggles as written; we do the same: ON
forces that pass, OFF switches it off, DEFAULT leaves our host-aware decision (``hostinfo``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hostinfo import RewriteDecision, decide_rewrite


@dataclass(frozen=True)
class SessionSettings:
    """What we take from ``--tensorflow_session_config_file``."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    bf16_toggle: str = "DEFAULT"  # graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16
    fp16_toggle: str = "DEFAULT"  # graph_options.rewrite_options.auto_mixed_precision
    source: str = ""


def parse_session_config(path: str | os.PathLike[str]) -> SessionSettings:
    """Parse a text ``ConfigProto`` as the real binary does (invalid file: ValueError)."""
    # The protos come with TensorFlow: loaded only when a session config file is given.
    from google.protobuf import text_format  # noqa: PLC0415
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2  # noqa: PLC0415

    message = config_pb2.ConfigProto()
    try:
        text_format.Parse(Path(path).read_text(), message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid protobuf file: '{path}': {exc}") from None
    rewrite = message.graph_options.rewrite_options
    toggle = rewriter_config_pb2.RewriterConfig.Toggle.Name
    return SessionSettings(
        message.intra_op_parallelism_threads,
        message.inter_op_parallelism_threads,
        toggle(rewrite.auto_mixed_precision_onednn_bfloat16),
        toggle(rewrite.auto_mixed_precision),
        str(path),
    )


_TOGGLE_ON = ("ON", "AGGRESSIVE", "EXPERIMENTAL_MLIR", "EXPERIMENTAL_BOTH")


def rewrite_decision(
    request: str = "auto",
    session: SessionSettings | None = None,
    *,
    gpus: list[tuple[int, int] | None] | None = None,
    flags: set[str] | None = None,
    environ: dict[str, str] | None = None,
) -> RewriteDecision:
    """Our ``--mixed_precision_rewrite`` decision, overridden by explicit session-config toggles.

    ``gpus``, ``flags`` and ``environ`` go to ``hostinfo.decide_rewrite`` (tests inject them).
    """
    if session is not None:
        where = Path(session.source).name or "session config"
        if session.bf16_toggle in _TOGGLE_ON:
            return RewriteDecision("bf16", f"{where}: auto_mixed_precision_onednn_bfloat16 {session.bf16_toggle}")
        if session.fp16_toggle in _TOGGLE_ON:
            return RewriteDecision("fp16", f"{where}: auto_mixed_precision {session.fp16_toggle}")
    decision = decide_rewrite(request, gpus=gpus, flags=flags, environ=environ)
    if session is not None:
        where = Path(session.source).name or "session config"
        switched_off = {"bf16": session.bf16_toggle == "OFF", "fp16": session.fp16_toggle == "OFF"}
        if switched_off.get(decision.mode):
            return RewriteDecision("off", f"{where} switches {decision.grappler_option} OFF")
    return decision
