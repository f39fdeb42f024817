"""The shared feature store's files: content addressing, concurrent writers, the size cap, status and clear (no TF)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from vinted_classifier.features import FeatureStore, clear_store, enforce_size_cap, store_status

PROJECT = Path(__file__).resolve().parents[2]
WRITER = """
import sys
import numpy as np
from vinted_classifier.features import FeatureStore
store = FeatureStore(sys.argv[1], {"model": "m"})
for round in range(30):
    for i in range(40):
        store.put(f"{i:032x}", 1, 7, np.full(512, i, np.float32))
        other = store.get(f"{(i * 7) % 40:032x}", 1, 7)
        if other is not None and not (len(other) == 512 and (other == (i * 7) % 40).all()):
            sys.exit(f"torn entry read: {len(other)} values")
"""


def test_entries_are_addressed_by_image_hash_view_and_seed_and_the_clean_view_ignores_the_seed(tmp_path):
    store = FeatureStore(tmp_path, {"backbone": "vgg19", "image_size": [160, 128]})
    digest = "ab" * 16
    store.put(digest, 0, 1, np.arange(4, dtype=np.float32))
    store.put(digest, 2, 1, np.ones(4, np.float32))
    np.testing.assert_array_equal(store.get(digest, 0, 99), np.arange(4))  # the clean view is seed-free
    assert store.get(digest, 2, 99) is None and store.get(digest, 1, 1) is None
    assert store.entry(digest, 2, 1).name == f"{digest}.v2.s1.f32" and store.entry(digest, 2, 1).parent.name == "ab"
    other = FeatureStore(tmp_path, {"backbone": "vgg19", "image_size": [64, 48]})
    assert other.folder != store.folder and other.get(digest, 0, 1) is None  # another key, another folder


def test_two_concurrent_writers_never_expose_a_torn_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    store = FeatureStore(tmp_path, {"model": "m"})
    for i in range(40):
        np.testing.assert_array_equal(store.get(f"{i:032x}", 1, 7), np.full(512, i, np.float32))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")], "no temporary files left"


def test_the_size_cap_removes_the_oldest_entries_first(tmp_path):
    store = FeatureStore(tmp_path, {"model": "m"})
    for i in range(5):  # 5 entries of 400 bytes, written at t = 1000, 1001, ...
        store.put(f"{i:032x}", 0, 0, np.zeros(100, np.float32))
        os.utime(store.entry(f"{i:032x}", 0, 0), (1000 + i, 1000 + i))
    assert enforce_size_cap(tmp_path, 1200) == (2, 800)
    assert [store.get(f"{i:032x}", 0, 0) is not None for i in range(5)] == [False, False, True, True, True]
    assert enforce_size_cap(tmp_path, 1200) == (0, 0)


def test_status_counts_entries_per_model_and_clear_removes_them(tmp_path):
    store = FeatureStore(tmp_path, {"backbone": "vgg19"})
    store.write_key()
    for i in range(3):
        store.put(f"{i:032x}", 0, 0, np.zeros(8, np.float32))
    assert store_status(tmp_path) == [
        {"folder": store.folder.name, "key": {"backbone": "vgg19"}, "entries": 3, "bytes": 96}
    ]
    assert clear_store(tmp_path) == (3, 96)
    assert store_status(tmp_path) == [] and store.get(f"{0:032x}", 0, 0) is None


def test_vinted_cache_status_and_clear_name_the_store_and_what_it_holds(tmp_path, capsys):
    from vinted_classifier.cli import main

    root = tmp_path / "runs" / "feature_cache"
    store = FeatureStore(
        root,
        {
            "backbone": "vgg19",
            "image_size": [160, 128],
            "pooling": "avg_block4_5",
            "precision": "float32",
            "weights": "abc123",
        },
    )
    store.write_key()
    for i in range(2):
        store.put(f"{i:032x}", 0, 0, np.zeros(1024, np.float32))
    args = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", "train.feature_cache_max_gb=2"]
    assert main(["cache", "status", *args]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"feature store {root}: 2 feature vector(s), 0.0 MiB of a 2 GiB cap (train.feature_cache_max_gb)"
    assert out[1] == f"  {store.folder.name}: 2 vector(s), 0.0 MiB  vgg19 160x128 avg_block4_5 float32 weights abc123"
    assert main(["cache", "clear", *args]) == 0
    assert capsys.readouterr().out.strip() == f"feature store {root}: removed 2 feature vector(s), 0.0 MiB"
    assert store_status(root) == []


def test_a_partial_view_adds_one_more_augmented_view_for_the_listed_rows_only(tmp_path):
    from vinted_classifier.features import join_rows

    store = FeatureStore(tmp_path / "store", {"model": "m"})
    hashes = [f"{i:032x}" for i in range(3)]
    for i, digest in enumerate(hashes):
        for view in (0, 1):
            store.put(digest, view, 5, np.full(4, 10 * i + view, np.float32))
    store.put(hashes[1], 2, 5, np.full(4, 12, np.float32))  # view 2 exists for row 1 only
    codes, tags = np.array([0, 1, 2]), np.eye(3, 2)
    cache = join_rows(store, tmp_path / "train.f32", hashes, codes, tags, views=1, seed=5, partial=np.array([1]))
    assert (cache.rows, cache.feature_dim) == (3 * 2 + 1, 4)
    rows = np.fromfile(tmp_path / "train.f32", np.float32).reshape(cache.rows, 4 + 1 + 2)
    # views 0 and 1 of every row, then the partial view of row 1, each with its own label and tags
    assert rows[:, 0].tolist() == [0, 10, 20, 1, 11, 21, 12]
    assert rows[:, 4].tolist() == [0, 1, 2, 0, 1, 2, 1] and rows[-1, 5:].tolist() == tags[1].tolist()
