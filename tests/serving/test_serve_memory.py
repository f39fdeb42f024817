"""Memory: images at the pixel limit leave the server at most 64 MiB above its RSS before them
(measured in a child process: the server runs alone in its own process, the test only sends requests).

The peak while one is processed is printed, not asserted (it includes the request's own bytes)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image
from serve_helpers import V1_BIAS, free_port, install_version, jpeg_bytes, template

from tf_serving_compat.errors import ServingError
from tf_serving_compat.images import DEFAULT_DECODE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS, prepare_image

PROJECT = Path(__file__).resolve().parents[2]
BOUND_MIB = 64
pytestmark = pytest.mark.slow


def photo_like(width: int, height: int, fmt: str) -> bytes:
    """Smooth gradients plus noise: compresses like a photo, not like a flat test card."""

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.int16)
    pixels += np.random.default_rng(0).integers(-6, 6, pixels.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def test_prepare_image_shrinks_big_images_and_keeps_small_ones():

    small = jpeg_bytes()
    assert prepare_image(small, DEFAULT_MAX_IMAGE_PIXELS) is small
    assert prepare_image(b"not an image", DEFAULT_MAX_IMAGE_PIXELS) == b"not an image"  # the graph's error
    big = photo_like(2400, 1600, "JPEG")
    shrunk = prepare_image(big, DEFAULT_MAX_IMAGE_PIXELS)
    with Image.open(io.BytesIO(shrunk)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
    assert width * height <= DEFAULT_DECODE_PIXELS
    assert abs(width / height - 1.5) < 0.01  # aspect ratio kept

    with pytest.raises(ServingError, match="exceeds the limit of 1000 pixels"):
        prepare_image(big, 1000)


def test_image_at_the_pixel_limit_costs_at_most_64_mib(tmp_path):

    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    side = int((DEFAULT_MAX_IMAGE_PIXELS * 4 / 3) ** 0.5)
    width, height = side, DEFAULT_MAX_IMAGE_PIXELS // side  # 4:3, at the limit
    assert width * height <= DEFAULT_MAX_IMAGE_PIXELS < (width + 1) * (height + 1)
    bodies = {
        fmt: json.dumps({"instances": [{"b64": base64.b64encode(photo_like(width, height, fmt)).decode()}]})
        for fmt in ("PNG", "JPEG")
    }
    server, url = _start_server(tmp_path, base, dict(os.environ))
    try:
        process = psutil.Process(server.pid)
        before = process.memory_info().rss
        peak, stop = [before], threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for fmt in ("PNG", "JPEG") * 3:  # repeated: nothing may accumulate per request
                response = requests.post(url, data=bodies[fmt], timeout=120)
                assert response.status_code == 200, response.text[:500]
                assert len(response.json()["predictions"][0]["cc3"]) == 4
        finally:
            stop.set()
            watcher.join()
        growth_mib = (process.memory_info().rss - before) / 2**20
        print(f"{width}x{height}: RSS growth {growth_mib:.1f} MiB, peak {(peak[0] - before) / 2**20:.1f} MiB")
        assert growth_mib <= BOUND_MIB
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize("system_allocator", [None, "1"])
def test_memory_returns_after_a_request_of_many_large_compressible_jpegs(tmp_path, system_allocator):
    """A request of many large, highly compressible JPEGs (each under the pixel limit) leaves the server within
    64 MiB of its steady state (after ordinary 2 MP photos), with TensorFlow's default oneDNN allocator pool
    and with ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``: big images reach the graph shrunk to the decode limit, and
    each model call runs at most an execution batch of them."""

    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    env = dict(os.environ)
    env.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)
    if system_allocator:
        env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = system_allocator
    ordinary = json.dumps({"instances": [{"b64": base64.b64encode(photo_like(1600, 1200, "JPEG")).decode()}] * 16})
    big = photo_like(4000, 2800, "JPEG")  # 11.2 MP, a few hundred KB: cheap to send, costly to decode
    heavy = json.dumps({"instances": [{"b64": base64.b64encode(big).decode()}] * 24})
    server, url = _start_server(tmp_path, base, env)
    try:
        process = psutil.Process(server.pid)
        for _ in range(3):  # steady state: what ordinary traffic keeps
            assert requests.post(url, data=ordinary, timeout=120).status_code == 200
        steady = process.memory_info().rss
        for _ in range(2):
            response = requests.post(url, data=heavy, timeout=300)
            assert response.status_code == 200 and len(response.json()["predictions"]) == 24, response.text[:300]
            assert requests.post(url, data=ordinary, timeout=120).status_code == 200
        growth_mib = (process.memory_info().rss - steady) / 2**20
        print(
            f"allocator {system_allocator or 'pool'}: 24 x {len(big) // 1024} KiB JPEGs of 11.2 MP: RSS "
            f"{growth_mib:+.1f} MiB against the steady state"
        )
        assert growth_mib <= BOUND_MIB
    finally:
        server.terminate()
        server.wait(30)


def _start_server(tmp_path: Path, base: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """Our server in a child process on ``base`` (log in ``tmp_path``), once it answers a predict."""
    port = free_port()
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_serving_compat.server",
                "--port=0",
                f"--rest_api_port={port}",
                f"--model_base_path={base}",
                "--file_system_poll_wait_seconds=0",
            ],
            cwd=PROJECT,
            env=env,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}/v1/models/my_model:predict"
    small = {"instances": [{"b64": base64.b64encode(jpeg_bytes()).decode()}]}
    deadline = time.monotonic() + 120
    try:
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if requests.post(url, json=small, timeout=5).status_code == 200:
                    return server, url
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
    except BaseException:
        server.terminate()
        server.wait(30)
        raise
