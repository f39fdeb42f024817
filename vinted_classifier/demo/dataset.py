"""Writing the whole demo dataset: label parquets, one drawn image per uuid, README; atomically."""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import progress
from ..utils import atomic_path
from .labels import CATEGORIES, TAGS, make_labels
from .render import render_garment

GENERATOR_VERSION = "demo v1"


def _write_table(columns: dict[str, np.ndarray], path: Path, metadata: dict[bytes, bytes]) -> None:
    """pyarrow ``string``/``int64`` exactly as the real files (pandas 3 would write ``large_string``)."""
    fields, arrays = [], []
    for name, values in columns.items():
        typ = pa.int64() if np.asarray(values).dtype.kind in "iu" else pa.string()
        fields.append(pa.field(name, typ))
        arrays.append(pa.array(list(values) if typ == pa.string() else values, type=typ))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _render_job(job: tuple) -> bool:
    """Worker: draw and write one image; the RNG depends only on (seed, index) so any pool size gives
    byte-identical files. Returns whether label noise changed the drawn category."""
    path, category, color, tag, seed, index, label_noise = job
    rng = np.random.default_rng([seed, 1, index])
    noisy = bool(rng.random() < label_noise)
    drawn = category
    if noisy:
        others = [c for c in CATEGORIES if c != category]
        drawn = others[int(rng.integers(len(others)))]
    image = render_garment(drawn, color, tag, rng)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    Path(path).write_bytes(buf.getvalue())
    return noisy


def _render_all(jobs: list[tuple], workers: int) -> int:
    if workers <= 1 or len(jobs) < 32:
        return sum(_render_job(j) for j in progress.bar(jobs, desc="drawing demo images"))
    # Workers allocate ~1.5 MB arrays per step; glibc would mmap/unmap each one (a fifth of the run
    # spent in page faults). Larger malloc thresholds, read by each worker at start, keep them on the heap.
    tuning = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "134217728"}
    saved = {k: os.environ.get(k) for k in tuning}
    os.environ.update({k: v for k, v in tuning.items() if saved[k] is None})
    try:
        # spawn: safe even when the caller has TensorFlow (threads) loaded
        pool = mp.get_context("spawn").Pool(workers)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
    with pool:
        rendered = pool.imap_unordered(_render_job, jobs, chunksize=16)
        return sum(progress.bar(rendered, total=len(jobs), desc="drawing demo images"))


# --------------------------------------------------------------------------------------------- driver
README_TEXT = """SYNTHETIC DEMO DATASET - NOT REAL VINTED DATA

Every image in this folder was drawn by vinted_classifier.demo ({generator}); none is a photo.
The label files follow the layout and statistics of the Vinted ML homework files:
  data.parquet                 labelled items (uuid, cc3, color1, polka dot, floral, checker);
                               the last rows repeat earlier rows, as in the real file
  test.parquet                 test items (uuid only)
  test_labels.parquet          hidden answers for the test items (same schema as data.parquet)
  example_predictions.parquet  the submission format, random values, in test.parquet order
  <uuid>.jpeg                  one image per uuid
About {noise:.0%} of images are drawn as a different category than their label (label noise).
Regenerate with: python -m vinted_classifier.demo OUT_DIR --scale {scale} --seed {seed} --force
"""


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True (--force) to replace it")


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
    label_noise: float = 0.03,
    workers: int | None = None,
    images: bool = True,
    force: bool = False,
) -> dict:
    """Write a complete synthetic Vinted-layout dataset to ``out_dir`` and return a summary.

    ``images=False`` writes the label files only (fast statistics checks). Output is deterministic from
    ``seed`` whatever ``workers`` is. Built in a temp folder beside ``out_dir`` and renamed into place.
    """
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    out_dir = Path(out_dir)
    _check_target(out_dir, force)
    workers = max(1, int(workers or os.cpu_count() or 1))
    start = time.perf_counter()
    labels = make_labels(scale=scale, seed=seed)
    generator = f"{GENERATOR_VERSION} seed={seed} scale={scale}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        n_noisy = _render_all(_render_jobs(labels, tmp, seed, label_noise), workers) if images else 0
        _write_label_files(labels, tmp, generator)
        readme = README_TEXT.format(generator=generator, noise=label_noise, scale=scale, seed=seed)
        (tmp / "README.txt").write_text(readme)
        _check_target(out_dir, force)
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n_images = (labels["n_unique"] + labels["n_test"]) if images else 0
    counts = {"n_images": n_images, "n_label_noise": n_noisy}
    run = {"seed": seed, "scale": scale, "workers": workers, "generator": generator}
    return _summary(out_dir, labels, counts, run, seconds=round(time.perf_counter() - start, 3))


def _summary(out_dir: Path, labels: dict, counts: dict, run: dict, seconds: float) -> dict:
    names = ("data", "test", "test_labels", "example_predictions")
    return {
        "out_dir": str(out_dir),
        "paths": {**{n: str(out_dir / f"{n}.parquet") for n in names}, "readme": str(out_dir / "README.txt")},
        "n_rows": len(labels["data"]["uuid"]),
        "n_unique": labels["n_unique"],
        "n_duplicates": labels["n_duplicates"],
        "n_test": labels["n_test"],
        **counts,
        **run,
        "seconds": seconds,
    }


def _render_jobs(labels: dict, folder: Path, seed: int, label_noise: float) -> list[tuple]:
    """One job per unique labelled uuid, then per test uuid; the index in this list seeds its image."""
    jobs: list[tuple] = []
    for table in (labels["data"], labels["test_labels"]):
        n = len(table["uuid"]) - (labels["n_duplicates"] if table is labels["data"] else 0)
        for k in range(n):
            tag = next((t for t in TAGS if table[t][k]), None)
            jobs.append(
                (
                    str(folder / f"{table['uuid'][k]}.jpeg"),
                    str(table["cc3"][k]),
                    str(table["color1"][k]),
                    tag,
                    seed,
                    len(jobs),
                    label_noise,
                )
            )
    return jobs


def _write_label_files(labels: dict, folder: Path, generator: str) -> None:
    meta = {b"vinted_classifier.synthetic": b"true", b"vinted_classifier.generator": generator.encode()}
    _write_table(labels["test_labels"], folder / "test_labels.parquet", meta)
    _write_table({"uuid": labels["test_labels"]["uuid"]}, folder / "test.parquet", meta)
    _write_table(labels["example_predictions"], folder / "example_predictions.parquet", meta)
    _write_table(labels["data"], folder / "data.parquet", meta)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp`` with renames, so ``out_dir`` never holds half a dataset."""
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def ensure_demo_dataset(
    folder: str | Path, *, labels_file: str = "data.parquet", scale: float = 1.0, generate: bool = True
) -> Path:
    """Generate the demo set into ``folder`` unless its labels file exists; return the folder.

    ``generate=False`` (a user-supplied data folder) never writes there: a missing labels file is an error.
    """
    folder = Path(folder)
    if not (folder / labels_file).is_file():
        if not generate:
            raise FileNotFoundError(f"{folder / labels_file} not found: point data_dir at a Vinted-layout folder")
        generate_demo_dataset(folder, scale=scale, force=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vinted_classifier.demo", description="Generate the synthetic Vinted-layout demo dataset."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = real sizes (3,547 rows, 429 test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.03)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-images", action="store_true", help="label files only")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        s = generate_demo_dataset(
            args.out_dir,
            scale=args.scale,
            seed=args.seed,
            label_noise=args.label_noise,
            workers=args.workers,
            images=not args.no_images,
            force=args.force,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {s['n_rows']} rows ({s['n_duplicates']} duplicates), {s['n_test']} test items, "
        f"{s['n_images']} images to {s['out_dir']} in {s['seconds']:.1f} s with {s['workers']} workers"
    )
    return 0
