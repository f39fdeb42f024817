"""Bounded loopback load test for the REST server (127.0.0.1 only; stops by itself).

Starts a server (``--model_base_path``) or targets one (``--url``), then runs
N client threads x M requests, each POSTing b64 JPEGs to ``:predict``, bounded
by ``--max-seconds``. Reports throughput, p50/p90/p99 latency, errors and the
server's RSS before/after. ``--smoke`` is a few-second run for CI.

    python bench/serve_load.py --model_base_path model_training/saved_model/my_model
    python bench/serve_load.py --url http://127.0.0.1:9000 --clients 8 --requests 100
    python bench/serve_load.py --smoke --model_base_path /tmp/toy/my_model
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_jpegs(count: int, size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not healthy after {timeout:.0f}s")


def start_server(args: argparse.Namespace, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tf_serving_compat.server",
        "--host",
        "127.0.0.1",
        "--rest_api_port",
        str(port),
        "--model_name",
        args.model_name,
        "--model_base_path",
        str(args.model_base_path),
        "--file_system_poll_wait_seconds",
        "0",
        "--port",
        str(getattr(args, "grpc_port", 0) or 0),
    ]  # gRPC off unless asked for
    if args.enable_batching:
        command.append("--enable_batching")
        if args.batching_parameters_file:
            command += ["--batching_parameters_file", str(args.batching_parameters_file)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    stderr = open(log_dir / "server.stderr", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=PROJECT, env=env)
    return process, f"http://127.0.0.1:{port}"


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return None


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def run_load(
    url: str,
    model: str,
    images: list[bytes],
    clients: int,
    requests_per_client: int,
    max_seconds: float,
    per_request: int,
) -> dict:
    """N threads x M requests (or until max_seconds); returns latency/throughput/error stats."""
    import requests

    bodies = []
    for i in range(len(images)):
        chosen = [images[(i + k) % len(images)] for k in range(per_request)]
        bodies.append(json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in chosen]}))
    endpoint = f"{url}/v1/models/{model}:predict"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        session = requests.Session()
        for n in range(requests_per_client):
            if time.monotonic() > deadline:
                break
            body = bodies[(index * requests_per_client + n) % len(bodies)]
            started = time.perf_counter()
            try:
                response = session.post(endpoint, data=body, headers={"content-type": "application/json"}, timeout=60)
                key = (
                    None
                    if response.status_code == 200 and "predictions" in response.json()
                    else f"HTTP {response.status_code}"
                )
            except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                key = type(exc).__name__
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if key is None:
                    latencies.append(elapsed)
                else:
                    errors[key] = errors.get(key, 0) + 1
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ok = len(latencies)
    return {
        "requests_ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall else None,
        "images_per_s": round(ok * per_request / wall, 2) if wall else None,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": round(max(latencies), 2) if latencies else None,
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="target a running server (loopback only), e.g. http://127.0.0.1:9000")
    p.add_argument("--model_base_path", type=Path, help="start a server on a free loopback port for this model")
    p.add_argument("--model_name", default="my_model")
    p.add_argument("--pid", type=int, help="server pid for RSS (known automatically when started here)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--max-seconds", type=float, default=120.0, help="hard stop for the load phase")
    p.add_argument("--enable_batching", action="store_true")
    p.add_argument("--batching_parameters_file", type=Path)
    p.add_argument("--smoke", action="store_true", help="a few seconds: 4 clients x 10 requests, 64 px images")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.image_size = 4, 10, 64
        args.max_seconds = min(args.max_seconds, 20.0)
    if not args.url and not args.model_base_path:
        default = PROJECT / "model_training" / "saved_model" / args.model_name
        if not default.is_dir():
            p.error(f"give --url or --model_base_path (no exported model at {default})")
        args.model_base_path = default
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("--url must point at 127.0.0.1/localhost: this load test never leaves the machine")
    if min(args.clients, args.requests, args.images_per_request) < 1 or args.clients > 256:
        p.error("clients (1..256), requests and images-per-request must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process = None
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        try:
            if args.url:
                url, pid = args.url.rstrip("/"), args.pid
                wait_healthy(url, 10)
            else:
                process, url = start_server(args, Path(tmp))
                pid = process.pid
                try:
                    wait_healthy(url, 120, process)
                except RuntimeError:
                    sys.stderr.write((Path(tmp) / "server.stderr").read_text(errors="replace")[-4000:])
                    raise
            images = make_jpegs(max(8, args.clients), args.image_size)
            run_load(url, args.model_name, images[:1], 1, 2, 30, 1)  # warm-up, not measured
            rss_before = rss_mb(pid)
            report = run_load(
                url, args.model_name, images, args.clients, args.requests, args.max_seconds, args.images_per_request
            )
            report.update(
                {
                    "url": url,
                    "model": args.model_name,
                    "clients": args.clients,
                    "requests_per_client": args.requests,
                    "images_per_request": args.images_per_request,
                    "image_size": args.image_size,
                    "batching": bool(args.enable_batching),
                    "server_rss_mb_before": rss_before,
                    "server_rss_mb_after": rss_mb(pid),
                    "server_started_here": process is not None,
                }
            )
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    lat = report["latency_ms"]
    print(
        f"# {report['requests_ok']} ok, {report['errors']} errors in {report['wall_s']} s: "
        f"{report['throughput_rps']} req/s, p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
        f"RSS {report['server_rss_mb_before']} -> {report['server_rss_mb_after']} MiB",
        file=sys.stderr,
    )
    return 0 if report["errors"] == 0 and report["requests_ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
