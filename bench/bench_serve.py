"""Serving: REST throughput/latency at 1 and 16 clients vs in-process SavedModel calls; request formats."""

from __future__ import annotations

import base64
import json
import threading
import time

from bench import harness

TITLE = "5. Serving: REST server vs in-process SavedModel"
NOTES = """
The model (VGG19 at the run's policy, untrained head) is exported with `export.export_saved_model`
and served by `python -m tf_serving_compat.server` (what `vinted serve` runs) on a free
127.0.0.1 port, started and stopped by `bench/serve_load.py`'s helpers; the load is
`serve_load.run_load` (N client threads, one image per request, b64 JPEG, `serving_default`).
Payloads are real demo test JPEGs. The in-process baseline calls the same SavedModel's
`serving_default` signature (`tf.saved_model.load`) in this process, one call per batch of 1 or 16
images, after the same host-aware mixed-precision rewrite decision the server makes at start; server and
baseline never run at the same time, and they alternate round by round.
Batching: `max_batch_size 16`, `batch_timeout_micros 5000`, `num_batch_threads 1` (2 cores: one
batch at a time already uses both). A lone request waits out the batch timeout, which is why the
1-client row pays it in latency; a 20 ms timeout (fuller batches from closed-loop clients) is measured
too, like *batching off*, each in its own server start after the interleaved rounds. The load generator's 16
client threads
run on the same 2 cores as the server, which the in-process baseline does not pay for. *Request bytes*
compares one image's JSON body: b64 JPEG vs the
seed's float-pixel format (`serving_pixels`, pixels in [0, 1] as JSON numbers, already resized to the
model's input size — the smallest the seed format can be); *format throughput* posts each body
format from 4 client threads against the batching server.
"""


def batching_text(timeout_ms: int) -> str:
    """TF Serving BatchingParameters text: batches of up to 16, one batch thread (2 cores)."""
    return (
        f"max_batch_size {{ value: 16 }}\nbatch_timeout_micros {{ value: {timeout_ms * 1000} }}\n"
        "max_enqueued_batches { value: 64 }\nnum_batch_threads { value: 1 }\n"
    )


MAIN_TIMEOUT_MS, ALT_TIMEOUT_MS = 5, 20


def _post_bodies(url: str, bodies: list[str], clients: int, per_client: int, max_seconds: float) -> dict:
    """Post pre-built JSON bodies from ``clients`` threads (used for the format comparison only;
    the concurrency runs use ``serve_load.run_load``)."""
    import requests

    latencies, errors, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        with requests.Session() as session:
            for k in range(per_client):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(
                        url,
                        data=bodies[(index + k) % len(bodies)],
                        headers={"content-type": "application/json"},
                        timeout=120,
                    )
                    ok = response.status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    (latencies.append(time.perf_counter() - started) if ok else errors.__setitem__(0, errors[0] + 1))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"ok": len(latencies), "errors": errors[0], "wall_s": wall, "images_per_s": len(latencies) / wall}


def run(ctx: harness.Context) -> list[dict]:
    import argparse

    import numpy as np
    import tensorflow as tf

    from bench import serve_load
    from hostinfo import configure_rewrite
    from vinted_classifier import data, pipeline
    from vinted_classifier.export import export_saved_model
    from vinted_classifier.model import build_model
    from vinted_classifier.precision import use_precision
    from vinted_classifier.runs import RunLabels

    # The server's start-up decision (--mixed_precision_rewrite=auto), made before this process runs
    # any graph: on a bf16 CPU baseline and server then both run the bf16-rewritten graph.
    rewrite = configure_rewrite("auto").mode
    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()[: ctx.pick(64, 8)]
    paths = [cfg.data.images / f"{uuid}.jpeg" for uuid in ids]
    jpegs = [p.read_bytes() for p in paths]
    policy = harness.auto_policy()
    with use_precision(policy):
        bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    base = ctx.work / "saved_model"
    version_dir = export_saved_model(bundle.model, labels, base, "my_model", version=1, model_cfg=cfg.model)
    saved_mb = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file()) / 2**20
    del bundle

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    requests_1 = ctx.pick(40, 3)
    per_client_16 = ctx.pick(8, 1)
    repeats = ctx.pick(3, 2)
    max_seconds = ctx.pick(90.0, 20.0)

    def inprocess(batch: int, calls: int) -> list[float]:
        latencies = []
        for k in range(calls):
            chosen = [jpegs[(k * batch + i) % len(jpegs)] for i in range(batch)]
            started = time.perf_counter()
            out = signature(image_bytes=tf.constant(chosen))
            out["cc3" if "cc3" in out else next(iter(out))].numpy()
            latencies.append(time.perf_counter() - started)
        return latencies

    def start(timeout_ms: int | None):
        batching_file = None
        if timeout_ms is not None:
            batching_file = ctx.work / f"batching-{timeout_ms}ms.txt"
            batching_file.write_text(batching_text(timeout_ms))
        args = argparse.Namespace(
            model_name="my_model",
            model_base_path=base / "my_model",
            enable_batching=timeout_ms is not None,
            batching_parameters_file=batching_file,
        )
        log_dir = ctx.work / f"server-{timeout_ms}"
        log_dir.mkdir(exist_ok=True)
        process, url = serve_load.start_server(args, log_dir)
        try:
            serve_load.wait_healthy(url, 180, process)
        except RuntimeError:
            stop(process)
            raise RuntimeError((log_dir / "server.stderr").read_text(errors="replace")[-3000:]) from None
        serve_load.run_load(url, "my_model", jpegs[:2], 1, 2, 60, 1)  # warm-up (traces), untimed
        return process, url

    def stop(process) -> None:
        process.terminate()
        try:
            process.wait(30)
        except Exception:  # noqa: BLE001
            process.kill()
            process.wait()

    rows = []
    inprocess(1, 2), inprocess(16, 1)  # warm-up
    results: dict[str, list] = {"rest1": [], "rest16": [], "in1": [], "in16": []}
    process, url = start(MAIN_TIMEOUT_MS)
    try:
        for r in range(repeats):
            order = ["rest1", "in1", "rest16", "in16"]
            for key in order if r % 2 == 0 else order[::-1]:
                if key == "rest1":
                    results[key].append(serve_load.run_load(url, "my_model", jpegs, 1, requests_1, max_seconds, 1))
                elif key == "rest16":
                    results[key].append(serve_load.run_load(url, "my_model", jpegs, 16, per_client_16, max_seconds, 1))
                elif key == "in1":
                    lat = inprocess(1, requests_1)
                    results[key].append({"images_per_s": len(lat) / sum(lat), "lat": lat})
                else:
                    lat = inprocess(16, per_client_16)
                    results[key].append({"images_per_s": 16 * len(lat) / sum(lat), "lat": lat})

        # request formats, against the same (batching) server
        b64_body = json.dumps({"instances": [{"b64": base64.b64encode(jpegs[0]).decode()}]})
        pixels = pipeline.load_images([str(paths[0])], cfg.model.image_size)[0] / 255.0
        pixel_body = json.dumps({"signature_name": "serving_pixels", "instances": [pixels.tolist()]})
        b64_bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]}) for j in jpegs[:8]]
        pixel_bodies = [
            json.dumps(
                {
                    "signature_name": "serving_pixels",
                    "instances": [(pipeline.load_images([str(p)], cfg.model.image_size)[0] / 255.0).tolist()],
                }
            )
            for p in paths[:8]
        ]
        endpoint = f"{url}/v1/models/my_model:predict"
        fmt_n = ctx.pick(8, 2)
        _post_bodies(endpoint, pixel_bodies[:1], 1, 1, 60)  # trace the pixel signature
        fmt = {"b64": [], "pixels": []}
        for r in range(repeats):
            for key in ("b64", "pixels") if r % 2 == 0 else ("pixels", "b64"):
                fmt[key].append(
                    _post_bodies(endpoint, b64_bodies if key == "b64" else pixel_bodies, 4, fmt_n, max_seconds)
                )
    finally:
        stop(process)

    alternatives = {}
    for label, timeout_ms in (
        (f"batching on, batch_timeout {ALT_TIMEOUT_MS} ms", ALT_TIMEOUT_MS),
        ("batching off", None),
    ):
        process, url = start(timeout_ms)
        try:
            alternatives[label] = [
                serve_load.run_load(url, "my_model", jpegs, 16, per_client_16, max_seconds, 1)
                for _ in range(max(1, repeats - 1))
            ]
        finally:
            stop(process)

    def rate(key):
        return [x["images_per_s"] for x in results[key]]

    def pct(values, q):
        return float(np.percentile(values, q)) * 1000

    for clients, rest, inp, goal in ((1, "rest1", "in1", None), (16, "rest16", "in16", 0.85)):
        paired = [a / b for a, b in zip(rate(rest), rate(inp), strict=True)]
        lat = [x["latency_ms"] for x in results[rest]]
        in_lat = [v for x in results[inp] for v in x["lat"]]
        errors = sum(x["errors"] for x in results[rest])
        rows.append(
            harness.row(
                "serve",
                f"REST {clients} client(s), batching on ({MAIN_TIMEOUT_MS} ms)",
                harness.median(rate(rest)),
                "img/s",
                baseline_name=f"in-process SavedModel, batch {clients}",
                baseline_value=harness.median(rate(inp)),
                ratio=harness.median(paired),
                goal=goal,
                samples=rate(rest),
                note=f"REST p50 {harness.median([x['p50'] for x in lat]):.0f} ms, p99 "
                f"{harness.median([x['p99'] for x in lat]):.0f} ms; in-process per call p50 {pct(in_lat, 50):.0f} ms, "
                f"p99 {pct(in_lat, 99):.0f} ms; {errors} errors; {repeats} rounds; rewrite {rewrite} on both sides",
            )
        )
    for label, runs in alternatives.items():
        lat = [x["latency_ms"] for x in runs]
        rows.append(
            harness.row(
                "serve",
                f"REST 16 clients, {label}",
                harness.median([x["images_per_s"] for x in runs]),
                "img/s",
                baseline_name="in-process SavedModel, batch 16",
                baseline_value=harness.median(rate("in16")),
                note=f"p50 {harness.median([x['p50'] for x in lat]):.0f} ms, "
                f"p99 {harness.median([x['p99'] for x in lat]):.0f}"
                f" ms; {sum(x['errors'] for x in runs)} errors; not interleaved (own server start, after the rounds)",
            )
        )
    rows.append(
        harness.row(
            "serve",
            "request bytes per image: float pixels / b64 JPEG",
            len(pixel_body) / len(b64_body),
            "x larger",
            baseline_name="b64 JPEG body bytes",
            baseline_value=None,
            ratio=len(pixel_body) / len(b64_body),
            note=f"b64 JPEG {len(b64_body):,} B (JPEG {len(jpegs[0]):,} B) vs pixels {len(pixel_body):,} B at "
            f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}",
        )
    )
    b64_rates = [x["images_per_s"] for x in fmt["b64"]]
    px_rates = [x["images_per_s"] for x in fmt["pixels"]]
    rows.append(
        harness.row(
            "serve",
            "server throughput, b64 JPEG requests",
            harness.median(b64_rates),
            "img/s",
            baseline_name="float-pixel JSON requests (serving_pixels)",
            baseline_value=harness.median(px_rates),
            ratio=harness.median([a / b for a, b in zip(b64_rates, px_rates, strict=True)]),
            samples=b64_rates,
            note=f"4 clients x {fmt_n} requests, batching on; errors b64 {sum(x['errors'] for x in fmt['b64'])}, "
            f"pixels {sum(x['errors'] for x in fmt['pixels'])}",
        )
    )
    rows.append(
        harness.row("serve", "SavedModel size on disk", saved_mb, "MiB", note="both signatures; variables dominate")
    )
    return rows


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
