"""Model versions on disk: discovery, version policies, version labels and hot swap.

TF Serving semantics (file_system_storage_path_source + availability-preserving
policy): numeric child directories of ``base_path`` are versions; the policy
picks the aspired ones (latest N by default); a new version is fully loaded
before an old one is unloaded, so at least one version keeps serving; a version
that fails to load is reported (state END + error) and never replaces a working
one. The config file is parsed with the real ``model_server_config_pb2`` protos.
A version with ``assets.extra/tf_serving_warmup_requests`` replays those requests
before it becomes AVAILABLE (TF Serving's SavedModel warmup).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from .errors import ServingError, data_loss, from_tf_exception, invalid, not_found
from .execution import batch_size_of, peak_rss_growth

log = logging.getLogger("tf_serving_compat")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses files with more records

# (model name, version, version folder) -> what the project's adapter keeps on ``LoadedVersion.metadata``.
MetadataLoader = Callable[[str, int, Path], Any]


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class VersionPolicy:
    """``latest`` (keep ``num_versions`` highest), ``all``, or ``specific`` versions."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def aspired(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-max(1, self.num_versions) :] if ordered else []


@dataclass(frozen=True)
class ModelSpecConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)


def parse_model_config_file(path: str | os.PathLike) -> list[ModelSpecConfig]:
    """Read a text-format ``ModelServerConfig`` (``model_config_list { config { ... } }``)."""
    # TensorFlow loads only when a model is served: importing this module stays light.
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415

    text = Path(path).read_text()
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid model config file {path}: {exc}") from None
    return model_specs_from_proto(message, str(path))


def model_specs_from_proto(message: Any, source: str = "config") -> list[ModelSpecConfig]:
    """``ModelServerConfig`` proto -> our specs (also used by the HandleReloadConfigRequest RPC)."""
    path = source
    if message.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported (no custom_model_config)")
    models = []
    seen = set()
    for config in message.model_config_list.config:
        if not config.name:
            raise ValueError(f"{path}: every config needs a name")
        if config.name in seen:
            raise ValueError(f"{path}: model name {config.name!r} is configured twice")
        seen.add(config.name)
        if config.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {config.name}: unsupported model_platform {config.model_platform!r}")
        if not config.base_path:
            raise ValueError(f"{path}: model {config.name} has no base_path")
        models.append(
            ModelSpecConfig(
                name=config.name,
                base_path=Path(config.base_path),
                policy=_policy_from_proto(config.model_version_policy),
                labels=dict(config.version_labels),
            )
        )
    if not models:
        raise ValueError(f"{path}: no models configured")
    return models


def _policy_from_proto(policy: Any) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        versions = frozenset(int(v) for v in policy.specific.versions)
        if not versions:
            raise ValueError("specific version policy lists no versions")
        return VersionPolicy("specific", versions=versions)
    if choice == "latest":
        return VersionPolicy("latest", num_versions=max(1, policy.latest.num_versions))
    return VersionPolicy()


# ---------------------------------------------------------------- one loaded version


@dataclass
class TensorSpecLite:
    """What the REST layer needs from a signature's TensorInfo."""

    dtype: str  # TF enum name, e.g. "DT_FLOAT"
    shape: list[int] | None  # None = unknown rank; -1 = unknown dim
    tensor_name: str


@dataclass
class SignatureInfo:
    name: str
    method_name: str
    inputs: dict[str, TensorSpecLite]
    outputs: dict[str, TensorSpecLite]
    as_json: dict  # the SignatureDef in TF Serving's metadata JSON shape


class LoadedVersion:
    """A fully loaded SavedModel version: signature metadata, the adapter's metadata and a ``run``."""

    def __init__(self, name: str, version: int, path: Path):
        # TensorFlow loads only when a model is served: importing this module stays light.
        import tensorflow as tf  # noqa: PLC0415
        from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

        self.name = name
        self.version = version
        self.path = Path(path)
        proto = saved_model_pb2.SavedModel()
        pb_path = self.path / "saved_model.pb"
        proto.ParseFromString(pb_path.read_bytes())
        meta_graph = next((m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags), None)
        if meta_graph is None:
            raise not_found(f"Could not find meta graph def matching supplied tags: {{ serve }} in {self.path}")
        self.signatures: dict[str, SignatureInfo] = {}
        self.signature_defs = meta_graph.signature_def  # protos, for gRPC GetModelMetadata
        for sig_name, sig in meta_graph.signature_def.items():
            as_json = json_format.MessageToDict(
                sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            self.signatures[sig_name] = SignatureInfo(
                name=sig_name,
                method_name=sig.method_name,
                inputs={k: _spec_from_info(v) for k, v in sig.inputs.items()},
                outputs={k: _spec_from_info(v) for k, v in sig.outputs.items()},
                as_json=as_json,
            )
        self._module = tf.saved_model.load(str(self.path), tags=["serve"])
        self._functions = dict(self._module.signatures)
        # Whatever the project's adapter loads for this version (``ModelAdapter.load_metadata``).
        self.metadata: Any = None
        # Peak memory one item adds to a model call (execution.measure_memory_per_item), from the
        # largest warm-up record; None when there was none to measure with.
        self.bytes_per_item: float | None = None
        self.measured_with: tuple[int, str] | None = None  # (items, signature) of the measuring record

    def signature(self, name: str) -> SignatureInfo:
        key = name or DEFAULT_SIGNATURE
        info = self.signatures.get(key)
        if info is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return info

    def check_inputs(self, info: SignatureInfo, inputs: dict[str, np.ndarray]) -> None:
        """Shape check against the signature, so a mismatch is a clear 400 (not a graph error)."""
        for alias, array in inputs.items():
            spec = info.inputs[alias]
            if spec.shape is None:
                continue
            if len(spec.shape) != array.ndim or any(
                d >= 0 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
            ):
                want = "[" + ",".join(str(d) for d in spec.shape) + "]"
                got = "[" + ",".join(str(d) for d in array.shape) + "]"
                raise invalid(f"input tensor alias: {alias} has shape {got} which is not compatible with {want}")

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature; thread-safe (TF releases the GIL inside)."""
        # TensorFlow loads only when a model is served: importing this module stays light.
        import tensorflow as tf  # noqa: PLC0415

        info = self.signature(signature_name)
        function = self._functions.get(info.name)
        if function is None:
            raise invalid(f'Serving signature name: "{info.name}" is not callable')
        kwargs = {}
        for alias, array in inputs.items():
            dtype = tf.dtypes.as_dtype(_TF_DTYPES[info.inputs[alias].dtype])
            kwargs[alias] = tf.constant(array.tolist() if array.dtype == object else array, dtype=dtype)
        try:
            result = function(**kwargs)
        except Exception as exc:  # noqa: BLE001 - every graph error becomes a canonical error
            raise from_tf_exception(exc) from None
        return {key: value.numpy() for key, value in result.items()}

    def warmup(self, iterations: int = 1) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (if present); returns the records run.

        Any unreadable record or failing request fails the load, as in TF Serving.
        """
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return 0

        records = read_warmup_requests(path)
        for iteration in range(max(1, iterations)):
            largest = 0
            for index, (signature_name, inputs) in enumerate(records):
                try:
                    info = self.signature(signature_name)
                    missing = sorted(set(info.inputs) - set(inputs))
                    extra = sorted(set(inputs) - set(info.inputs))
                    if missing or extra:
                        raise invalid(
                            f"inputs {sorted(inputs)} do not match signature {info.name} inputs {sorted(info.inputs)}"
                        )
                    if iteration == 0:
                        self._run_measured(info.name, inputs, largest)
                        largest = max(largest, batch_size_of(inputs))
                    else:
                        self.run(info.name, inputs)
                except ServingError as exc:
                    raise ServingError(
                        exc.code,
                        f"Failed to warm up model {self.name} version {self.version} "
                        f"with {path} record {index}: {exc.message}",
                    ) from None
        return len(records)

    def _run_measured(self, signature_name: str, inputs: dict[str, np.ndarray], items_before: int) -> None:
        """Run a warm-up record and, if it is the largest so far, take ``bytes_per_item`` from it.

        TensorFlow's oneDNN CPU allocator keeps a pool that grows to the largest call and is never
        returned, so a repeated call shows no growth: what is measured is the pool's growth during
        the first pass over the records, divided by the items beyond the largest earlier record.
        """

        items = batch_size_of(inputs)
        growth = peak_rss_growth(lambda: self.run(signature_name, inputs))
        if growth is not None and items > items_before:
            self.bytes_per_item = growth / (items - items_before)
            self.measured_with = (items, signature_name)


def read_warmup_requests(path: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Parse a warmup TFRecord of ``PredictionLog`` (predict_log only) into (signature, inputs) pairs."""
    # TensorFlow loads only when a model is served: importing this module stays light.
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow_serving.apis import prediction_log_pb2  # noqa: PLC0415

    requests: list[tuple[str, dict[str, np.ndarray]]] = []
    try:
        for index, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            if index >= MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            record = prediction_log_pb2.PredictionLog()
            try:
                record.ParseFromString(raw)
            except DecodeError as exc:
                raise data_loss(f"Failed to parse warmup record {index} in {path} as PredictionLog: {exc}") from None
            kind = record.WhichOneof("log_type")
            if kind != "predict_log":
                raise invalid(
                    f"Unsupported log_type for warmup: {kind} (record {index} in {path}); this "
                    "server serves predict signatures only"
                )
            request = record.predict_log.request
            try:
                inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            except Exception as exc:  # noqa: BLE001 - a malformed TensorProto
                raise invalid(f"Warmup record {index} in {path} holds an invalid TensorProto: {exc}") from None
            requests.append((request.model_spec.signature_name, inputs))
    except tf.errors.OpError as exc:  # truncated or corrupt TFRecord framing
        raise data_loss(f"Failed to read warmup file {path}: {exc.message}") from None
    if not requests:
        raise invalid(f"Warmup file {path} holds no records")
    return requests


def load_version(
    name: str,
    version: int,
    path: Path,
    *,
    enable_warmup: bool = True,
    warmup_iterations: int = 1,
    load_metadata: MetadataLoader | None = None,
) -> LoadedVersion:
    """Load a version, its adapter metadata, and replay its warmup requests (``--enable_model_warmup``)."""
    loaded = LoadedVersion(name, version, path)
    if load_metadata is not None:
        loaded.metadata = load_metadata(name, version, loaded.path)
    if enable_warmup:
        started = time.monotonic()
        count = loaded.warmup(warmup_iterations)
        if count:
            log.info(
                "Finished reading warmup data for model %s version %d: %d warmup records, %d iteration(s) in %.2fs",
                name,
                version,
                count,
                max(1, warmup_iterations),
                time.monotonic() - started,
            )
    return loaded


def version_loader(
    enable_warmup: bool = True, warmup_iterations: int = 1, load_metadata: MetadataLoader | None = None
) -> Callable[[str, int, Path], LoadedVersion]:
    return functools.partial(
        load_version, enable_warmup=enable_warmup, warmup_iterations=warmup_iterations, load_metadata=load_metadata
    )


_TF_DTYPES = {
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_INT32": "int32",
    "DT_INT16": "int16",
    "DT_INT8": "int8",
    "DT_UINT8": "uint8",
    "DT_INT64": "int64",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
    "DT_HALF": "float16",
}


def _spec_from_info(info: Any) -> TensorSpecLite:
    # TensorFlow loads only when a model is served: importing this module stays light.
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415

    shape = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return TensorSpecLite(types_pb2.DataType.Name(info.dtype), shape, info.name)


# ---------------------------------------------------------------- one model, many versions


@dataclass
class VersionStatus:
    state: str
    error_code: str = "OK"
    error_message: str = ""


def _fingerprint(path: Path) -> tuple:
    """Changes when a version directory is rewritten, so a failed load is retried then."""
    items: list[tuple[int, int] | None] = []
    for sub in (path, path / "saved_model.pb", path / "variables"):
        try:
            st = sub.stat()
            items.append((st.st_mtime_ns, st.st_size))
        except OSError:
            items.append(None)
    return tuple(items)


def _load_error(exc: BaseException) -> tuple[str, str]:

    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, DecodeError):
        return "DATA_LOSS", f"Can't parse saved_model.pb as binary proto: {exc}"
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND", str(exc)
    try:
        error = from_tf_exception(exc)
        code = "UNKNOWN" if error.code == "INTERNAL" else error.code
        return code, error.message
    except Exception:  # noqa: BLE001
        return "UNKNOWN", f"{type(exc).__name__}: {exc}"


class ModelManager:
    """Keeps the aspired versions of one model loaded; ``poll()`` re-scans the base path."""

    def __init__(
        self,
        config: ModelSpecConfig,
        loader: Callable[[str, int, Path], LoadedVersion] = load_version,
        on_state: Callable[[str, int, str], None] | None = None,
    ):
        self.config = config
        self.name = config.name
        self._loader = loader
        self._on_state = on_state
        self._lock = threading.Lock()  # guards _loaded/_status (short critical sections)
        self._poll_lock = threading.Lock()  # one scan at a time
        self._loaded: dict[int, LoadedVersion] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple] = {}
        self._warned_missing = False

    def _set_status(self, version: int, state: str, error_code: str = "OK", error_message: str = "") -> None:
        """Record a state change (caller holds ``_lock``) and report it to the metrics hook."""
        self._status[version] = VersionStatus(state, error_code, error_message)
        if self._on_state is not None:
            self._on_state(self.name, version, state)

    # -- disk scan

    def _versions_on_disk(self) -> dict[int, Path]:
        base = self.config.base_path
        try:
            entries = list(os.scandir(base))
        except OSError:
            if not self._warned_missing:
                log.error("No versions of servable %s found under base path %s", self.name, base)
                self._warned_missing = True
            return {}
        found = {}
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                version = int(entry.name)
            except ValueError:
                continue  # TF Serving skips non-numeric children
            if version < 0:
                continue
            path = Path(entry.path)
            # A directory without saved_model.pb is not ready yet (being written): skip, do not fail.
            if (path / "saved_model.pb").is_file():
                found[version] = path
        return found

    def poll(self) -> None:
        """One scan: load newly aspired versions, then unload the ones no longer aspired."""
        with self._poll_lock:
            on_disk = self._versions_on_disk()
            for _ in range(len(on_disk) + 1):
                # A failed load drops out of the candidates, so the policy falls back to the
                # next version in the same scan (e.g. a broken newest export at start-up).
                candidates = []
                for version, path in on_disk.items():
                    failed = self._failed.get(version)
                    if failed is not None and failed == _fingerprint(path):
                        continue
                    candidates.append(version)
                aspired = set(self.config.policy.aspired(candidates))
                missing = [v for v in sorted(aspired, reverse=True) if v not in self._loaded]
                if all([self._load(v, on_disk[v]) for v in missing]):  # list: load every one
                    break
            with self._lock:
                serving_aspired = any(v in self._loaded for v in aspired)
                to_unload = [v for v in self._loaded if v not in aspired] if serving_aspired else []
                for version in to_unload:
                    self._set_status(version, "UNLOADING")
                    del self._loaded[version]
                    self._set_status(version, "END")
            for version in to_unload:
                log.info("Unloaded servable version {name: %s version: %d}", self.name, version)

    def _load(self, version: int, path: Path) -> bool:
        fingerprint = _fingerprint(path)
        with self._lock:
            self._set_status(version, "LOADING")
        started = time.monotonic()
        try:
            loaded = self._loader(self.name, version, path)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, never raised
            code, message = _load_error(exc)
            with self._lock:
                self._set_status(version, "END", code, message)
            self._failed[version] = fingerprint
            log.error(
                "Failed to load servable version {name: %s version: %d}: %s: %s", self.name, version, code, message
            )
            return False
        self._settle_memory_estimate(loaded)
        with self._lock:
            self._loaded[version] = loaded
            self._set_status(version, "AVAILABLE")
        self._failed.pop(version, None)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} in %.2fs",
            self.name,
            version,
            time.monotonic() - started,
        )
        return True

    def _settle_memory_estimate(self, loaded: LoadedVersion) -> None:
        """A version measured after others of this model ran may see the allocator's pool already
        grown (little or no growth): it takes the largest estimate any version of the model had."""
        previous = [v.bytes_per_item for v in self._loaded.values() if v.bytes_per_item is not None]
        if previous and (loaded.bytes_per_item is None or loaded.bytes_per_item < max(previous)):
            loaded.bytes_per_item = max(previous)
        if loaded.bytes_per_item is not None:
            measured = (
                f" (measured with a {loaded.measured_with[0]}-item warm-up request of {loaded.measured_with[1]})"
                if loaded.measured_with
                else ""
            )
            log.info(
                "Model %s version %d: %.2f MiB peak memory per item%s",
                self.name,
                loaded.version,
                loaded.bytes_per_item / 2**20,
                measured,
            )

    # -- lookups

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

    def resolve(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The servable for a request (latest, specific version, or label); TF Serving errors."""
        with self._lock:
            if label is not None:
                if label not in self.config.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = self.config.labels[label]
            if version is None:
                if not self._loaded:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                return self._loaded[max(self._loaded)]
            loaded = self._loaded.get(version)
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
            return loaded

    def status(self, version: int | None = None, label: str | None = None) -> list[dict]:
        """``model_version_status`` entries, highest version first (ints as JSON strings)."""
        with self._lock:
            if label is not None:
                if label not in self.config.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = self.config.labels[label]
            if version is not None:
                if version not in self._status:
                    raise not_found(f"Could not find version {version} of model {self.name}")
                items = [(version, self._status[version])]
            else:
                if not self._status:
                    raise not_found(f"Could not find any versions of model {self.name}")
                items = sorted(self._status.items(), reverse=True)
            return [
                {
                    "version": str(v),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for v, s in items
            ]

    def unload_all(self) -> None:
        """The model left the config: every version ends (TF Serving unloads it)."""
        with self._poll_lock, self._lock:
            for version in list(self._loaded):
                del self._loaded[version]
                self._set_status(version, "END")


class ModelRegistry:
    """All served models plus the background poller thread."""

    def __init__(
        self,
        configs: list[ModelSpecConfig],
        poll_wait_seconds: float = 1.0,
        loader: Callable[[str, int, Path], LoadedVersion] = load_version,
        on_state: Callable[[str, int, str], None] | None = None,
    ):
        self._loader = loader
        self._on_state = on_state
        self.models = {c.name: ModelManager(c, loader, on_state) for c in configs}
        self.poll_wait_seconds = poll_wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconfigure_lock = threading.Lock()

    def get(self, name: str) -> ModelManager | None:
        return self.models.get(name)

    def reconfigure(self, configs: list[ModelSpecConfig]) -> None:
        """Apply a new model list (config-file poll or HandleReloadConfigRequest) without a restart.

        New models are loaded, dropped ones unloaded, changed base paths/policies/labels applied.
        Loads run in the caller's thread: when this returns, the new config is serving.
        """
        with self._reconfigure_lock:
            wanted = {c.name: c for c in configs}
            models = dict(self.models)
            for name in [n for n in models if n not in wanted]:
                models.pop(name).unload_all()
                log.info("Model %s removed from the config: unloaded", name)
            for name, config in wanted.items():
                manager = models.get(name)
                if manager is None:
                    models[name] = ModelManager(config, self._loader, self._on_state)
                elif manager.config != config:
                    if manager.config.base_path != config.base_path:
                        manager.unload_all()
                    manager.config = config
            self.models = models  # one assignment: readers see the old or the new dict
            self.poll_all()

    def poll_all(self) -> None:
        for manager in list(self.models.values()):
            try:
                manager.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("Polling model %s failed", manager.name)

    def start(self) -> None:
        """Start polling (no-op when poll wait <= 0: TF Serving then scans only once)."""
        if self.poll_wait_seconds <= 0 or (self._thread and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-version-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            self.poll_all()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
