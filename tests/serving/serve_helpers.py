"""Helpers for the serving tests: tiny SavedModels with the export's exact signatures, images, oracles.

Same names, dtypes and shapes as the lead's export (``serving_default`` taking
``image_bytes``; ``serving_pixels`` taking ``input_image``; outputs cc3, tags,
top2_codes, top2_names, tag_flags), but a deterministic toy graph: decode, resize
to 8x8, mean colour -> fixed linear maps. ``bias`` differs per version so a hot
swap is observable in the outputs.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import os
import shutil
import socket
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

with warnings.catch_warnings():  # Starlette 1.x notes httpx -> httpx2 on import; not our concern here
    warnings.simplefilter("ignore")
    import starlette.testclient  # noqa: F401

CATEGORIES = ["BLOUSES", "CASUAL_DRESSES", "SHIRTS", "TOPS"]
TAGS = ["polka dot", "floral", "checker"]
IMAGE_SIZE = (12, 10)  # H, W of the pixel signature


def build_saved_model(path: Path, bias: float = 0.0) -> Path:
    """Write one version directory (saved_model.pb, variables/, assets/labels.json)."""

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.w_cat = tf.Variable(rng.normal(size=(3, len(CATEGORIES))).astype(np.float32) * 4)
            self.b_cat = tf.Variable(np.linspace(-1, 1, len(CATEGORIES)).astype(np.float32) * bias)
            self.w_tag = tf.Variable(rng.normal(size=(3, len(TAGS))).astype(np.float32) * 3)
            self.b_tag = tf.Variable(np.full(len(TAGS), bias - 1.0, np.float32))
            self.names = tf.constant(CATEGORIES)

        def _head(self, pixels):
            mean = tf.reduce_mean(tf.image.resize(pixels, [8, 8]), axis=[1, 2])
            cc3 = tf.nn.softmax(tf.matmul(mean, self.w_cat) + self.b_cat)
            tags = tf.sigmoid(tf.matmul(mean, self.w_tag) + self.b_tag)
            top = tf.math.top_k(cc3, k=2)
            codes = tf.cast(top.indices, tf.int64)
            return {
                "cc3": cc3,
                "tags": tags,
                "top2_codes": codes,
                "top2_names": tf.gather(self.names, codes),
                "tag_flags": tf.cast(tags >= 0.5, tf.int64),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                image = tf.image.convert_image_dtype(image, tf.float32)
                return tf.image.resize(image, [8, 8])

            pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([8, 8, 3], tf.float32))
            return self._head(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SIZE, 3], tf.float32, name="input_image")])
        def serve_pixels(self, input_image):
            return self._head(input_image)

    module = Toy()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve_bytes.get_concrete_function(),
            "serving_pixels": module.serve_pixels.get_concrete_function(),
        },
    )
    (path / "assets").mkdir(exist_ok=True)
    (path / "assets" / "labels.json").write_text(
        json.dumps(
            {
                "category_output": "cc3",
                "categories": CATEGORIES,
                "tags": TAGS,
                "thresholds": [0.5, 0.5, 0.5],
                "image_size": list(IMAGE_SIZE),
            }
        )
    )
    return path


def install_version(template: Path, base: Path, version: int) -> Path:
    """Copy a built version into ``base/<version>`` atomically (tmp dir + one rename)."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base.parent / f".staging-{base.name}-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(template, staging)
    target = base / str(version)
    staging.rename(target)
    return target


def jpeg_bytes(colour=(200, 30, 30), size=(16, 12), noise: int = 0, seed: int = 0) -> bytes:

    pixels = np.full((size[1], size[0], 3), colour, np.uint8)
    if noise:
        rng = np.random.default_rng(seed)
        pixels = np.clip(pixels.astype(int) + rng.integers(-noise, noise, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(colour=(20, 200, 30), size=(10, 14)) -> bytes:

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces ``width x height`` but holds no pixels (bomb-check probe)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def reference_outputs(version_dir: Path, signature: str, **inputs) -> dict[str, np.ndarray]:
    """Call the SavedModel in-process (the oracle the server must agree with)."""

    loaded = tf.saved_model.load(str(version_dir))
    result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in result.items()}


_TEMPLATES: dict[float, Path] = {}
_TEMPLATE_ROOT: list[Path] = []


def template(bias: float = 0.0) -> Path:
    """A built version directory for ``bias``, built once per test process (saving costs ~1 s)."""
    if bias not in _TEMPLATES:
        if not _TEMPLATE_ROOT:
            root = Path(tempfile.mkdtemp(prefix="serve-templates-"))
            atexit.register(shutil.rmtree, root, True)
            _TEMPLATE_ROOT.append(root)
        _TEMPLATES[bias] = build_saved_model(_TEMPLATE_ROOT[0] / f"bias{bias}", bias)
    return _TEMPLATES[bias]


V1_BIAS, V2_BIAS = 0.0, 3.0


def write_warmup_file(version_dir: Path, requests: list[tuple[str, dict[str, np.ndarray]]]) -> Path:
    """``<version>/assets.extra/tf_serving_warmup_requests``: one PredictionLog per (signature, inputs)."""

    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            record = prediction_log_pb2.PredictionLog()
            request = record.predict_log.request
            request.model_spec.name = "my_model"
            request.model_spec.signature_name = signature
            for alias, value in inputs.items():
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
            writer.write(record.SerializeToString())
    return path


def free_port() -> int:
    """A free TCP port on loopback, for the servers the tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROJECT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict:
    """The environment for a server child process: quiet TensorFlow, the project importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def model_base_with_v1(tmp_path: Path) -> Path:
    """``<tmp>/models/my_model`` holding version 1 (the conftest fixtures' model base)."""
    base = tmp_path / "models" / "my_model"
    install_version(template(V1_BIAS), base, 1)
    return base
