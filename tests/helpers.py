"""Plain helpers the tests import (fixtures live in conftest.py): the tiny dataset and the tiny run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vinted_classifier.config import RunConfig, load_config

TAGS = ["polka dot", "floral", "checker"]
CATEGORIES = ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"]


def write_tiny_dataset(folder: Path, n_per_category: int = 6, n_test: int = 5, seed: int = 0, size=(40, 30)) -> Path:
    """Write a small, learnable Vinted-layout dataset: colour encodes category, stripes encode tags."""

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"BLOUSES": (220, 40, 40), "CASUAL_DRESSES": (40, 200, 40), "SHIRTS": (40, 40, 220)}
    rows = []

    def draw(category: str, tag: int | None, uuid: str) -> None:
        h, w = size
        pixels = np.full((h, w, 3), colours[category], np.uint8)
        pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
        if tag is not None:
            pixels[:: 3 + tag * 2, :, :] = 255
        Image.fromarray(pixels).save(folder / f"{uuid}.jpeg", quality=95)

    for index in range(n_per_category * len(CATEGORIES)):
        category = CATEGORIES[index % len(CATEGORIES)]
        tag = None if index % 4 == 0 else int(rng.integers(0, 3))
        uuid = f"{index:05x}_" + "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789"), 24))
        draw(category, tag, uuid)
        flags = [int(tag == k) for k in range(3)]
        rows.append({"uuid": uuid, "cc3": category, "color1": "RED", **dict(zip(TAGS, flags, strict=True))})
    labels = pd.DataFrame(rows)
    labels = pd.concat([labels, labels.iloc[:2]], ignore_index=True)  # two exact duplicate rows
    labels.to_parquet(folder / "data.parquet", index=False)
    test_ids = []
    for index in range(n_test):
        uuid = f"t{index:04x}_" + "".join(rng.choice(list("abcdefghij0123456789"), 24))
        draw(CATEGORIES[index % 3], None, uuid)
        test_ids.append(uuid)
    pd.DataFrame({"uuid": pd.Series(test_ids, dtype="string[pyarrow]")}).to_parquet(
        folder / "test.parquet", index=False
    )
    return folder


def tiny_config(data_dir: Path, out_dir: Path, *extra: str) -> RunConfig:
    """The ``tiny`` preset (configs/tiny.yaml) on the given data, writing under ``out_dir``."""
    return load_config(
        None,
        [
            f"data.data_dir={data_dir}",
            f"output_dir={out_dir}",
            f"export.saved_model_dir={out_dir / 'saved_model'}",
            *extra,
        ],
        presets=["tiny"],
    )
