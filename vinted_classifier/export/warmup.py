"""TF Serving warm-up records (``assets.extra/tf_serving_warmup_requests``), from generated images only."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from ..contract import DEFAULT_SIGNATURE, PIXELS_SIGNATURE, RunLabels

# Batch sizes replayed at warm-up for the bytes signature: one request, and a full batch of the
# batching config (each distinct batch shape is a separate oneDNN primitive to create).
WARMUP_BATCH_SIZES = (1, 32)
WARMUP_IMAGES = 8


def synthetic_jpeg(image_size: tuple[int, int], seed: int = 0) -> bytes:
    """A small garment-free JPEG (colour gradient + noise) for warm-up when no real photo is at hand."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.broadcast_to(ramp, (height, width, 3)) + rng.normal(0, 20, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def synthetic_images(image_size: tuple[int, int], count: int = WARMUP_IMAGES) -> list[bytes]:
    """``count`` distinct generated JPEGs for warm-up: no dataset photo (users' photos) enters an export."""
    return [synthetic_jpeg(image_size, seed=seed) for seed in range(count)]


def _prediction_log(model_name: str, signature: str, input_name: str, value) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(value))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return record.SerializeToString()


def warmup_records(model_name: str, labels: RunLabels, images: list[bytes]) -> list[bytes]:
    """Serialized ``PredictionLog`` records: each signature at the batch sizes servers will see.

    The format of TF Serving's SavedModel warm-up (``assets.extra/tf_serving_warmup_requests``):
    the real server and ours replay them before a version reports AVAILABLE, so the first user
    request does not pay for graph optimisation and kernel selection.
    """
    if not images:
        raise ValueError("warm-up needs at least one encoded image")
    records = []
    for batch_size in WARMUP_BATCH_SIZES:
        batch = [images[i % len(images)] for i in range(batch_size)]
        records.append(_prediction_log(model_name, DEFAULT_SIGNATURE, "image_bytes", np.array(batch, dtype=object)))
    pixels = tf.io.decode_image(images[0], channels=3, expand_animations=False).numpy()
    height, width = labels.image_size
    pixels = tf.image.resize(pixels[None].astype(np.float32) / 255.0, (height, width)).numpy()
    records.append(_prediction_log(model_name, PIXELS_SIGNATURE, "input_image", pixels.astype(np.float32)))
    return records


def write_warmup_file(path: Path, records: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def read_warmup_file(path: str | Path) -> list:
    """The ``PredictionLog`` messages of a warm-up file (for tests and our server's replay)."""
    return [prediction_log_pb2.PredictionLog.FromString(raw.numpy()) for raw in tf.data.TFRecordDataset(str(path))]
