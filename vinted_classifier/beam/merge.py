"""One ordered parquet from index-keyed shards, in bounded memory (an external merge sort).

Workers write shards in whatever order rows reached them. ``merge_shards``:

1. reads every shard in chunks of ``chunk_rows`` rows, sorts each chunk by ``index`` and spills it to
   a local run file (memory: one chunk);
2. merges the runs FAN_IN at a time (in several passes when there are more) with a vectorised k-way
   merge: each step takes, from every run's current batch, the rows up to the smallest "last index"
   among them (all smaller indexes are then known), sorts that slice and appends it to every output
   (memory: FAN_IN row groups of RUN_ROW_GROUP rows).

``find_duplicates`` runs the same external sort on the uuid to find uuids scored on several rows
(the pipeline itself never shuffles per-row data, so this is where duplicates are caught).

So memory does not grow with the job: one chunk, then FAN_IN small row groups, then the output buffer.
Outputs are written to a local temporary file and moved into place (locally by rename, elsewhere by one
streamed upload), so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..utils import atomic_path
from .inputs import open_parquet

log = logging.getLogger(__name__)
INDEX = "index"
# Rows held at once in each phase (a few MB of formatted predictions; measured: the merge adds
# ~50 MB of peak RSS to the driver whatever the job): a spilled chunk, the k runs' read batches
# together (read_rows = CHUNK_ROWS // k), and the output buffer.
CHUNK_ROWS = 16_384


# Runs are written in row groups of RUN_ROW_GROUP rows (a reader decodes one row group at a time) and
# merged FAN_IN at a time, in several passes if needed: the merge holds FAN_IN small row groups,
# whatever the number of runs (an n-row job has n / CHUNK_ROWS runs).
RUN_ROW_GROUP, FAN_IN = 1024, 32


def _read_rows(read_rows: int | None) -> int:
    """Rows per batch read from each run: one run row group."""
    return read_rows or RUN_ROW_GROUP


@dataclass(frozen=True)
class MergedOutput:
    """One ordered file to write: its final path, the columns it keeps and their schema (with metadata)."""

    path: str
    schema: pa.Schema  # the kept columns, in order


class _SortedRun:
    """A spilled, sorted run, read back ``read_rows`` rows at a time."""

    def __init__(self, path: Path, read_rows: int, key: str = INDEX):
        self.key = key
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=read_rows)
        self.current = None
        self.refill()

    def last_key(self):
        """The largest key of the current batch (every smaller key of this run has been read)."""
        if self.current is None:
            raise ValueError("the run is exhausted")
        return self.current.column(self.key)[-1].as_py()

    def refill(self) -> None:
        batch = next(self._batches, None)
        self.current = None if batch is None else pa.Table.from_batches([batch])

    def take_through(self, bound):
        """Rows with key <= bound from the current batch (the batch is sorted on the key)."""
        keys = self.current.column(self.key).to_numpy(zero_copy_only=False)
        count = int(np.searchsorted(keys, bound, side="right"))
        taken, self.current = self.current.slice(0, count), self.current.slice(count)
        if self.current.num_rows == 0:
            self.refill()
        return taken


def _spill_sorted_runs(
    shards: list[str], folder: Path, chunk_rows: int, key: str = INDEX, columns: list[str] | None = None
) -> list[Path]:
    """Every shard, ``chunk_rows`` at a time, sorted on ``key`` into local run files."""
    folder.mkdir(parents=True, exist_ok=True)
    runs: list[Path] = []
    for shard in shards:
        with open_parquet(shard) as parquet:
            if INDEX not in parquet.schema_arrow.names:
                raise ValueError(f"{shard}: shard has no {INDEX!r} column; found {parquet.schema_arrow.names}")
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                if batch.num_rows:
                    run = folder / f"run-{len(runs):06d}.parquet"
                    pq.write_table(pa.Table.from_batches([batch]).sort_by(key), run, row_group_size=RUN_ROW_GROUP)
                    runs.append(run)
                    pa.default_memory_pool().release_unused()  # the allocator keeps freed chunks otherwise
    return runs


def _merged_slices(runs: list[Path], read_rows: int, key: str = INDEX) -> Iterator:
    """Tables of rows in increasing ``key`` order, each bounded by len(runs) * read_rows rows."""
    open_runs = [run for run in (_SortedRun(path, read_rows, key) for path in runs) if run.current is not None]
    while open_runs:
        bound = min(run.last_key() for run in open_runs)
        parts = [run.take_through(bound) for run in open_runs]
        yield pa.concat_tables([part for part in parts if part.num_rows]).sort_by(key)
        open_runs = [run for run in open_runs if run.current is not None]


def _reduce_runs(runs: list[Path], folder: Path, read_rows: int, key: str = INDEX) -> list[Path]:
    """Merge runs FAN_IN at a time into longer runs until at most FAN_IN remain (bounded memory per pass)."""
    level = 0
    while len(runs) > FAN_IN:
        level += 1
        merged: list[Path] = []
        for start in range(0, len(runs), FAN_IN):
            path = folder / f"level{level}-{len(merged):06d}.parquet"
            writer = None
            for table in _merged_slices(runs[start : start + FAN_IN], read_rows, key):
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table, row_group_size=RUN_ROW_GROUP)
            if writer is not None:
                writer.close()
                merged.append(path)
            for old in runs[start : start + FAN_IN]:
                old.unlink()
        runs = merged
    return runs


def find_duplicates(
    shards: list[str], id_column: str, *, chunk_rows: int = CHUNK_ROWS, read_rows: int | None = None
) -> dict[int, tuple[str, str]]:
    """{index: (uuid, reason)} for every row whose uuid is on several rows: an external sort on the uuid
    (memory: a chunk, then k small batches; the answer itself is as large as the duplicates)."""
    duplicates: dict[int, tuple[str, str]] = {}

    def report(group) -> None:
        for uuid, indexes in _groups_of_several(group, id_column):
            for index in indexes:
                duplicates[index] = (uuid, f"duplicate uuid: on input rows {indexes[:10]}")

    with tempfile.TemporaryDirectory(prefix="vinted-dups-") as scratch:
        runs = _spill_sorted_runs(shards, Path(scratch), chunk_rows, id_column, [id_column, INDEX])
        runs = _reduce_runs(runs, Path(scratch), _read_rows(read_rows), id_column)
        carry = None  # rows of the last uuid seen: the next slice may hold more of it
        for table in _merged_slices(runs, _read_rows(read_rows), id_column):
            table = table if carry is None else pa.concat_tables([carry, table])
            keys = table.column(id_column).to_numpy(zero_copy_only=False)
            split = int(np.searchsorted(keys, keys[-1], side="left"))
            report(table.slice(0, split))
            carry = table.slice(split)
        if carry is not None:
            report(carry)
    return duplicates


def _groups_of_several(table, id_column: str):
    """(uuid, sorted indexes) for each uuid on more than one row of a uuid-sorted table."""
    keys = table.column(id_column).to_numpy(zero_copy_only=False)
    indexes = table.column(INDEX).to_numpy()
    if len(keys) < 2:
        return
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1], [True]]))
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        if stop - start > 1:
            yield keys[start], sorted(int(i) for i in indexes[start:stop])


def _publish(local: Path, target: str) -> None:
    """Move a finished local file to ``target``: a rename locally, one streamed upload elsewhere."""
    # Apache Beam is an optional extra ([beam]); the merge itself runs without it.
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    if FileSystems.get_scheme(target) is None:
        with atomic_path(target, suffix=".parquet") as tmp:
            shutil.move(local, tmp)
        return
    with FileSystems.create(target) as out, local.open("rb") as source:
        shutil.copyfileobj(source, out, length=8 << 20)


def _check_increasing(indexes: np.ndarray, last: int, shards: list[str]) -> None:
    """Indexes strictly increase across the merged stream; a repeat names the index."""
    steps = np.diff(np.concatenate([[last], indexes]))
    if np.any(steps <= 0):
        repeated = int(indexes[int(np.argmax(steps <= 0))])
        raise ValueError(
            f"input index {repeated} appears in more than one shard of {shards[:3]}; "
            "were two jobs written into one shard folder?"
        )


def merge_shards(
    shards: list[str],
    outputs: list[MergedOutput],
    *,
    chunk_rows: int = CHUNK_ROWS,
    read_rows: int | None = None,
    drop: set[int] | frozenset[int] = frozenset(),
) -> int:
    """Merge index-keyed shards into each output in index order, leaving out the indexes in ``drop``;
    returns the number of rows written.

    Raises if an index repeats (two shards claiming one input row means the job ran twice into one folder).
    """
    with tempfile.TemporaryDirectory(prefix="vinted-merge-") as scratch:
        folder = Path(scratch)
        runs = _spill_sorted_runs(shards, folder, chunk_rows)
        runs = _reduce_runs(runs, folder, _read_rows(read_rows))
        ordered = _kept_in_order(_merged_slices(runs, _read_rows(read_rows)), shards, drop)
        locals_ = [folder / f"out-{i}.parquet" for i in range(len(outputs))]
        rows = _write_outputs(ordered, locals_, outputs, chunk_rows)
        for local, output in zip(locals_, outputs, strict=True):
            _publish(local, output.path)
    log.info("merged %d rows from %d shard(s) into %s", rows, len(shards), [o.path for o in outputs])
    return rows


def _kept_in_order(tables: Iterator, shards: list[str], drop: set[int] | frozenset[int]) -> Iterator:
    """The merged tables, checked for a repeated index, without the rows whose index is in ``drop``."""
    dropped = pa.array(sorted(drop), pa.int64())
    last = -1
    for table in tables:
        indexes = table.column(INDEX).to_numpy()
        _check_increasing(indexes, last, shards)
        last = int(indexes[-1])
        if len(dropped):
            table = table.filter(pc.invert(pc.is_in(table.column(INDEX), value_set=dropped)))
        yield table


def _write_outputs(tables: Iterator, paths: list[Path], outputs: list[MergedOutput], chunk_rows: int) -> int:
    """Append ``tables`` to one local parquet per output (its columns and schema), one row group per
    ``chunk_rows`` rows rather than one per merge step; returns the rows written."""
    writers = [pq.ParquetWriter(path, output.schema) for path, output in zip(paths, outputs, strict=True)]
    pending: list = []
    rows = pending_rows = 0

    def flush() -> None:
        if pending:
            table = pa.concat_tables(pending)
            for writer, output in zip(writers, outputs, strict=True):
                writer.write_table(table.select(output.schema.names).cast(output.schema))
            pa.default_memory_pool().release_unused()
        pending.clear()

    try:
        for table in tables:
            rows += table.num_rows
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= chunk_rows:
                flush()
                pending_rows = 0
        flush()
    finally:
        for writer in writers:
            writer.close()
    return rows
