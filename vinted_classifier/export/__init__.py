"""Versioned SavedModel export that TensorFlow Serving (real or ours) loads unchanged, on any host.

Signatures (all outputs batch-first, float32/int64/string — never float16):

``serving_default(image_bytes: string[-1])``
    Encoded JPEG/PNG bytes; decoded, resized (aspect kept, padded) and normalised in-graph
    with the same function as training (``pipeline.decode_and_resize``).
``serving_pixels(input_image: float32[-1, h, w, 3])``
    Pixels in [0, 1] of any size (the seed solution's request format); resized in-graph.

Outputs: ``<category_output>`` (e.g. ``cc3``) probabilities, ``tags`` probabilities,
``top2_codes`` int64 [-1, 2], ``top2_names`` string [-1, 2], ``tag_flags`` int64 [-1, T]
at the tuned thresholds. Vocabulary and thresholds are graph constants, and also
``assets/labels.json``.

Precision: the graph computes in ``export.precision`` (float32 by default), whatever policy
trained the model. A float32 graph runs on every CPU and GPU; the host's fast low-precision
units are used at load time by the auto-mixed-precision rewrite (``tf_serving_compat.host``,
and the session config files of ``serving_files``). A bfloat16 graph fails on AVX2-only CPUs and
crawls on AVX-512 without bf16, so it is only for fleets known to have AVX512_BF16/AMX.

A version folder holds, besides the SavedModel:

``assets/labels.json``, ``assets/export.json``   vocabulary/thresholds; precision and provenance
``assets.extra/tf_serving_warmup_requests``        PredictionLog records replayed before AVAILABLE (generated images)
``assets.extra/{config.yaml,run.json,metrics.json}``  the run it came from
``assets.extra/reference_stats.json``              held-out prediction/input statistics (docs/monitoring.md)

A version is written to a hidden temporary folder and renamed into place in one step,
so a server polling the base path never sees a half-written version.

Modules: ``rebuild`` (the model under the export precision), ``serving_module`` (the tf.Module
and its signatures), ``warmup`` (the warm-up records), ``versioned`` (numbered atomic versions,
a run's export), ``graph`` (the dtypes a saved graph computes in).
"""

from __future__ import annotations

from ..contract import WARMUP_FILE
from .graph import COMPUTE_OPS, compute_op_dtypes
from .rebuild import PRECISION_POLICIES, compute_precision, copy_weights, model_in_precision
from .serving_module import build_serving_module, save_serving_module
from .versioned import (
    PROVENANCE_FILES,
    existing_versions,
    export_run,
    export_saved_model,
    next_version,
    read_export_info,
)
from .warmup import (
    WARMUP_BATCH_SIZES,
    WARMUP_IMAGES,
    read_warmup_file,
    synthetic_images,
    synthetic_jpeg,
    warmup_records,
    write_warmup_file,
)

__all__ = [
    "COMPUTE_OPS",
    "PRECISION_POLICIES",
    "PROVENANCE_FILES",
    "WARMUP_BATCH_SIZES",
    "WARMUP_FILE",
    "WARMUP_IMAGES",
    "build_serving_module",
    "compute_op_dtypes",
    "compute_precision",
    "copy_weights",
    "existing_versions",
    "export_run",
    "export_saved_model",
    "model_in_precision",
    "next_version",
    "read_export_info",
    "read_warmup_file",
    "save_serving_module",
    "synthetic_images",
    "synthetic_jpeg",
    "warmup_records",
    "write_warmup_file",
]
