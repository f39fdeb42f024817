"""Large requests: one request of 1, 32, 256 and 1,024 images, the server (split execution) vs in-process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import harness

TITLE = "12. Large requests: split execution vs in-process SavedModel"
TIMEOUT_S = 2400
SIZES = (1, 32, 256, 1024)
IN_PROCESS_CHUNK = 32  # the largest batch the in-process baseline runs at once (see NOTES)
NOTES = """
The bench model (VGG19 at 160×128, untrained head, float32 export with the export's synthetic warm-up
records) is served by `python -m tf_serving_compat.server` with its defaults: REST, batching off, the
execution batch sized at load from the memory per image measured during warm-up and the 256 MiB budget
(`--execution_memory_mb`), never above the 32 images it was measured with, TensorFlow's default oneDNN
allocator. One client sends **one request of N images** (synthetic 160×128 JPEGs, b64), sequentially, and the
time is the request's wall time (the REST deadline is raised to 20 minutes: at the default 30 s, a
1,024-image VGG19 request on 2 cores ends in 504 `Deadline Exceeded`, never in a crash). The **in-process**
baseline calls the same SavedModel's `serving_default`
in this process after the same rewrite decision, on the same N images: in one call up to 32 images, in
calls of 32 above that — one call of 1,024 images would need the memory this issue is about (the server's
measured memory per image × 1,024, shown in the *per image* row), so no unsplit baseline exists for it.
Server and baseline alternate round by round; ratios are medians of per-round ratios. **Peak RSS** is the
server process's resident set, sampled every 5 ms during the request (its highest value); flat means the
1,024-image request needs no more memory than the 32-image one. The *system allocator* row starts a second
server with `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1` (memory back to the OS after every call) after the main rounds
and alternates 32-image requests between the two servers.
"""


def _body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


class _RssPeak:
    """Samples a process's RSS in a thread; ``peak_above(before)`` in MiB."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> _RssPeak:
        self.before = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return max(0, self.peak - self.before) / 2**20


def _start(version_base: Path, log_dir: Path, allocator: str) -> tuple[subprocess.Popen, str]:
    from bench import serve_load

    port = serve_load.free_port()
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ONEDNN_USE_SYSTEM_ALLOCATOR=allocator, PYTHONPATH=str(harness.PROJECT)
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_serving_compat.server",
                "--port=0",
                f"--rest_api_port={port}",
                f"--model_base_path={version_base}",
                "--file_system_poll_wait_seconds=0",
                "--rest_api_timeout_in_ms=1200000",
            ],
            cwd=harness.PROJECT,
            env=env,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    serve_load.wait_healthy(url, 300, process)
    return process, url


def _execution_line(log_dir: Path) -> str:
    lines = [line for line in (log_dir / "server.log").read_text().splitlines() if "images per model call" in line]
    return lines[-1].split(": ", 2)[-1] if lines else "?"


def run(ctx: harness.Context) -> list[dict]:
    import numpy as np
    import requests
    import tensorflow as tf

    from bench import serve_load
    from hostinfo import configure_rewrite
    from vinted_classifier.export import export_saved_model
    from vinted_classifier.model import build_model
    from vinted_classifier.precision import use_precision
    from vinted_classifier.runs import RunLabels

    rewrite = configure_rewrite("auto").mode
    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    with use_precision(harness.auto_policy()):
        bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    base = ctx.work / "saved_model" / "my_model"
    version_dir = export_saved_model(bundle.model, labels, base.parent, "my_model", version=1, model_cfg=cfg.model)
    del bundle
    sizes = ctx.pick(SIZES, (1, 8, 40))
    height, width = cfg.model.image_size
    images = serve_load.make_jpegs(max(sizes), max(height, width), seed=3)
    bodies = {n: _body(images[:n]) for n in sizes}
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def in_process(n: int) -> None:
        for start in range(0, n, IN_PROCESS_CHUNK):
            signature(image_bytes=tf.constant(images[start : min(n, start + IN_PROCESS_CHUNK)]))

    in_process(1)
    in_process(min(IN_PROCESS_CHUNK, max(sizes)))  # trace both shapes before timing
    repeats = ctx.pick(3, 1)
    process, url = _start(base, ctx.work / "server", "0")
    endpoint = f"{url}/v1/models/my_model:predict"
    session = requests.Session()
    times: dict[str, list[float]] = {}
    peaks: dict[int, list[float]] = {n: [] for n in sizes}
    pool_n = sizes[1]
    system_times: list[float] = []
    default_times: list[float] = []
    try:
        execution = _execution_line(ctx.work / "server")
        session.post(endpoint, data=bodies[sizes[1]], timeout=600)  # untimed: first call of the shape
        for _ in range(repeats):
            for n in sizes:
                started = time.perf_counter()
                in_process(n)
                times.setdefault(f"inproc-{n}", []).append(time.perf_counter() - started)
                with _RssPeak(process.pid) as rss:
                    started = time.perf_counter()
                    response = session.post(endpoint, data=bodies[n], timeout=1200)
                    elapsed = time.perf_counter() - started
                if response.status_code != 200 or len(response.json()["predictions"]) != n:
                    raise RuntimeError(f"{n}-image request: HTTP {response.status_code} {response.text[:300]}")
                times.setdefault(f"server-{n}", []).append(elapsed)
                peaks[n].append(rss.peak / 2**20)
        system_process, system_url = _start(base, ctx.work / "server-system-allocator", "1")
        try:
            system_endpoint = f"{system_url}/v1/models/my_model:predict"
            session.post(system_endpoint, data=bodies[pool_n], timeout=600)
            for round_ in range(2 * repeats):
                pair = [(system_endpoint, system_times), (endpoint, default_times)]
                for target, bucket in pair if round_ % 2 == 0 else pair[::-1]:
                    started = time.perf_counter()
                    session.post(target, data=bodies[pool_n], timeout=1200)
                    bucket.append(time.perf_counter() - started)
        finally:
            system_process.terminate()
            system_process.wait(60)
    finally:
        process.terminate()
        process.wait(60)

    rows = []
    for n in sizes:
        rows.append(
            harness.ratio_rows(
                "large_requests",
                f"{n} image(s) in one request: server",
                "in-process",
                times,
                n,
                f"server-{n}",
                f"inproc-{n}",
                goal=0.9,
                note=f"rewrite {rewrite}; {execution}",
            )
        )
    for n in sizes:
        rows.append(
            harness.row(
                "large_requests",
                f"{n} image(s): server peak RSS during the request",
                float(np.median(peaks[n])),
                "MiB",
                samples=peaks[n],
            )
        )
    for n in sizes[2:]:
        rows.append(
            harness.row(
                "large_requests",
                f"peak RSS, {n} vs {sizes[1]} images",
                float(np.median(peaks[n])),
                "MiB",
                baseline_name=f"{sizes[1]} images",
                baseline_value=float(np.median(peaks[sizes[1]])),
                goal=1.2,
                higher_is_better=False,
            )
        )
    rows.append(
        harness.row(
            "large_requests",
            f"{pool_n} images: server on the system allocator",
            float(np.median([pool_n / t for t in system_times])),
            "img/s",
            baseline_name="server on oneDNN's pool (default)",
            baseline_value=float(np.median([pool_n / t for t in default_times])),
            ratio=float(np.median([d / s_ for s_, d in zip(system_times, default_times, strict=True)])),
            samples=[pool_n / t for t in system_times],
            note="alternating, same window",
        )
    )
    return rows


if __name__ == "__main__":
    sys.exit(harness.child_main(sys.modules[__name__]))
