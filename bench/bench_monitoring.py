"""Throughput with the model statistics on vs off, alternating rounds in one run (REST, 16 clients).

Both servers export Prometheus metrics (``--monitoring_config_file``); "on" adds the project's
``ModelWatcher`` (prediction/input statistics, drift window), "off" is the generic server alone.
``--model toy``: the serving tests' toy graph (decode + 8x8 resize), a nearly free model call, so
the ratio is the watcher's worst case. ``--model vgg19``: the default architecture (VGG19 160x128,
export as ``vinted export`` writes it) with random weights (``model.weights=none``): the real
serving compute, no training needed.

Throughput on a shared machine moves by tens of percent between rounds, so each round also records
the server process's CPU time per request (psutil), which contention barely moves: off/on CPU per
request is the throughput ratio a saturated, dedicated server would show.

    .venv/bin/python bench/bench_monitoring.py --model vgg19 --rounds 4 --requests 4 --clients 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT), str(PROJECT / "bench"), str(PROJECT / "tests" / "serving")]

LAUNCH = """
import sys
from tf_serving_compat.process import main
from vinted_classifier.serving import VintedAdapter
raise SystemExit(main(sys.argv[2:], adapter=VintedAdapter(observe=sys.argv[1] == "on")))
"""


def start(mode: str, base: Path, monitoring: Path, log_dir: Path, batching: Path):
    from serve_load import free_port

    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))
    command = [
        sys.executable,
        "-c",
        LAUNCH,
        mode,
        "--host",
        "127.0.0.1",
        "--rest_api_port",
        str(port),
        "--port",
        "0",
        "--model_name",
        "my_model",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0",
        f"--monitoring_config_file={monitoring}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
    ]
    stderr = open(log_dir / f"server-{mode}.stderr", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=PROJECT, env=env
    ), f"http://127.0.0.1:{port}"


def vgg19_export(base_dir: Path) -> Path:
    """A VGG19 export with random weights and the demo's labels (same graph and cost as a trained one)."""
    from vinted_classifier.config import load_config
    from vinted_classifier.export import export_saved_model
    from vinted_classifier.model import build_model
    from vinted_classifier.runs import RunLabels

    cfg = load_config(None, ["model.weights=none", "model.augment=false"])
    categories = ["BLOUSES", "CASUAL_DRESSES", "SHIRTS", "TOPS", "KNITWEAR", "JUMPSUITS"]
    tags = ["polka dot", "floral", "checker"]
    bundle = build_model(cfg.model, categories, tags)
    labels = RunLabels("cc3", categories, tags, [0.5, 0.5, 0.5], cfg.model.image_size)
    return export_saved_model(bundle.model, labels, base_dir, "my_model", 1, model_cfg=cfg.model)


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a server process and its threads (contention-proof cost)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main(argv=None) -> int:
    import requests
    from bench_serve import batching_text
    from serve_helpers import V1_BIAS, install_version, template
    from serve_load import make_jpegs, run_load, wait_healthy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["toy", "vgg19"], default="toy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=30, help="per client per round")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    base = work / "my_model"
    if args.model == "toy":
        install_version(template(V1_BIAS), base, 1)
    else:
        vgg19_export(work)
    monitoring = work / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    images = make_jpegs(32, args.image_size)
    batching = work / "batching.txt"
    batching.write_text(batching_text(5))  # as bench_serve.py: batching on, 5 ms
    servers = {mode: start(mode, base, monitoring, work, batching) for mode in ("off", "on")}
    results: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for process, url in servers.values():
            wait_healthy(url, 300, process)
            run_load(url, "my_model", images, 2, 5, 60, 1)  # warm both
        for round_ in range(args.rounds):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                cpu_before = server_cpu_s(servers[mode][0].pid)
                stats = run_load(servers[mode][1], "my_model", images, args.clients, args.requests, 300, 1)
                if stats["errors"]:
                    raise RuntimeError(f"{mode}: {stats['error_kinds']}")
                if mode == "on":  # the statistics thread's work belongs to this round
                    requests.get(servers["on"][1] + "/monitoring/prometheus/metrics", timeout=60)
                    time.sleep(0.5)
                cpu_ms = (server_cpu_s(servers[mode][0].pid) - cpu_before) * 1000 / stats["requests_ok"]
                results[mode].append(stats["throughput_rps"])
                cpu[mode].append(cpu_ms)
                print(
                    f"round {round_ + 1} {mode:>3}: {stats['throughput_rps']:.1f} req/s, "
                    f"p99 {stats['latency_ms']['p99']} ms, server CPU {cpu_ms:.2f} ms/request",
                    flush=True,
                )
        text = requests.get(servers["on"][1] + "/monitoring/prometheus/metrics", timeout=10).text
        counted = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("vinted_predictions_total{")
        )
        dropped = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("vinted_monitoring_dropped_total{")
        )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    ratios = [
        on / off for on, off in zip(results["on"], results["off"], strict=True)
    ]  # each round's pair saw the same load
    summary = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "rounds": results,
        "median_rps_off": round(statistics.median(results["off"]), 2),
        "median_rps_on": round(statistics.median(results["on"]), 2),
        "ratio_on_off_median_of_rounds": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "load_average": os.getloadavg(),
        "server_cpu_ms_per_request": {mode: [round(v, 3) for v in values] for mode, values in cpu.items()},
        "cpu_ratio_off_on_median": round(
            statistics.median(off / on for on, off in zip(cpu["on"], cpu["off"], strict=True)), 3
        ),
        "model": args.model,
        "rows_counted_by_watcher": counted,
        "rows_dropped": dropped,
        "args": vars(args),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
