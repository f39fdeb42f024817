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
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .pipeline import decode_and_resize, resize_pixels
from .runs import RunLabels

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"
WARMUP_FILE = "tf_serving_warmup_requests"
PROVENANCE_FILES = ("config.yaml", "run.json", "metrics.json")
# Keras policy that makes a graph compute in each export precision (variables stay float32).
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# Batch sizes replayed at warm-up for the bytes signature: one request, and a full batch of the
# batching config (each distinct batch shape is a separate oneDNN primitive to create).
WARMUP_BATCH_SIZES = (1, 32)
WARMUP_IMAGES = 8


def existing_versions(model_root: Path) -> list[int]:
    """Numeric version folders under a model's base path (others are ignored, like TF Serving)."""
    if not model_root.is_dir():
        return []
    return sorted(int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_root: Path) -> int:
    versions = existing_versions(model_root)
    return versions[-1] + 1 if versions else 1


# --------------------------------------------------------------------------- precision


def compute_precision(model) -> str:
    """The low-precision dtype a Keras model computes in (``bfloat16``/``float16``), else ``float32``."""
    dtypes = {layer.compute_dtype for layer in model._flatten_layers(include_self=False, recursive=True)}
    for name in ("bfloat16", "float16"):
        if name in dtypes:
            return name
    return "float32"


def copy_weights(source, target) -> None:
    """Copy a trained model's weights into the same architecture rebuilt (for another precision).

    At the top level, layers are matched by name: those names are ours, and the trained model
    may hold training-only layers (the augmenter) that the rebuilt one lacks. Inside nested
    models (feature extractor, backbone, head) layers are matched by position: both sides come
    from the same constructor, so their order agrees, while Keras's automatic names do not
    (EfficientNet's ``normalization`` is ``normalization_1`` when built a second time in one
    process). Every pair must agree on layer class and weight shapes.
    """
    import keras

    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise ValueError(f"layer {layer.name!r} of the rebuilt model has no counterpart in the trained model")
        _copy_layer(by_name[layer.name], layer, keras)


def _copy_layer(source, target, keras) -> None:
    if isinstance(target, keras.Model) and isinstance(source, keras.Model):
        _copy_nested(source, target, keras)  # layer by layer, so an error names the innermost layer
        return
    if type(source) is not type(target) or [w.shape for w in source.weights] != [w.shape for w in target.weights]:
        raise ValueError(f"layer {target.name!r} of the rebuilt model ({type(target).__name__}, weight shapes "
                         f"{[tuple(w.shape) for w in target.weights]}) does not match {source.name!r} of the trained "
                         f"model ({type(source).__name__}, {[tuple(w.shape) for w in source.weights]})")
    target.set_weights(source.get_weights())


def _copy_nested(source, target, keras) -> None:
    sources = [layer for layer in source.layers if layer.weights]
    targets = [layer for layer in target.layers if layer.weights]
    if len(sources) != len(targets):
        raise ValueError(f"nested model {target.name!r}: the rebuilt one has {len(targets)} layers with weights, "
                         f"the trained {source.name!r} has {len(sources)}")
    for source_layer, target_layer in zip(sources, targets):
        _copy_layer(source_layer, target_layer, keras)


def model_in_precision(model, model_cfg, labels: RunLabels, precision: str):
    """The same weights in a graph computing in ``precision`` (float32, bfloat16 or float16).

    The model is rebuilt from its config under the matching Keras policy (layers that the
    architecture pins to float32, like the outputs, stay float32), then its weights are copied.
    A model that already computes in ``precision`` is returned as it is.
    """
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"export precision {precision!r}: expected one of {', '.join(PRECISION_POLICIES)}")
    if compute_precision(model) == precision:
        return model
    if model_cfg is None:
        raise ValueError(f"the model computes in {compute_precision(model)}; exporting it as {precision} "
                         "needs its ModelConfig to rebuild it (pass model_cfg)")
    from .model import build_model
    from .precision import use_precision

    inference_cfg = model_cfg.model_copy(update={"weights": "none", "augment": False})
    with use_precision(PRECISION_POLICIES[precision]):
        rebuilt = build_model(inference_cfg, labels.categories, labels.tags, labels.category_output).model
    copy_weights(model, rebuilt)
    return rebuilt


# --------------------------------------------------------------------------- serving module


def _serving_outputs(model, labels: RunLabels, images):
    import tensorflow as tf

    outputs = model(images, training=False)
    category = tf.cast(outputs[labels.category_output], tf.float32)
    tags = tf.cast(outputs["tags"], tf.float32)
    top2 = tf.math.top_k(category, k=2).indices
    names = tf.gather(tf.constant(labels.categories), top2)
    thresholds = tf.constant(labels.thresholds, dtype=tf.float32)
    return {
        labels.category_output: category,
        "tags": tags,
        "top2_codes": tf.cast(top2, tf.int64),
        "top2_names": names,
        "tag_flags": tf.cast(tags >= thresholds, tf.int64),
    }


def build_serving_module(model, labels: RunLabels):
    """A ``tf.Module`` holding the model's variables and both serving functions.

    Plain ``tf.saved_model.save`` of this module stores each variable once. (Keras's
    ``ExportArchive`` in 3.15 stores every variable twice, under ``variables/N`` and
    ``_all_variables/N``, doubling the file and the RAM of every server that loads it:
    keras-team/keras#23553.)
    """
    import tensorflow as tf

    if len(labels.categories) < 2:
        raise ValueError("export needs at least 2 categories for the top-2 outputs")
    height, width = labels.image_size

    def from_bytes(image_bytes):
        images = tf.map_fn(lambda raw: decode_and_resize(raw, (height, width)), image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        return _serving_outputs(model, labels, images)

    def from_pixels(input_image):
        images = resize_pixels(tf.cast(input_image, tf.float32) * 255.0, (height, width))
        return _serving_outputs(model, labels, images)

    module = tf.Module()
    # Track what the functions capture, and only that: the weights plus the random layers' seed
    # states. (Tracking the model itself would also save its optimizer and metric variables.)
    module.model_variables = list(model.variables)
    module.serve_bytes = tf.function(
        from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    module.serve_pixels = tf.function(
        from_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="input_image")])
    return module


def save_serving_module(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={DEFAULT_SIGNATURE: module.serve_bytes,
                                                       PIXELS_SIGNATURE: module.serve_pixels})


# --------------------------------------------------------------------------- warm-up


def synthetic_jpeg(image_size: tuple[int, int], seed: int = 0) -> bytes:
    """A small garment-free JPEG (colour gradient + noise) for warm-up when no real photo is at hand."""
    from PIL import Image

    height, width = image_size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.broadcast_to(ramp, (height, width, 3)) + rng.normal(0, 20, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def warmup_records(model_name: str, labels: RunLabels, images: list[bytes]) -> list[bytes]:
    """Serialized ``PredictionLog`` records: each signature at the batch sizes servers will see.

    The format of TF Serving's SavedModel warm-up (``assets.extra/tf_serving_warmup_requests``):
    the real server and ours replay them before a version reports AVAILABLE, so the first user
    request does not pay for graph optimisation and kernel selection.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not images:
        raise ValueError("warm-up needs at least one encoded image")
    records = []

    def add(signature: str, name: str, value) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log_record.SerializeToString())

    for batch_size in WARMUP_BATCH_SIZES:
        batch = [images[i % len(images)] for i in range(batch_size)]
        add(DEFAULT_SIGNATURE, "image_bytes", np.array(batch, dtype=object))
    pixels = tf.io.decode_image(images[0], channels=3, expand_animations=False).numpy()
    height, width = labels.image_size
    pixels = tf.image.resize(pixels[None].astype(np.float32) / 255.0, (height, width)).numpy()
    add(PIXELS_SIGNATURE, "input_image", pixels.astype(np.float32))
    return records


def write_warmup_file(path: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def read_warmup_file(path: str | Path) -> list:
    """The ``PredictionLog`` messages of a warm-up file (for tests and our server's replay)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            for raw in tf.data.TFRecordDataset(str(path))]


def synthetic_images(image_size: tuple[int, int], count: int = WARMUP_IMAGES) -> list[bytes]:
    """``count`` distinct generated JPEGs for warm-up: no dataset photo (users' photos) enters an export."""
    return [synthetic_jpeg(image_size, seed=seed) for seed in range(count)]


# --------------------------------------------------------------------------- export


def export_saved_model(model, labels: RunLabels, base_dir: str | Path, model_name: str = "my_model",
                       version: int | None = None, *, precision: str = "float32", model_cfg=None,
                       warmup_images: list[bytes] | None = None,
                       extra_files: dict[str, Path] | None = None, provenance: dict | None = None) -> Path:
    """Write ``<base_dir>/<model_name>/<version>/`` atomically; return its path.

    ``precision``: the dtype the graph computes in (see the module docstring); ``model_cfg`` lets a
    model trained under another policy be rebuilt in it. ``warmup_images``: encoded images for the
    warm-up records (generated ones when empty: never pass users' photos). ``extra_files``: copied into ``assets.extra/``.
    """
    from .utils import write_json

    model_root = Path(base_dir) / model_name
    model_root.mkdir(parents=True, exist_ok=True)
    version = next_version(model_root) if version is None else int(version)
    final = model_root / str(version)
    if final.exists():
        raise FileExistsError(f"version {version} already exists at {final}; versions are immutable")
    trained_in = compute_precision(model)
    serving_model = model_in_precision(model, model_cfg, labels, precision)
    staging = model_root / f".export-{version}-{uuid.uuid4().hex[:8]}"  # not numeric: servers skip it
    try:
        save_serving_module(build_serving_module(serving_model, labels), staging)
        assets = staging / "assets"
        assets.mkdir(exist_ok=True)
        labels.save(assets / "labels.json")
        write_json(assets / "export.json", {
            "precision": precision, "trained_compute_dtype": trained_in, "model_name": model_name,
            "version": version, "signatures": [DEFAULT_SIGNATURE, PIXELS_SIGNATURE],
            "exported_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {})})
        extra = staging / "assets.extra"
        images = list(warmup_images or []) or synthetic_images(labels.image_size)
        write_warmup_file(extra / WARMUP_FILE, warmup_records(model_name, labels, images))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, extra / name)
        os.rename(staging, final)  # one atomic step on the same filesystem
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d (%s graph) to %s", model_name, version, precision, final)
    return final


def export_run(run_dir: str | Path, base_dir: str | Path | None = None, model_name: str | None = None,
               precision: str | None = None, *, serving_config: bool = True) -> Path:
    """Export a finished run's best model with its labels, thresholds, warm-up and provenance.

    Writes into ``base_dir`` directly: ``vinted export`` passes the release staging area
    (``vinted_classifier.release``), tests and ``--direct`` the served base path. With
    ``serving_config`` it (re)writes ``<base_dir>/serving_config/`` for the real
    ``tensorflow_model_server``. Warm-up records use generated images only.
    """
    from .monitoring.reference import run_reference_files
    from .runs import load_run
    from .serving_files import write_serving_config
    from .utils import package_versions

    run_dir = Path(run_dir)
    cfg, labels, model = load_run(run_dir)
    base_dir = Path(base_dir or cfg.export.saved_model_dir)
    model_name = model_name or cfg.export.model_name
    extra = {name: run_dir / name for name in PROVENANCE_FILES if (run_dir / name).is_file()}
    extra.update(run_reference_files(model, labels, cfg, run_dir))
    path = export_saved_model(
        model, labels, base_dir, model_name, precision=precision or cfg.export.precision, model_cfg=cfg.model,
        warmup_images=synthetic_images(labels.image_size), extra_files=extra,
        provenance={"run_name": cfg.run_name, "run_dir": str(run_dir.resolve()),
                    "package_versions": package_versions(("tensorflow", "keras"))})
    if serving_config:
        write_serving_config(base_dir, model_name)
    return path


def read_export_info(version_dir: str | Path) -> dict:
    """``assets/export.json`` of a version (precision, provenance); {} for exports that predate it."""
    import json

    path = Path(version_dir) / "assets" / "export.json"
    return json.loads(path.read_text()) if path.is_file() else {}


COMPUTE_OPS = ("Conv2D", "MatMul", "BatchMatMulV2", "DepthwiseConv2dNative", "_FusedConv2D", "_FusedMatMul")


def compute_op_dtypes(version_dir: str | Path) -> dict[str, set[str]]:
    """Dtypes of the convolutions and matrix products in a SavedModel's graph, by op type.

    Reads ``saved_model.pb`` (graph and function library), no TensorFlow session: a float32
    export shows only ``float32``, a bfloat16 export shows ``bfloat16``.
    """
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((Path(version_dir) / "saved_model.pb").read_bytes())
    found: dict[str, set[str]] = {}
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        for node in nodes:
            if node.op in COMPUTE_OPS and "T" in node.attr:
                name = types_pb2.DataType.Name(node.attr["T"].type).removeprefix("DT_").lower()
                found.setdefault(node.op, set()).add({"half": "float16", "float": "float32"}.get(name, name))
    return found
