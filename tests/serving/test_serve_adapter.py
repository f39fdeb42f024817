"""The extension interface (tf_serving_compat.adapter): metadata per version, routes with a typed
request context, image inputs, pre-processing, and observers of predictions."""

from __future__ import annotations

import re

import numpy as np
from serve_helpers import b64, jpeg_bytes
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from tf_serving_compat.adapter import ModelAdapter, RequestContext, Route
from tf_serving_compat.factory import build_app
from tf_serving_compat.observers import PredictObserver
from tf_serving_compat.options import ServerOptions


class Watching(ModelAdapter):
    def __init__(self, observers):
        self._observers = observers

    def observers(self):
        return self._observers


class Echo(ModelAdapter):
    """Metadata from the version folder, one route using the context, a pre-processing step."""

    def __init__(self):
        self.loaded, self.preprocessed, self.images = [], 0, []

    def load_metadata(self, name, version, path):
        self.loaded.append((name, version, path.name))
        return {"name": name, "version": version}

    def routes(self):
        return [Route(re.compile(r"/echo/([^/]+)"), frozenset({"POST"}), self.echo)]

    def image_inputs(self, info):
        self.images.append(info.name)
        return super().image_inputs(info)

    def preprocess(self, loaded, info, inputs):
        self.preprocessed += 1
        return inputs

    async def echo(self, ctx: RequestContext):
        body = await ctx.read_body()
        loaded = ctx.resolve(ctx.match.group(1), ctx.request.query_params.get("version"), None, api="echo")
        image = np.empty(1, dtype=object)
        image[0] = await ctx.prepare_image(body)
        outputs = await ctx.predict(loaded, loaded.signature("serving_default"), {"image_bytes": image})
        return JSONResponse(
            {
                "metadata": loaded.metadata,
                "outputs": sorted(outputs),
                "default": ctx.default_model,
                "limit": ctx.options.max_body_bytes,
            }
        )


def test_adapter_metadata_routes_images_and_preprocessing(model_base):
    adapter = Echo()
    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0), adapter=adapter)
    try:
        assert adapter.loaded == [("my_model", 1, "1")]
        assert app.registry.get("my_model").resolve(1).metadata == {"name": "my_model", "version": 1}
        with TestClient(app.app) as c:
            response = c.post("/echo/my_model?version=1", content=jpeg_bytes())
            assert response.status_code == 200
            assert response.json() == {
                "metadata": {"name": "my_model", "version": 1},
                "outputs": ["cc3", "tag_flags", "tags", "top2_codes", "top2_names"],
                "default": "my_model",
                "limit": 64 * 1024 * 1024,
            }
            missing = c.post("/echo/nope", content=jpeg_bytes())
            assert (missing.status_code, missing.json()) == (
                404,
                {"error": "Servable not found for request: Latest(nope)"},
            )
            assert c.post("/v1/models/my_model:predict", json={"instances": [b64(jpeg_bytes())]}).status_code == 200
        assert adapter.preprocessed == 1 and adapter.images == ["serving_default"]
    finally:
        app.close()


def test_observer_hook_sees_predictions_and_refusals_and_a_failing_one_fails_nothing(model_base, caplog):
    """The generic hook (tf_serving_compat.observers): what an observer gets; its errors are logged only."""

    class Recorder:
        def __init__(self):
            self.seen, self.refused, self.attached = [], [], None

        def attach(self, serving):
            self.attached = serving

        def on_predict(self, loaded, signature_name, inputs, outputs):
            self.seen.append((loaded.version, signature_name, {k: v.shape for k, v in inputs.items()}, sorted(outputs)))

        def on_reject(self, model, code, message):
            self.refused.append((model, code))

    class Broken(Recorder):
        def on_predict(self, *args):
            raise RuntimeError("observer bug")

        def on_reject(self, *args):
            raise RuntimeError("observer bug")

    recorder, broken = Recorder(), Broken()
    assert isinstance(recorder, PredictObserver)
    app = build_app(
        ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0), adapter=Watching([broken, recorder])
    )
    try:
        with TestClient(app.app) as c:
            assert c.post("/v1/models/my_model:predict", json={"instances": [b64(jpeg_bytes())] * 2}).status_code == 200
            assert c.post("/v1/models/my_model:predict", json={"instances": []}).status_code == 400
    finally:
        app.close()
    assert recorder.attached is app
    assert recorder.seen == [
        (1, "serving_default", {"image_bytes": (2,)}, ["cc3", "tag_flags", "tags", "top2_codes", "top2_names"])
    ]
    assert recorder.refused == [("my_model", "INVALID_ARGUMENT")]
    assert "observer Broken failed in on_predict" in caplog.text
