"""REST and gRPC at N concurrent clients vs the in-process SavedModel; first-request latency with and
without SavedModel warmup. Numbers go to docs/benchmarks.md (section "Serving protocols").

    python -m bench.run_all --only serve_protocols  # writes docs/benchmarks.md (bench_serve_protocols.py)
    python -m bench.serve_protocols [--smoke]       # raw JSON only

The load generator is a separate process that costs the server as little CPU as possible:
REST is plain HTTP/1.1 keep-alive over asyncio streams (uvloop when installed) with the request
bytes built once, parsing only the status line and Content-Length; gRPC is ``grpc.aio`` with
the request serialized once (raw bytes in, raw bytes out). Its CPU time and the server's are read
with psutil, and the generator's share of the two is reported. The in-process baseline calls the
SavedModel's ``serving_default`` from N threads, one image per call (the work the server does
per request without batching), with the server's mixed-precision rewrite decision for this host,
under glibc's default heap settings; the same run under the
server's heap settings (and its previous ones) shows what those cost. Baseline, REST and gRPC
alternate round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- load generators (child processes)


async def _rest_client(
    host: str, port: int, request: bytes, count: int, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(status)
    finally:
        writer.close()


async def _grpc_client(stub_call, payload: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    import grpc

    for _ in range(count):
        started = time.perf_counter()
        try:
            await stub_call(payload, timeout=300)
            latencies.append(time.perf_counter() - started)
        except grpc.RpcError as error:
            errors.append(str(error.code()))


def loadgen_main(argv: list[str]) -> int:
    """Child: ``loadgen rest|grpc HOST PORT PAYLOAD_FILE CLIENTS PER_CLIENT`` -> one JSON line."""
    kind, host, port, payload_file, clients, per_client = argv
    port, clients, per_client = int(port), int(clients), int(per_client)
    payload = Path(payload_file).read_bytes()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    latencies: list[float] = []
    errors: list = []

    async def run() -> float:
        if kind == "rest":
            request = (
                f"POST /v1/models/my_model:predict HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload
            started = time.perf_counter()
            await asyncio.gather(
                *[_rest_client(host, port, request, per_client, latencies, errors) for _ in range(clients)]
            )
            return time.perf_counter() - started
        import grpc

        async with grpc.aio.insecure_channel(
            f"{host}:{port}", options=[("grpc.max_receive_message_length", 2**31 - 1)]
        ) as channel:
            call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
            started = time.perf_counter()
            await asyncio.gather(*[_grpc_client(call, payload, per_client, latencies, errors) for _ in range(clients)])
            return time.perf_counter() - started

    wall = asyncio.run(run())
    cpu = os.times()
    print(
        json.dumps(
            {
                "ok": len(latencies),
                "errors": errors[:5],
                "n_errors": len(errors),
                "wall_s": wall,
                "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
                "p99_ms": 1000 * sorted(latencies)[int(0.99 * (len(latencies) - 1))] if latencies else None,
                "cpu_s": cpu.user + cpu.system,
            }
        )
    )
    return 0


# glibc heap settings for the in-process runs: the allocator's defaults, the server's, and the
# server's before it set the trim threshold (every allocation >= 1 MiB mmapped, 128 KiB trim).
HEAP_SETTINGS = {"default": None, "server": (), "mmap_1mib": (1024 * 1024, 128 * 1024)}


def inprocess_main(argv: list[str]) -> int:
    """Child: ``inprocess VERSION_DIR IMAGES_DIR CLIENTS PER_CLIENT HEAP`` -> one JSON line (img/s)."""
    version_dir, images_dir, clients, per_client, heap = argv
    clients, per_client = int(clients), int(per_client)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if HEAP_SETTINGS[heap] is not None:
        from tf_serving_compat.images import bound_heap_retention

        assert bound_heap_retention(*HEAP_SETTINGS[heap]), "mallopt failed"
    import tensorflow as tf

    from hostinfo import configure_rewrite

    # The server's own start-up decision (--mixed_precision_rewrite=auto), so that on a bf16 CPU both
    # sides run the same bf16-rewritten graph and the ratio measures the protocol, not the precision.
    rewrite = configure_rewrite("auto").mode

    images = [p.read_bytes() for p in sorted(Path(images_dir).glob("*.jpeg"))]
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    for image in images[:2]:
        signature(image_bytes=tf.constant([image]))  # trace and warm, untimed
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for k in range(per_client):
            started = time.perf_counter()
            out = signature(image_bytes=tf.constant([images[(index + k) % len(images)]]))
            next(iter(out.values())).numpy()
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {"ok": len(latencies), "wall_s": wall, "p50_ms": 1000 * statistics.median(latencies), "rewrite": rewrite}
        )
    )
    return 0


# ---------------------------------------------------------------- orchestration


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))


def _child(args: list[str], timeout: float = 900) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.serve_protocols", *args],
        cwd=PROJECT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


class Server:
    """Our server in a child process with REST and gRPC on free loopback ports."""

    def __init__(self, base: Path, log: Path, *extra: str):
        self.rest, self.grpc = _free_port(), _free_port()
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_serving_compat.server",
                f"--rest_api_port={self.rest}",
                f"--port={self.grpc}",
                f"--model_base_path={base}",
                "--file_system_poll_wait_seconds=0",
                *extra,
            ],
            cwd=PROJECT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def wait_available(self, timeout: float = 600) -> float:
        """Seconds from start until the model is AVAILABLE (warmup included when on)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text(errors="replace")[-3000:])
            try:
                if requests.get(f"http://127.0.0.1:{self.rest}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become available")

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def export_bench_model(work: Path, smoke: bool) -> tuple[Path, list[bytes]]:
    """The bench model (VGG19 at the bench image size, untrained head) exported with warmup records."""
    from bench import harness
    from vinted_classifier import data
    from vinted_classifier.export import export_saved_model
    from vinted_classifier.model import build_model
    from vinted_classifier.runs import RunLabels

    ctx = harness.Context(name="serve_protocols", smoke=smoke, work=work)
    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()[:16]
    jpegs = [(cfg.data.images / f"{uuid}.jpeg").read_bytes() for uuid in ids]
    bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    version_dir = export_saved_model(
        bundle.model, labels, work / "saved_model", "my_model", version=1, warmup_images=jpegs[:4]
    )
    return version_dir, jpegs


def first_request(server: Server, body: bytes, steady: int) -> dict:
    import requests

    url = f"http://127.0.0.1:{server.rest}/v1/models/my_model:predict"
    times = []
    with requests.Session() as session:
        for _ in range(1 + steady):
            started = time.perf_counter()
            response = session.post(url, data=body, headers={"content-type": "application/json"}, timeout=600)
            assert response.status_code == 200, response.text[:300]
            times.append(1000 * (time.perf_counter() - started))
    return {"first_ms": times[0], "steady_ms": statistics.median(times[1:])}


def measure(
    work: Path, smoke: bool, clients: int = 16, per_client: int | None = None, rounds: int | None = None
) -> dict:
    """Export the bench model into ``work`` and measure everything; returns the raw results."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    per_client = per_client or (2 if smoke else 4)
    rounds = rounds or (1 if smoke else 7)
    version_dir, jpegs = export_bench_model(work, smoke)
    images_dir = work / "images"
    images_dir.mkdir()
    for i, jpeg in enumerate(jpegs):
        (images_dir / f"{i:03d}.jpeg").write_bytes(jpeg)
    rest_body = json.dumps({"instances": [{"b64": base64.b64encode(jpegs[0]).decode()}]}).encode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "my_model"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([jpegs[0]], dtype=object)))
    (work / "rest.json").write_bytes(rest_body)
    (work / "grpc.bin").write_bytes(request.SerializeToString())
    base = version_dir.parent
    kinds = ("rest", "grpc") if smoke else ("rest", "grpc", "rest_asyncio_h11")
    heaps = ("server",) if smoke else ("server", "mmap_1mib")
    results: dict = {
        "clients": clients,
        "per_client": per_client,
        "rounds": rounds,
        "inprocess": [],
        **{kind: [] for kind in kinds},
        **{f"inprocess_heap_{heap}": [] for heap in heaps},
    }
    servers = {"auto": Server(base, work / "server.log", "--http_stack=auto")}
    if "rest_asyncio_h11" in kinds:
        servers["asyncio"] = Server(base, work / "server-asyncio.log", "--http_stack=asyncio")
    targets = {
        "rest": (servers["auto"], "rest", "rest.json"),
        "grpc": (servers["auto"], "grpc", "grpc.bin"),
        "rest_asyncio_h11": (servers.get("asyncio"), "rest", "rest.json"),
    }
    try:
        for server in servers.values():
            server.wait_available()
            _child(["loadgen", "rest", "127.0.0.1", str(server.rest), str(work / "rest.json"), "2", "2"])  # warm
        for _ in range(rounds):
            results["inprocess"].append(
                _child(["inprocess", str(version_dir), str(images_dir), str(clients), str(per_client), "default"])
            )
            for heap in heaps:
                results[f"inprocess_heap_{heap}"].append(
                    _child(["inprocess", str(version_dir), str(images_dir), str(clients), str(per_client), heap])
                )
            for kind in kinds:
                server, protocol, payload = targets[kind]
                port = server.rest if protocol == "rest" else server.grpc
                cpu_before = server.cpu_s()
                run = _child(
                    ["loadgen", protocol, "127.0.0.1", str(port), str(work / payload), str(clients), str(per_client)]
                )
                run["server_cpu_s"] = server.cpu_s() - cpu_before
                run["loadgen_cpu_share"] = run["cpu_s"] / (run["cpu_s"] + run["server_cpu_s"])
                results[kind].append(run)
    finally:
        for server in servers.values():
            server.stop()
    warmup = {}
    for enabled in ("true", "false"):
        server = Server(base, work / f"server-warmup-{enabled}.log", f"--enable_model_warmup={enabled}")
        try:
            available_s = server.wait_available()
            warmup[enabled] = {"available_s": available_s, **first_request(server, rest_body, 2 if smoke else 8)}
        finally:
            server.stop()
    results["warmup"] = warmup
    results["kinds"] = list(kinds)
    results["heaps"] = list(heaps)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadgen"]:
        return loadgen_main(argv[1:])
    if argv[:1] == ["inprocess"]:
        return inprocess_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="serve-protocols-") as tmp:
        results = measure(Path(tmp), args.smoke, args.clients, args.per_client, args.rounds)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
