"""Client helpers for a running TF-Serving-compatible server: start/stop it, build requests, query, compare.

Used by the notebook (through ``module.py``) and by anyone scripting against the REST API; nothing
here is specific to our server beyond the ``serving_default``/``serving_pixels`` signature names.
"""

from __future__ import annotations

import atexit
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from vinted_classifier import data
from vinted_classifier.config import RunConfig
from vinted_classifier.contract import DEFAULT_MODEL_NAME, DEFAULT_SIGNATURE, PIXELS_SIGNATURE, TAGS_OUTPUT
from vinted_classifier.pipeline import load_images

__all__ = [
    "b64_request",
    "check_served",
    "pixels_request",
    "query",
    "request_sizes",
    "sample_images",
    "served_vs_local",
    "start_server",
    "stop_server",
]


def start_server(cfg: RunConfig, port: int = 9000, timeout: float = 300.0) -> subprocess.Popen:
    """Start the TF-Serving-compatible REST server in the background; wait until it answers.

    Refuses a port that is already taken, so the notebook never queries somebody else's server.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is already in use: stop that server or run with -p port=<free port>")

    base = Path(cfg.export.saved_model_dir) / cfg.export.model_name
    # REST only (--port=0: no gRPC), so a notebook's server never collides with a service on 8500.
    command = [
        sys.executable,
        "-m",
        "vinted_classifier.cli",
        "serve",
        f"--rest_api_port={port}",
        "--port=0",
        f"--model_name={cfg.export.model_name}",
        f"--model_base_path={base}",
    ]
    log_file = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    atexit.register(_kill_quietly, process)  # a failing cell later on must not leave the port taken
    url = f"http://127.0.0.1:{port}/v1/models/{cfg.export.model_name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file.seek(0)
            raise RuntimeError(f"server exited with code {process.returncode}: {log_file.read()[-2000:]}")
        try:
            status = requests.get(url, timeout=2).json()
            if any(v["state"] == "AVAILABLE" for v in status.get("model_version_status", [])):
                return process
        except (requests.ConnectionError, requests.Timeout, ValueError):
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"server on port {port} did not become AVAILABLE within {timeout:.0f}s")


def stop_server(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _kill_quietly(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()


def sample_images(cfg: RunConfig, uuids, n: int = 4) -> list[Path]:
    """Image files of the first ``n`` uuids (e.g. the first test rows, in predictions order)."""
    report = data.check_images(list(uuids)[:n], cfg.data, decode=False)
    return [Path(report.paths[u]) for u in list(uuids)[:n]]


def b64_request(paths: list[str | Path]) -> dict:
    """TF Serving row-format request with the raw JPEG bytes as ``{"b64": ...}``."""
    return {
        "signature_name": DEFAULT_SIGNATURE,
        "instances": [{"b64": base64.b64encode(Path(p).read_bytes()).decode()} for p in paths],
    }


def pixels_request(paths: list[str | Path], image_size: tuple[int, int]) -> dict:
    """The seed solution's request: float pixels in [0, 1], here via the ``serving_pixels`` signature."""
    pixels = load_images([str(p) for p in paths], image_size) / 255.0
    return {"signature_name": PIXELS_SIGNATURE, "instances": pixels.round(4).tolist()}


def query(request: dict, port: int = 9000, model_name: str = DEFAULT_MODEL_NAME) -> tuple[dict, int]:
    """POST a predict request; return (response JSON, request size in bytes)."""
    body = json.dumps(request)
    response = requests.post(f"http://127.0.0.1:{port}/v1/models/{model_name}:predict", data=body, timeout=120)
    response.raise_for_status()
    return response.json(), len(body.encode())


def request_sizes(sizes: dict[str, int], n_images: int) -> pd.DataFrame:
    """JSON body size per request format, in total and per image."""
    return pd.DataFrame(
        {"request bytes": sizes, "bytes per image": {k: v // n_images for k, v in sizes.items()}}
    ).rename_axis("format")


def served_vs_local(response: dict, detailed: pd.DataFrame, labels, tol: float = 1e-2) -> pd.DataFrame:
    """Side by side: the server's top-2 and tag flags vs the notebook's predictions for the same images.

    A row matches when top-2 codes and tag flags agree; a disagreement only counts as a match when the
    probabilities involved lie within ``tol`` of each other (a tie) or of the tag threshold. ``max_prob_diff``
    shows how far the served probabilities are from the local ones (float pixels rounded to 4 decimals move
    them by ~1e-3 under bfloat16; anything larger is preprocessing skew worth a look).
    """
    if len(response["predictions"]) != len(detailed):
        raise ValueError(f"{len(response['predictions'])} served predictions for {len(detailed)} local rows")
    rows = []
    for served, (_, local) in zip(response["predictions"], detailed.iterrows(), strict=True):
        cat = np.asarray(served[labels.category_output], float)
        local_top2 = [int(local["category1"]), int(local["category2"])]
        local_tag_p = np.array([local[f"{t}_probability"] for t in labels.tags], float)
        local_flags = [int(local[t]) for t in labels.tags]
        diffs = np.abs(
            np.r_[
                cat[local_top2] - [local["category1_probability"], local["category2_probability"]],
                np.asarray(served[TAGS_OUTPUT], float) - local_tag_p,
            ]
        )
        ties = all(a == b or abs(cat[a] - cat[b]) <= tol for a, b in zip(served["top2_codes"], local_top2, strict=True))
        borderline = all(
            a == b or abs(p - t) <= tol
            for a, b, p, t in zip(served["tag_flags"], local_flags, local_tag_p, labels.thresholds, strict=True)
        )
        rows.append(
            {
                "uuid": local["uuid"],
                "served_top2": list(served["top2_codes"]),
                "local_top2": local_top2,
                "served_top2_names": list(served["top2_names"]),
                "served_tags": list(served["tag_flags"]),
                "local_tags": local_flags,
                "max_prob_diff": float(diffs.max()),
                "match": ties and borderline,
            }
        )
    return pd.DataFrame(rows)


def check_served(*checks: pd.DataFrame) -> bool:
    """Print the marker the notebook test looks for; fail the cell when any served row disagrees."""
    matched = bool(all(check["match"].all() for check in checks))
    print(f"served predictions match: {matched}")
    if not matched:
        raise AssertionError(
            "the server disagrees with the notebook's predictions:\n"
            + "\n".join(c[~c["match"]].to_string() for c in checks)
        )
    return matched
