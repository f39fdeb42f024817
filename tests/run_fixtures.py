"""A tiny trained run shared by the train/predict/export tests (VGG16, 32x32, random weights)."""

from __future__ import annotations

from pathlib import Path

from vinted_classifier.config import RunConfig, load_config


def tiny_config(data_dir: Path, out_dir: Path, *extra: str) -> RunConfig:
    """The ``tiny`` preset (configs/tiny.yaml) on the given data, writing under ``out_dir``."""
    return load_config(None, [f"data.data_dir={data_dir}", f"output_dir={out_dir}",
                              f"export.saved_model_dir={out_dir / 'saved_model'}", *extra], presets=["tiny"])
