"""Typed run configuration, loadable from YAML and overridable from the command line.

One ``RunConfig`` describes a whole run (data, model, training, export). Its defaults
here ARE the default run; ``configs/default.yaml`` shows them (a test keeps the two equal)
and ``configs/<preset>.yaml`` files (smoke, tiny) hold only the keys they change. The
resolved config is written next to every run's outputs (``config.yaml``) so that the run
can be reproduced exactly. Overrides use dotted keys: ``train.head_epochs=3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .contract import (
    DEFAULT_CATEGORY_COLUMN,
    DEFAULT_MODEL_NAME,
    DEFAULT_SAVED_MODEL_DIR,
    DEFAULT_TAG_COLUMNS,
    TAGS_OUTPUT,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"

Backbone = Literal["vgg16", "vgg19", "mobilenet_v2", "efficientnet_b0", "resnet50"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
Pooling = Literal["avg", "flatten", "avg_block4_5"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the Vinted-layout files live and how they are read and split."""

    data_dir: Path = PROJECT_ROOT / "data" / "demo"
    labels_file: str = "data.parquet"
    test_file: str = "test.parquet"
    image_dir: Path | None = None  # default: data_dir
    id_column: str = "uuid"
    category_column: str = DEFAULT_CATEGORY_COLUMN
    tag_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_TAG_COLUMNS))
    # Other string columns that must be present and non-null (used for EDA and slices).
    extra_columns: list[str] = Field(default_factory=lambda: ["color1"])
    image_extensions: list[str] = Field(default_factory=lambda: [".jpeg", ".jpg", ".png"])
    bad_images: Literal["fail", "skip"] = "fail"
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    splits_file: str = "splits.csv"
    # Cap every category at this many training rows (the seed solution downsampled BLOUSES).
    downsample_max_per_category: int | None = None
    class_weights: bool = False
    hash_images: bool = True  # detect identical image content, not only identical rows

    @property
    def images(self) -> Path:
        return Path(self.image_dir) if self.image_dir is not None else Path(self.data_dir)

    @property
    def slice_column(self) -> str | None:
        return self.extra_columns[0] if self.extra_columns else None


class ModelConfig(_Strict):
    backbone: Backbone = "vgg19"
    # "auto": official Keras ImageNet file if cached/downloadable, else the bundled VGG19 weights.
    weights: str = "auto"
    image_height: int = Field(default=160, ge=32)
    image_width: int = Field(default=128, ge=32)
    pooling: Pooling = "avg_block4_5"
    dense_units: int = Field(default=256, ge=0)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    augment: bool = True

    @field_validator("weights")
    @classmethod
    def _weights_known(cls, value: str) -> str:
        if value in {"auto", "imagenet", "imagenet-bundled", "none"}:
            return value
        if not value.endswith((".h5", ".weights.h5", ".keras", ".bin")):
            raise ValueError(
                f"weights={value!r}: expected auto, imagenet, imagenet-bundled, none, "
                "or a path to a .weights.h5/.h5/.keras/.bin file"
            )
        return value

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.image_height, self.image_width)


class TrainConfig(_Strict):
    batch_size: int = Field(default=32, ge=1)
    precision: Precision = "auto"
    head_epochs: int = Field(default=30, ge=0)  # an upper bound: early stopping ends phase 1
    head_learning_rate: float = Field(default=1e-3, gt=0)
    finetune_epochs: int = Field(default=2, ge=0)
    finetune_learning_rate: float = Field(default=1e-5, gt=0)
    # Layers whose name starts with one of these prefixes are unfrozen in phase 2
    # (null: the backbone's last conv block, e.g. block5_ for VGG, conv5_ for ResNet50).
    finetune_layer_prefixes: list[str] | None = None
    early_stopping_patience: int = Field(default=6, ge=0)
    # Early stopping and the best checkpoint follow the validation loss of both heads: on a few
    # hundred validation images top-1 moves in steps of 0.2 points and stops runs by chance.
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] = "min"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {DEFAULT_CATEGORY_COLUMN: 1.0, TAGS_OUTPUT: 1.0})
    # Compute frozen-backbone features once and train the heads on them (phase 1 only).
    cache_features: bool = True
    # With cache_features and augment: number of augmented views of each training image to cache.
    cached_augmented_views: int = Field(default=2, ge=0)
    # vinted train: this share of the training images (stratified by category) gets one augmented view
    # more; the time budget sets it to spend what is left short of a whole view.
    partial_view_share: float = Field(default=0.0, ge=0, le=1)
    # Rows of cached features held in the shuffle buffer (x dim x 4 bytes: 8192 rows ~ 32 MiB at dim 1024).
    # The cache itself lives on disk, so this, not the dataset size, bounds phase 1's memory.
    feature_shuffle_buffer: int = Field(default=8192, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Phase 2's learning rate rises linearly from a tenth of finetune_learning_rate over this many
    # epochs (fresh Adam moments jolt the unfrozen block least that way); 0: no warm-up.
    finetune_warmup_epochs: float = Field(default=0.0, ge=0)
    # Bit-identical weights and metrics for two runs on the same machine (op determinism, seeded
    # data order); slower, see docs/experiments.md.
    deterministic: bool = False
    # The whole `vinted train` (start-up, caching, epochs, evaluation) fits this many minutes: step
    # times measured at the start choose the cached views, head/fine-tune epochs and, if need be, a
    # training subsample (docs/experiments.md). `make all` gives it the whole job instead (below).
    # null: no budget; the counts above are then used as they are.
    time_budget_minutes: float | None = Field(default=12.0, gt=0)
    # What the budget covers. train: this command, from its start. main_job: `make all` from its start
    # (time_budget_started_at, unix seconds: install and demo data count), and the plan also prices
    # what the job does after training: predicting test.parquet, the export's reference statistics
    # and the release gate's held-out scoring (docs/experiments.md).
    time_budget_scope: Literal["train", "main_job"] = "train"
    time_budget_started_at: float | None = Field(default=None, gt=0)
    # The shared feature store (null: <output_dir>/feature_cache) and its size cap (oldest entries go first).
    feature_cache_dir: Path | None = None
    feature_cache_max_gb: float = Field(default=10.0, gt=0)
    # 0: silent; 1: one short line per epoch (loss, top-1, top-2, tag F1) and progress bars on a terminal;
    # 2: also Keras's own per-batch progress bar with every metric.
    verbose: int = Field(default=1, ge=0, le=2)


class ExportConfig(_Strict):
    model_name: str = DEFAULT_MODEL_NAME
    saved_model_dir: Path = DEFAULT_SAVED_MODEL_DIR
    # The dtype the exported graph computes in. float32 runs on every CPU/GPU and gets bf16/fp16
    # speed from the serving host's mixed-precision rewrite; bfloat16 fails on AVX2-only CPUs.
    precision: Literal["float32", "bfloat16", "float16"] = "float32"


class InferenceConfig(_Strict):
    """In-process inference (``vinted predict``, the notebook): the host-aware mixed-precision rewrite."""

    # auto: bf16 on CPUs with AVX512_BF16/AMX, fp16 on GPUs with compute capability >= 7.0, else off.
    mixed_precision_rewrite: Literal["auto", "on", "off"] = "auto"


class TrackingConfig(_Strict):
    """MLflow tracking of runs, searches and CV (local SQLite store unless a URI is given)."""

    enabled: bool = True
    # null: sqlite:///<output_dir>/mlruns/mlflow.db with artefacts under <output_dir>/mlruns/artifacts.
    tracking_uri: str | None = None
    experiment: str = "vinted"
    # Log model.keras and each exported SavedModel as artefacts (tens of MiB per run).
    log_models: bool = True
    # Register exported SavedModels under this name in the MLflow model registry (null: do not register).
    registered_model_name: str | None = None


class ReleaseConfig(_Strict):
    """The release gate (``vinted release``, docs/release.md): where candidates wait, what they must pass."""

    # `vinted export` writes candidates here (<staging_dir>/<model_name>/<n>/); servers never watch it.
    staging_dir: Path = PROJECT_ROOT / "model_training" / "staging"
    # Absolute floors on the held-out split.
    min_top1: float = Field(default=0.6, ge=0, le=1)
    min_top2: float = Field(default=0.8, ge=0, le=1)
    min_tag_f1: float = Field(default=0.6, ge=0, le=1)  # every tag, at its tuned threshold
    # Non-regression vs the served version on the same rows: blocked when the candidate is worse by more
    # than the margin AND the paired bootstrap interval lies below zero (a drop that is not noise).
    regression_margin: float = Field(default=0.02, ge=0, le=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    bootstrap_samples: int = Field(default=2000, ge=100)
    # Slices (category, extra columns, brightness and image-size quartiles) with at least this support.
    slice_min_support: int = Field(default=30, ge=1)
    slice_min_top1: float = Field(default=0.4, ge=0, le=1)
    slice_regression_margin: float = Field(default=0.05, ge=0, le=1)
    # Held-out top-1 must beat the class-prior baseline and a linear probe on colour features by these.
    prior_margin: float = Field(default=0.05, ge=-1, le=1)
    probe_margin: float = Field(default=0.0, ge=-1, le=1)
    # Cost relative to the served version on this host (null: not checked).
    max_size_ratio: float | None = Field(default=1.5, gt=0)
    max_latency_ratio: float | None = Field(default=2.0, gt=0)
    # Load the candidate in a server subprocess and compare its REST and gRPC answers with offline ones.
    infra_validation: bool = True
    infra_timeout_seconds: float = Field(default=300.0, gt=0)
    # Probabilities, served vs in-process under the same rewrite decision: float32 graphs, and graphs the
    # host's bf16/fp16 rewrite runs (one bf16 step near 1 is 0.0039; batch splits change the rounding).
    infra_atol: float = Field(default=1e-3, gt=0)
    infra_atol_low_precision: float = Field(default=1e-2, gt=0)


class MonitoringConfig(_Strict):
    """Production monitoring (docs/monitoring.md): the export's reference, the server's drift window, sampling."""

    reference_images: int = Field(default=256, ge=1)  # held-out images the export's reference statistics cover
    window_size: int = Field(default=1000, ge=1)  # drift window: the last N predictions ...
    window_seconds: float = Field(default=3600.0, gt=0)  # ... of at most this age
    queue_size: int = Field(default=256, ge=1)  # requests waiting for the statistics thread; more are dropped, counted
    # Images decoded for brightness at most (the size is read from every image).
    brightness_per_second: float = Field(default=25.0, gt=0)
    # Alert thresholds (deploy/monitoring/alerts.yml uses the same; a test keeps them equal).
    category_linf_threshold: float = Field(default=0.15, gt=0, le=1)
    tag_linf_threshold: float = Field(default=0.10, gt=0, le=1)
    js_threshold: float = Field(default=0.10, gt=0, le=1)
    # Privacy-safe request sampling: image hash, size and prediction (never the image) to a rotating file.
    sample_fraction: float = Field(default=0.0, ge=0, le=1)
    sample_file: str = "model_training/monitoring/requests.jsonl"  # relative: the project root
    sample_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    sample_backups: int = Field(default=5, ge=1)


class RunConfig(_Strict):
    seed: int = 42
    run_name: str = "default"
    output_dir: Path = PROJECT_ROOT / "model_training"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="after")
    def _loss_weights_match_outputs(self) -> RunConfig:
        outputs = {self.data.category_column, TAGS_OUTPUT}
        unknown = set(self.train.loss_weights) - outputs
        if unknown:
            raise ValueError(
                f"train.loss_weights has keys {sorted(unknown)} that are not model outputs {sorted(outputs)}"
            )
        return self

    @model_validator(mode="after")
    def _paths_relative_to_project(self) -> RunConfig:
        """Relative paths in a config mean the project root, wherever the command runs from."""

        def rooted(path: Path | None) -> Path | None:
            return path if path is None or Path(path).is_absolute() else PROJECT_ROOT / path

        for section, key in [
            (self, "output_dir"),
            (self.data, "data_dir"),
            (self.data, "image_dir"),
            (self.export, "saved_model_dir"),
            (self.release, "staging_dir"),
            (self.train, "feature_cache_dir"),
        ]:
            value = getattr(section, key)
            if value is not None and not Path(value).is_absolute():
                object.__setattr__(section, key, rooted(Path(value)))
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def feature_cache_root(self) -> Path:
        """The shared feature store: ``train.feature_cache_dir``, else ``<output_dir>/feature_cache``."""
        return Path(self.train.feature_cache_dir or Path(self.output_dir) / "feature_cache")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, lists, null)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (returns the same dict)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_scalar(value)
    return raw


def preset_path(name: str) -> Path:
    """``configs/<name>.yaml``: a preset (e.g. ``smoke``, ``tiny``) to stack on the defaults."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no preset {name!r}: {path} does not exist (presets: {', '.join(known)})")
    return path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merge key by key; any other value in ``update`` replaces the base's."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must contain a mapping at top level")
    return raw


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None,
    overrides: list[str] | None = None,
    *,
    presets: Sequence[str] = (),
) -> RunConfig:
    """A ``RunConfig``: the defaults, then each YAML file in order, then each preset, then dotted overrides.

    Later files win key by key, so a preset (``configs/smoke.yaml``) stacks on any base file.
    """
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    raw: dict[str, Any] = {}
    for path in [*map(Path, paths), *map(preset_path, presets)]:
        _merge(raw, _read_yaml(path))
    raw = apply_overrides(raw, overrides or [])
    return RunConfig.model_validate(raw)
