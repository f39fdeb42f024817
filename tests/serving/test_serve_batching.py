"""Dynamic batching: parameters file, batched == unbatched results, full queue -> 503 at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serve_helpers import b64, jpeg_bytes, png_bytes, reference_outputs
from starlette.testclient import TestClient

from tf_serving_compat.batching import Batcher, BatchingParameters, parse_batching_parameters
from tf_serving_compat.errors import ServingError
from tf_serving_compat.factory import build_app
from tf_serving_compat.options import ServerOptions

PREDICT = "/v1/models/my_model:predict"


def test_parse_real_text_format():
    params = parse_batching_parameters("""
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 5000 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 4
        allowed_batch_sizes: 8
    """)
    assert params == BatchingParameters(
        max_batch_size=8,
        batch_timeout_micros=5000,
        max_enqueued_batches=3,
        num_batch_threads=2,
        allowed_batch_sizes=[4, 8],
    )
    assert parse_batching_parameters("").max_batch_size == 1000  # TF Serving's defaults
    with pytest.raises(ValueError, match="Invalid batching parameters"):
        parse_batching_parameters("max_batch_size: 8")  # must be a wrapper: { value: 8 }
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    with pytest.raises(ValueError, match="num_batch_threads"):
        parse_batching_parameters("num_batch_threads { value: 0 }")


def _doubling(calls: list[int]):
    def run(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2, "n": np.arange(len(inputs["x"]))}

    return run


def test_batcher_concatenates_and_splits():
    calls: list[int] = []
    batcher = Batcher(BatchingParameters(max_batch_size=6, batch_timeout_micros=2_000_000, num_batch_threads=1))
    try:
        run = _doubling(calls)
        futures = [batcher.submit("k", run, {"x": np.full((n, 2), i, np.float32)}) for i, n in enumerate((1, 2, 3))]
        results = [f.result(10) for f in futures]  # size 6 reached: runs without waiting for the timeout
        assert calls == [6]
        for i, (n, result) in enumerate(zip((1, 2, 3), results, strict=True)):
            np.testing.assert_array_equal(result["y"], np.full((n, 2), 2 * i, np.float32))
        assert [r["n"].tolist() for r in results] == [[0], [1, 2], [3, 4, 5]]
    finally:
        batcher.stop()


def test_batcher_pads_to_allowed_sizes_and_times_out():
    calls: list[int] = []
    batcher = Batcher(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=1, allowed_batch_sizes=[4, 8])
    )
    try:
        result = batcher.submit("k", _doubling(calls), {"x": np.ones((3, 1))}).result(10)
        assert calls == [4]  # padded to the next allowed size, sliced back
        assert result["y"].shape == (3, 1)
    finally:
        batcher.stop()


def test_batcher_splits_a_task_larger_than_max_batch_size_and_reassembles_it_in_order():
    calls: list[int] = []
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=2))
    try:
        x = np.arange(21, dtype=np.float32)[:, None]
        result = batcher.submit("k", _doubling(calls), {"x": x}).result(10)
        np.testing.assert_array_equal(result["y"], 2 * x)
        assert sorted(calls) == [5, 8, 8]  # no model call above max_batch_size
    finally:
        batcher.stop()


def test_batcher_refuses_a_split_task_whole_when_the_queue_cannot_take_all_of_it():
    release = threading.Event()
    ran: list[int] = []

    def blocking(inputs):
        release.wait(10)
        ran.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    batcher = Batcher(BatchingParameters(max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1))
    try:
        with pytest.raises(ServingError, match="queue to which this task was submitted is full") as caught:
            batcher.submit("k", blocking, {"x": np.ones((7, 1))})  # 4 tasks, 2 fit
        assert caught.value.code == "UNAVAILABLE"
        release.set()
        deadline = time.monotonic() + 10
        while batcher.queued_batches() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.submit("k", blocking, {"x": np.ones((1, 1))}).result(10)["y"].shape == (1, 1)
        # At most the part a thread had already started ran; the queued parts were cancelled.
        assert ran[-1] == 1 and sum(ran[:-1]) <= 2
    finally:
        release.set()
        batcher.stop()


def test_batching_file_sets_the_execution_batch_size_with_large_batch_splitting():

    params = parse_batching_parameters(
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 8 }"
    )
    assert params.enable_large_batch_splitting and params.max_execution_batch_size == 8


def test_batcher_queue_full_is_immediate_unavailable():
    release, started = threading.Event(), threading.Event()

    def blocking(inputs):
        started.set()
        release.wait(10)
        return {"y": inputs["x"]}

    batcher = Batcher(BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))
    try:
        first = batcher.submit("k", blocking, {"x": np.ones((1,))})
        assert started.wait(5)
        second = batcher.submit("k", blocking, {"x": np.ones((1,))})  # waits in the queue
        began = time.monotonic()
        with pytest.raises(ServingError) as info:
            batcher.submit("k", blocking, {"x": np.ones((1,))})
        assert time.monotonic() - began < 0.5
        assert info.value.http_status == 503
        assert info.value.message == "The batch scheduling queue to which this task was submitted is full"
        release.set()
        assert first.result(5)["y"].tolist() == [1.0] and second.result(5)["y"].tolist() == [1.0]
    finally:
        release.set()
        batcher.stop()


def test_one_bad_request_does_not_fail_its_batch_neighbours():
    def picky(inputs):
        if (inputs["x"] < 0).any():
            raise ServingError("INVALID_ARGUMENT", "negative input")
        return {"y": inputs["x"] + 1}

    batcher = Batcher(BatchingParameters(max_batch_size=3, batch_timeout_micros=2_000_000, num_batch_threads=1))
    try:
        futures = [batcher.submit("k", picky, {"x": np.array([v])}) for v in (1.0, -1.0, 2.0)]
        assert futures[0].result(10)["y"].tolist() == [2.0]
        with pytest.raises(ServingError, match="negative input"):
            futures[1].result(10)
        assert futures[2].result(10)["y"].tolist() == [3.0]
    finally:
        batcher.stop()


def test_concurrent_http_requests_become_one_batched_call(model_base):
    images = [jpeg_bytes((40 * i, 200 - 30 * i, 90), noise=15, seed=i) for i in range(4)]
    app = build_app(
        ServerOptions(
            model_base_path=model_base,
            file_system_poll_wait_seconds=0,
            enable_batching=True,
            batching_parameters=BatchingParameters(
                max_batch_size=4, batch_timeout_micros=5_000_000, num_batch_threads=1
            ),
        )
    )
    loaded = app.registry.get("my_model").resolve()
    real_run, batches = loaded.run, []

    def recording_run(signature, inputs):
        batches.append(list(inputs["image_bytes"]))
        return real_run(signature, inputs)

    loaded.run = recording_run
    try:
        with TestClient(app.app) as c:
            barrier = threading.Barrier(4)
            responses: dict[int, dict] = {}

            def send(i):
                barrier.wait()
                r = c.post(PREDICT, json={"instances": [b64(images[i])]})
                responses[i] = (r.status_code, r.json())

            threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert list(app.batcher.batch_sizes) == [4]  # four requests, one model call
            # Like with like: the oracle is one 4-row call in the batch's row order (oneDNN's kernels
            # may differ in the last bit between row positions and batch sizes).
            (batch_order,) = batches
            assert sorted(batch_order) == sorted(images)
            expected = reference_outputs(model_base / "1", "serving_default", image_bytes=batch_order)
            for i in range(4):
                status, body = responses[i]
                assert status == 200
                row = batch_order.index(images[i])
                prediction = body["predictions"][0]
                np.testing.assert_array_equal(np.float32(prediction["cc3"]), expected["cc3"][row])
                np.testing.assert_array_equal(np.float32(prediction["tags"]), expected["tags"][row])
                assert prediction["top2_codes"] == expected["top2_codes"][row].tolist()
        # Unbatched path: each request equals its own 1-row call exactly, and the batched answer up
        # to the last float32 bit (batch-size-dependent kernels); codes, names and flags are identical.
        plain = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0))
        try:
            with TestClient(plain.app) as c2:
                for i in range(4):
                    alone = c2.post(PREDICT, json={"instances": [b64(images[i])]}).json()["predictions"][0]
                    one_row = reference_outputs(model_base / "1", "serving_default", image_bytes=[images[i]])
                    np.testing.assert_array_equal(np.float32(alone["cc3"]), one_row["cc3"][0])
                    batched = responses[i][1]["predictions"][0]
                    for key in ("top2_codes", "top2_names", "tag_flags"):
                        assert alone[key] == batched[key]
                    for key in ("cc3", "tags"):
                        np.testing.assert_allclose(np.float32(alone[key]), np.float32(batched[key]), rtol=1e-6)
        finally:
            plain.close()
    finally:
        app.close()


def test_full_queue_answers_503_immediately_over_http(model_base):
    app = build_app(
        ServerOptions(
            model_base_path=model_base,
            file_system_poll_wait_seconds=0,
            enable_batching=True,
            batching_parameters=BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1),
        )
    )
    loaded = app.registry.get("my_model").resolve()
    real_run, release, started = loaded.run, threading.Event(), threading.Event()

    def gated_run(signature, inputs):
        started.set()
        release.wait(10)
        return real_run(signature, inputs)

    loaded.run = gated_run
    body = {"instances": [b64(png_bytes())]}
    try:
        with TestClient(app.app) as c:
            results = []
            first = threading.Thread(target=lambda: results.append(c.post(PREDICT, json=body).status_code))
            first.start()
            assert started.wait(10)
            second = threading.Thread(target=lambda: results.append(c.post(PREDICT, json=body).status_code))
            second.start()
            deadline = time.monotonic() + 10
            while app.batcher.queued_batches() < 1:  # until the second request occupies the queue
                assert time.monotonic() < deadline
                time.sleep(0.01)
            began = time.monotonic()
            response = c.post(PREDICT, json=body)
            assert time.monotonic() - began < 1.0
            assert response.status_code == 503
            assert response.json() == {"error": "The batch scheduling queue to which this task was submitted is full"}
            release.set()
            first.join(10)
            second.join(10)
            assert sorted(results) == [200, 200]
            assert c.post(PREDICT, json=body).status_code == 200
    finally:
        release.set()
        app.close()
