"""Batch scoring on Apache Beam (DirectRunner, 2 worker processes) vs `vinted predict`, end to end."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bench import harness
from vinted_classifier.config import load_config
from vinted_classifier.contract import RunLabels

TITLE = "9. Batch scoring: Apache Beam (DirectRunner, 2 processes) vs vinted predict"
NOTES = """
Both variants score every uuid of the demo `test.parquet` repeated `BENCH_BEAM_COPIES` times under new
uuids (default 7: 3,003 images; hard links) from files on disk and write the homework parquet:
`vinted predict` (`predict.predict_test_set`: load `model.keras`, decode-check every image, stream
with `tf.data`, `model.predict`, write) and `vinted predict --runner DirectRunner --direct_num_workers=2
--direct_running_mode=multi_processing` (`beam_predict.run_beam_predict`: plan row-group slices from
the parquet footer, start two SDK worker processes, each loads the exported SavedModel, reads image
bytes through Beam's FileSystems, `RunInference` on batches through `serving_default`, formats ~1k
rows at a time into sharded parquet; then the launcher merges the shards into the ordered file). Same
weights (VGG19, untrained head: irrelevant to speed), same batch size, same host-aware rewrite
(`auto`); the SavedModel is a float32 export of the same model. Each call includes its own model
loading, worker start-up and (Beam) the merge. On 2 cores the two Beam workers share the cores that
`vinted predict` uses alone. `BENCH_BEAM_VARIANTS=beam,beam_shared,beam_1thread` adds Beam with one
model shared by both workers (`large_model`) and with one TensorFlow thread per worker.

History: on 2026-12-01 (AVX512_BF16 machine, 429 images, the pipeline of that day: ids listed by the
driver, one writer) Beam ran at 0.68x, put down to a fixed start-up of 5-9 s. The pipeline's own cost
per image, measured with a near-free model (`python -m bench.bench_beam scale`), is ~0.9 ms of one
core, ~1% of VGG19's; a job planned as too few work items leaves a worker idle (one 500-row slice did,
in development; now ~256 slices per job).
"""
TIMEOUT_S = 2400  # 7 copies of the test set, 2 rounds of 2 variants on 2 shared cores


def _make_run(ctx, cfg):
    """A run folder (model.keras, config.yaml, labels.json) and its SavedModel export; untrained head."""
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier.export import export_saved_model  # noqa: PLC0415
    from vinted_classifier.model import build_model  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    categories, tags = harness.vocabulary(cfg)
    with use_precision("float32"):
        bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    bundle.model.save(run_dir / "model.keras")
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    labels.save(run_dir / "labels.json")
    version = export_saved_model(
        bundle.model, labels, cfg.export.saved_model_dir, cfg.export.model_name, model_cfg=cfg.model
    )
    return run_dir, version


def _scaled_test_set(ctx, cfg, copies: int):
    """``copies`` x the test set under new uuids (hard links), so a fixed start-up cost is amortised as at scale."""
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier import data  # noqa: PLC0415

    folder = ctx.work / f"test_x{copies}"
    folder.mkdir(parents=True, exist_ok=True)
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()
    new_ids = []
    for copy in range(copies):
        for uuid in ids:
            new = f"{uuid}_{copy}"
            os.link(cfg.data.images / f"{uuid}.jpeg", folder / f"{new}.jpeg")
            new_ids.append(new)
    frame = pd.DataFrame({cfg.data.id_column: pd.array(new_ids, dtype="string[pyarrow]")})
    frame.to_parquet(folder / cfg.data.test_file, index=False)
    os.link(cfg.data.data_dir / cfg.data.labels_file, folder / cfg.data.labels_file)  # the vocabulary
    return folder


def _cpu() -> str:
    """The CPU this ran on (the report's header may name another machine: see run_all)."""
    machine = harness.machine()
    flags = ", ".join(machine.get("cpu_bf16_flags") or []) or "no AVX512_BF16/AMX"
    return f"{machine.get('cpu_model', 'unknown CPU')} ({flags}), {machine.get('usable_cores')} cores"


BEAM_VARIANTS = {  # name -> (label, BeamPredictJob overrides)
    "beam": ("Beam DirectRunner, 2 worker processes", {}),
    "beam_shared": ("Beam, 2 workers sharing one model (large_model)", {"share_model": True}),
    "beam_1thread": ("Beam, 2 workers, 1 TensorFlow thread each", {"threads_per_worker": 1}),
}


def run(ctx: harness.Context) -> list[dict]:
    """``vinted predict`` vs Beam variants, alternating; env BENCH_BEAM_COPIES (test set copies, default 7:
    3,003 images) and BENCH_BEAM_VARIANTS (comma-separated names of BEAM_VARIANTS, default ``beam``)."""
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier import data  # noqa: PLC0415
    from vinted_classifier.beam_predict import BeamPredictJob, run_beam_predict  # noqa: PLC0415
    from vinted_classifier.predict import predict_test_set  # noqa: PLC0415

    copies = int(os.environ.get("BENCH_BEAM_COPIES", ctx.pick(7, 1)))
    names = os.environ.get("BENCH_BEAM_VARIANTS", "beam").split(",")
    cfg = harness.bench_config(ctx)
    cfg = harness.bench_config(ctx, _scaled_test_set(ctx, cfg, copies))
    run_dir, version = _make_run(ctx, cfg)
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()
    batch = cfg.train.batch_size
    repeats = int(os.environ.get("BENCH_BEAM_ROUNDS", ctx.pick(2, 1)))
    local_out = ctx.work / "local" / "predictions.parquet"
    base_job = BeamPredictJob(
        saved_model=str(version),
        input_parquet=str(cfg.data.data_dir / cfg.data.test_file),
        images=str(cfg.data.images),
        out_path="",
        batch_size=batch,
        rewrite="auto",
    )
    beam_args = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]

    def local():
        predict_test_set(run_dir, out_path=local_out, batch_size=batch, rewrite="auto")

    def beam_variant(name):
        job = dataclasses.replace(
            base_job, out_path=str(ctx.work / name / "predictions.parquet"), **BEAM_VARIANTS[name][1]
        )

        def call():
            result = run_beam_predict(job, beam_args)
            assert result.counters["images_scored"] == len(ids), result.counters

        return call

    cpu: dict[str, list[float]] = {}

    def with_cpu(name, call):
        """The call, and the CPU seconds it used in this process and every (finished) child process."""

        def wrapped():
            before = _cpu_seconds()
            call()
            _wait_for_workers_to_exit()
            cpu.setdefault(name, []).append(_cpu_seconds() - before)

        return wrapped

    variants = {name: with_cpu(name, beam_variant(name)) for name in names}
    times = harness.interleaved({**variants, "local": with_cpu("local", local)}, repeats=repeats, warmup=0)
    local_frame = pd.read_parquet(local_out)
    for name in names:
        written = pd.read_parquet(ctx.work / name / "predictions.parquet")
        assert written["uuid"].tolist() == local_frame["uuid"].tolist(), f"{name} and vinted predict differ in uuids"
    return [
        harness.ratio_rows(
            "beam",
            BEAM_VARIANTS[name][0],
            "vinted predict (one process)",
            times,
            len(ids),
            name,
            "local",
            goal=0.8,
            note=f"{len(ids)} images (the demo test set x{copies}), {cfg.model.backbone} float32 graph + rewrite auto, "
            f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}, batch {batch}, {repeats} rounds alternating, "
            f"model load, worker start and the merge included; on {_cpu()}",
        )
        for name in names
    ] + [_cpu_row(name, cpu[name], cpu["local"], len(ids)) for name in names]


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _wait_for_workers_to_exit(timeout_s: float = 30.0) -> None:
    """SDK worker processes are counted in RUSAGE_CHILDREN only once they have exited and been reaped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return
        time.sleep(0.2)
    raise RuntimeError(f"child processes still running {timeout_s} s after the job: their CPU would not count")


def _cpu_row(name: str, variant_s: list[float], local_s: list[float], images: int) -> dict:
    """CPU per image (all processes): what contention does not change, unlike img/s on a shared machine."""
    ms = [1000 * s / images for s in variant_s]
    base = [1000 * s / images for s in local_s]
    ratio = statistics.median(b / v for b, v in zip(base, ms, strict=True))
    return {
        "bench": "beam",
        "name": f"{BEAM_VARIANTS[name][0]}: CPU per image",
        "value": round(statistics.median(ms), 2),
        "unit": "ms CPU/img",
        "baseline_name": "vinted predict: CPU per image",
        "baseline_value": round(statistics.median(base), 2),
        "ratio": round(ratio, 3),
        "goal": None,
        "goal_met": None,
        "higher_is_better": False,
        "samples": [round(v, 2) for v in ms],
        "note": "user+system CPU of every process (driver, workers; the local process), per image; "
        "ratio = vinted predict's / Beam's (above 1: Beam spends less CPU per image)",
    }


# --------------------------------------------------------------------------- scale: memory vs job size

SCALE_CACHE = "~/.cache/vinted-classifier/beam-scale"
SCALE_HELP = """Memory of Beam scoring vs job size: `python -m bench.bench_beam scale --sizes 10000 100000`.

Each size runs in a fresh process: a synthetic job of N tiny JPEGs (32x32; 512 distinct images
hard-linked under N uuids, generated once under ~/.cache) scored by a tiny exported model
(MobileNetV2 32x32, untrained) on the DirectRunner with 2 worker processes, merged into the one
ordered file. A sampler reads VmHWM (peak RSS) of the driver and of every descendant process every
0.2 s. What is measured is the pipeline's memory and per-element cost, not the backbone's."""


def synthetic_job(n_images: int, cache: str = SCALE_CACHE):
    """(folder, ids parquet): ``n_images`` uuids and ``<uuid>.jpeg`` files, made once and reused."""
    folder = Path(cache).expanduser() / f"n{n_images}"
    ids_path = folder / "test.parquet"
    if ids_path.is_file():
        return folder, ids_path
    distinct = Path(cache).expanduser() / "distinct"
    distinct.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = []
    for k in range(512):
        path = distinct / f"{k:03d}.jpeg"
        if not path.is_file():
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            path.write_bytes(buffer.getvalue())
        sources.append(path)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:08d}-{rng.integers(1 << 62):016x}" for i in range(n_images)]
    for i, uuid in enumerate(ids):
        os.link(sources[i % len(sources)], images / f"{uuid}.jpeg")
        if i % 20_000 == 0:
            print(f"  linked {i}/{n_images} images", flush=True)
    pq.write_table(pa.table({"uuid": pa.array(ids, pa.string())}), ids_path.with_suffix(".tmp"), row_group_size=10_000)
    ids_path.with_suffix(".tmp").rename(ids_path)
    return folder, ids_path


def tiny_export(cache: str = SCALE_CACHE):
    """A tiny SavedModel export (MobileNetV2 at 32x32, no pretrained weights), made once."""

    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier.export import export_saved_model  # noqa: PLC0415
    from vinted_classifier.model import build_model  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    base = Path(cache).expanduser() / "saved_model"
    made = sorted(
        (p for p in (base / "tiny").glob("[0-9]*") if (p / "saved_model.pb").is_file()), key=lambda p: int(p.name)
    )
    if made:  # found without importing TensorFlow: the driver being measured must not load it
        return made[-1]
    cfg = load_config(
        None,
        ["model.backbone=mobilenet_v2", "model.image_height=32", "model.image_width=32", "model.dense_units=16"],
        presets=["tiny"],
    )
    categories, tags = ["BLOUSES", "CASUAL_DRESSES", "SHIRTS"], ["polka dot", "floral", "checker"]
    with use_precision("float32"):
        bundle = build_model(cfg.model, categories, tags, "cc3")
    labels = RunLabels("cc3", categories, tags, [0.5, 0.5, 0.5], cfg.model.image_size)
    return export_saved_model(bundle.model, labels, base, "tiny", model_cfg=cfg.model)


class PeakRss:
    """Samples VmHWM (peak RSS, kB) of this process and every descendant, keeping each pid's largest value."""

    def __init__(self, interval_s: float = 0.2):
        self.peaks_kb: dict[int, tuple[str, int]] = {}
        self._interval, self._stop = interval_s, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._sample()
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self):
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                with open(f"/proc/{process.pid}/status") as status:
                    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
                role = "driver" if process.pid == me.pid else " ".join(process.cmdline()[:4])
            except (OSError, StopIteration, psutil.Error):
                continue
            old = self.peaks_kb.get(process.pid, ("", 0))[1]
            self.peaks_kb[process.pid] = (role, max(old, hwm))


def _own_hwm_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _is_python_worker(command: str) -> bool:
    """An SDK worker interpreter (not the shell that the DirectRunner starts it through)."""
    return "sdk_worker_main" in command and "python" in command.split()[0]


def scale_once(n_images: int, workers: int = 2, share_model: bool = False) -> dict:
    """Score the synthetic job of ``n_images``; peak RSS per process (MiB), wall time, counters."""

    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier.beam_predict import BeamPredictJob, merge_job_shards, run_beam_predict  # noqa: PLC0415

    folder, ids_path = synthetic_job(n_images)
    version = tiny_export()
    out = folder / "out" / "predictions.parquet"
    job = BeamPredictJob(
        saved_model=str(version),
        input_parquet=str(ids_path),
        images=str(folder / "images"),
        out_path=str(out),
        batch_size=64,
        rewrite="off",
        detailed=True,
        share_model=share_model,
        shards_only=True,
    )  # the merge runs below, measured on its own
    args = ["--runner=DirectRunner", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    started = time.perf_counter()
    with PeakRss() as rss:
        result = run_beam_predict(job, args)
        pipeline_s = time.perf_counter() - started
        driver_after_pipeline = _own_hwm_kb()
        merged, _ = merge_job_shards(job, RunLabels.load(version / "assets" / "labels.json"))
    wall = time.perf_counter() - started
    assert result.counters["images_scored"] == n_images == merged, (result.counters, merged)
    driver = next(kb for role, kb in rss.peaks_kb.values() if role == "driver")
    workers_kb = sorted(kb for role, kb in rss.peaks_kb.values() if _is_python_worker(role))
    others = {role: kb for role, kb in rss.peaks_kb.values() if role != "driver" and not _is_python_worker(role)}
    return {
        "images": n_images,
        "wall_s": round(wall, 1),
        "pipeline_s": round(pipeline_s, 1),
        "img_per_s": round(n_images / wall, 1),
        "driver_peak_mib": round(driver / 1024, 1),
        "driver_peak_before_merge_mib": round(driver_after_pipeline / 1024, 1),
        "worker_peak_mib": [round(kb / 1024, 1) for kb in workers_kb],
        "other_children_peak_mib": {k: round(v / 1024, 1) for k, v in others.items()},
        "rows_merged": merged,
        "counters": result.counters,
    }


def scale_main(argv: list[str]) -> int:
    """Each size in a fresh interpreter (so one size's peak cannot hide in another's), one JSON line each."""

    parser = argparse.ArgumentParser(prog="python -m bench.bench_beam scale", description=SCALE_HELP)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--share-model", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child's size
    args = parser.parse_args(argv)
    if args.one is not None:
        print("RESULT " + json.dumps(scale_once(args.one, args.workers, args.share_model)), flush=True)
        return 0
    tiny_export()  # here, not in the measured child
    for size in args.sizes:
        synthetic_job(size)
        command = [
            sys.executable,
            "-m",
            "bench.bench_beam",
            "scale",
            "--one",
            str(size),
            "--workers",
            str(args.workers),
        ]
        if args.share_model:
            command.append("--share-model")
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"size {size} failed (rc {done.returncode}):\n{done.stderr[-4000:]}", flush=True)
            return 1
        print(lines[-1][len("RESULT ") :], flush=True)
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["scale"]:
        sys.exit(scale_main(sys.argv[2:]))
    sys.exit(harness.child_main(sys.modules[__name__]))
