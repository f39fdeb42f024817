"""The server's glibc heap settings, observed in a child process (RSS via /proc, no timing).

Both directions matter: image-sized buffers freed by a worker thread must go back to the OS
(memory bound for big images), while activation-sized ones must stay for the next model call
(with glibc's 128 KiB trim threshold every call page-faulted its activations in again: ~20% slower).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, threading
from tf_serving_compat.images import HEAP_MMAP_THRESHOLD, bound_heap_retention

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = bound_heap_retention() if sys.argv[1] == "bounded" else None
keep = []

def churn(size, times):
    for _ in range(times):
        block = b"x" * size  # written, so its pages count in RSS
        keep.append(b"k" * 64)  # a small live object above it, as in a busy server
        del block

def in_thread(size, times):
    thread = threading.Thread(target=churn, args=(size, times))
    thread.start()
    thread.join()
    return rss_mib()

before = in_thread(64 * 1024, 4)  # create the thread arena machinery first
after_big = in_thread(20 * 2**20, 3)  # image-sized: above the mmap threshold
after_small = in_thread(5 * 2**20, 3)  # one activation of VGG19 block 1 at 160x128
print(json.dumps({"applied": applied, "mmap_threshold": HEAP_MMAP_THRESHOLD,
                  "big_kept_mib": after_big - before, "small_kept_mib": after_small - after_big}))
"""


def run_child(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux-only")
def test_image_sized_buffers_return_to_the_os_and_activation_sized_ones_stay():
    result = run_child("bounded")
    assert result["applied"] is True
    assert 5 * 2**20 < result["mmap_threshold"] < 16 * 2**20
    assert result["big_kept_mib"] < 4, result  # 3 x 20 MiB freed by a thread: given back
    assert result["small_kept_mib"] > 4, result  # a 5 MiB block freed: kept for the next call
