"""One ordered parquet from index-keyed shards, in bounded memory (an external merge sort).

Workers write shards in whatever order rows reached them. ``merge_shards``:

1. reads every shard in chunks of ``chunk_rows`` rows, sorts each chunk by ``index`` and spills it to
   a local run file (memory: one chunk);
2. merges the runs with a vectorised k-way merge: each step takes, from every run's current batch,
   the rows up to the smallest "last index" among them (all smaller indexes are then known), sorts
   that slice and appends it to every output (memory: k batches of ``read_rows`` rows).

So memory does not grow with the job, only with the number of runs (job / chunk_rows) times a small
batch. Outputs are written to a local temporary file and moved into place (locally by rename,
elsewhere by one streamed upload), so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
INDEX = "index"


@dataclass(frozen=True)
class MergedOutput:
    """One ordered file to write: its final path, the columns it keeps and their schema (with metadata)."""

    path: str
    schema: object  # pyarrow.Schema of the kept columns, in order


class _SortedRun:
    """A spilled, sorted run, read back ``read_rows`` rows at a time."""

    def __init__(self, path: Path, read_rows: int):
        import pyarrow.parquet as pq

        self._batches = pq.ParquetFile(path).iter_batches(batch_size=read_rows)
        self.current = None
        self.refill()

    def refill(self) -> None:
        import pyarrow as pa

        batch = next(self._batches, None)
        self.current = None if batch is None else pa.Table.from_batches([batch])

    def take_through(self, bound: int):
        """Rows with index <= bound from the current batch (the batch is sorted)."""
        indexes = self.current.column(INDEX).to_numpy()
        count = int(np.searchsorted(indexes, bound, side="right"))
        taken, self.current = self.current.slice(0, count), self.current.slice(count)
        if self.current.num_rows == 0:
            self.refill()
        return taken


def _spill_sorted_runs(shards: list[str], folder: Path, chunk_rows: int) -> list[Path]:
    """Every shard, ``chunk_rows`` at a time, sorted by index into local run files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .inputs import open_parquet

    runs = []
    for shard in shards:
        with open_parquet(shard) as parquet:
            if INDEX not in parquet.schema_arrow.names:
                raise ValueError(f"{shard}: shard has no {INDEX!r} column; found {parquet.schema_arrow.names}")
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                if batch.num_rows:
                    run = folder / f"run-{len(runs):06d}.parquet"
                    pq.write_table(pa.Table.from_batches([batch]).sort_by(INDEX), run)
                    runs.append(run)
    return runs


def _merged_slices(runs: list[Path], read_rows: int) -> Iterator:
    """Tables of rows in increasing index order, each bounded by len(runs) * read_rows rows."""
    import pyarrow as pa

    open_runs = [run for run in (_SortedRun(path, read_rows) for path in runs) if run.current is not None]
    while open_runs:
        bound = min(run.current.column(INDEX)[-1].as_py() for run in open_runs)
        parts = [run.take_through(bound) for run in open_runs]
        yield pa.concat_tables([part for part in parts if part.num_rows]).sort_by(INDEX)
        open_runs = [run for run in open_runs if run.current is not None]


def _publish(local: Path, target: str) -> None:
    """Move a finished local file to ``target``: a rename locally, one streamed upload elsewhere."""
    from apache_beam.io.filesystems import FileSystems

    from ..utils import atomic_path

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
        raise ValueError(f"input index {repeated} appears in more than one shard of {shards[:3]}; "
                         "were two jobs written into one shard folder?")


def merge_shards(shards: list[str], outputs: list[MergedOutput], *, chunk_rows: int = 200_000,
                 read_rows: int = 4096) -> int:
    """Merge index-keyed shards into each output in index order; returns the number of rows.

    Raises if an index repeats (two shards claiming one input row means the job ran twice into one folder).
    """
    import pyarrow.parquet as pq

    rows, last = 0, -1
    with tempfile.TemporaryDirectory(prefix="vinted-merge-") as scratch:
        folder = Path(scratch)
        runs = _spill_sorted_runs(shards, folder, chunk_rows)
        locals_ = [folder / f"out-{i}.parquet" for i in range(len(outputs))]
        writers = [pq.ParquetWriter(path, output.schema) for path, output in zip(locals_, outputs)]
        try:
            for table in _merged_slices(runs, read_rows):
                indexes = table.column(INDEX).to_numpy()
                _check_increasing(indexes, last, shards)
                last = int(indexes[-1])
                rows += table.num_rows
                for writer, output in zip(writers, outputs):
                    writer.write_table(table.select(output.schema.names).cast(output.schema))
        finally:
            for writer in writers:
                writer.close()
        for local, output in zip(locals_, outputs):
            _publish(local, output.path)
    log.info("merged %d rows from %d shard(s) into %s", rows, len(shards), [o.path for o in outputs])
    return rows
