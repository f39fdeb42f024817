"""One feature store for every command: a search then a train computes each image once; changes recompute."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_config, write_tiny_dataset
from PIL import Image

from vinted_classifier import data
from vinted_classifier import train as train_module
from vinted_classifier.experiments.search import run_search


def _store_counts(result) -> dict:
    return json.loads((result.run_dir / "run.json").read_text())["feature_store"]


@pytest.mark.slow
def test_search_then_train_computes_no_feature_twice_and_changes_recompute(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "tiny")
    out = tmp_path / "runs"
    cfg = tiny_config(dataset, out, "train.head_epochs=1", "tracking.enabled=false")
    prepared = data.prepare(cfg.data, cfg.seed)
    n_train, n_val = len(prepared.paths("train")), len(prepared.paths("val"))

    run_search(cfg, 1, name="s")  # computes the train and val features into <output_dir>/feature_cache
    trained = train_module.train(cfg)
    assert _store_counts(trained)["computed"] == 0, "the search's features are reused"
    assert _store_counts(trained)["reused"] == n_train + n_val

    # A changed training image (same uuid, other bytes) is the only vector computed again.
    changed = prepared.frames["train"]["path"][0]
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), np.uint8)).save(changed, quality=95)
    again = train_module.train(
        tiny_config(dataset, out, "train.head_epochs=1", "tracking.enabled=false", "run_name=changed")
    )
    assert (_store_counts(again)["computed"], _store_counts(again)["reused"]) == (1, n_train + n_val - 1)

    # Another image size is another model key: everything is computed, in another store folder.
    resized = train_module.train(
        tiny_config(
            dataset, out, "train.head_epochs=1", "tracking.enabled=false", "run_name=resized", "model.image_height=48"
        )
    )
    assert (_store_counts(resized)["computed"], _store_counts(resized)["reused"]) == (n_train + n_val, 0)
    assert _store_counts(resized)["store"] != _store_counts(again)["store"]
    assert sorted(p.name for p in (out / "feature_cache").iterdir()) == sorted(
        {_store_counts(r)["store"].rsplit("/", 1)[-1] for r in (trained, resized)}
    )
