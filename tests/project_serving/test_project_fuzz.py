"""The generic server's hostile-REST fuzz against the app as ``vinted serve`` builds it (with /predict_image)."""

from __future__ import annotations

import pytest
import test_serve_fuzz as generic
from serve_helpers import jpeg_bytes

from vinted_classifier.serving import VintedAdapter

test_hostile_rest_requests_never_5xx = generic.test_hostile_rest_requests_never_5xx


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    """The app as ``vinted serve`` builds it (generic + /predict_image, metrics on), its gRPC server."""
    yield from generic.start_fuzz_stack(tmp_path_factory.mktemp("fuzz"), VintedAdapter())


def test_upload_still_answers_after_the_fuzz(fuzz_stack):
    headers = [(b"host", b"127.0.0.1:9000"), (b"content-type", b"image/jpeg")]
    status, _, payload = fuzz_stack["loop"].run_until_complete(
        generic._asgi_call(fuzz_stack["app"].app, "POST", "/predict_image", headers, [jpeg_bytes()], False)
    )
    assert status == 200, payload[:300]
