"""Small helpers shared by every stage: seeding, atomic writes, run metadata."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def set_seed(seed: int, *, deterministic: bool | None = None) -> None:
    """The one seed helper: Python, NumPy and (if imported) TensorFlow/Keras.

    ``deterministic=True`` also turns on TensorFlow op determinism (process-wide: every later op
    picks a deterministic kernel or raises), so two runs on the same machine give bit-identical
    weights; ``False`` turns it off again; ``None`` leaves it as it is.
    """
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    # TensorFlow only when seeding: this module is imported by TensorFlow-free modules (config, the CLI).
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    if deterministic is not None:
        # disable_op_determinism is not public; imported here for the same reason as keras above.
        from tensorflow.python.framework import config as tf_config  # noqa: PLC0415

        if deterministic:
            tf_config.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success only.

    A crash mid-write leaves ``target`` untouched (never half-written).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from other users
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(frame, path: str | Path, metadata: dict[bytes, bytes] | None = None) -> None:
    """Write a DataFrame to parquet atomically, with no index column.

    Text columns are stored as ``string`` (not pandas 3's default ``large_string``) so
    the files carry exactly the Vinted files' schema.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema = pa.schema(
        [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema],
        metadata={**(table.schema.metadata or {}), **(metadata or {})},
    )
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table.cast(schema), tmp)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def package_versions(
    names: tuple[str, ...] = (
        "tensorflow",
        "keras",
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "pillow",
    ),
) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
