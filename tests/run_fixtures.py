"""A tiny trained run shared by the train/predict/export tests (VGG16, 32x32, random weights)."""

from __future__ import annotations

from pathlib import Path

from vinted_classifier.config import RunConfig, load_config

TINY_OVERRIDES = [
    "model.backbone=vgg16", "model.weights=none", "model.image_height=40", "model.image_width=32",
    "model.pooling=avg", "model.dense_units=32", "model.augment=false", "train.head_epochs=3",
    "train.finetune_epochs=0", "train.batch_size=4", "train.verbose=0", "train.precision=float32",
    "train.early_stopping_patience=0", "train.head_learning_rate=0.01",
]


def tiny_config(data_dir: Path, out_dir: Path, *extra: str) -> RunConfig:
    return load_config(None, [f"data.data_dir={data_dir}", f"output_dir={out_dir}",
                              f"export.saved_model_dir={out_dir / 'saved_model'}", *TINY_OVERRIDES, *extra])
