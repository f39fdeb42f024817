"""The project's adapter around the generic ``tf_serving_compat`` server.

Two things live here, because they know about this project and the generic server must not:

* ``VintedAdapter`` (a ``tf_serving_compat.adapter.ModelAdapter``): each version's labels.json and
  reference statistics loaded with it, the ``/predict_image`` upload route, whose answer names the
  model's outputs (``top2_codes``/``top2_names``/``tag_flags``/``cc3``/``tags``) from labels.json,
  and the monitoring observer (``monitoring.metrics.ModelWatcher``);
* the ``vinted serve`` launcher: the real ``tensorflow_model_server`` when it is on PATH
  (with the flags the export's ``serving_config/`` files give it, plus the user's real-binary
  flags only), otherwise our server with the adapter plugged in.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from hostinfo import decide_rewrite
from tf_serving_compat import tensor_json as tj
from tf_serving_compat.adapter import ModelAdapter, RequestContext, Route
from tf_serving_compat.app import json_response
from tf_serving_compat.cli import OWN_FLAGS, boolean_flags, build_parser, flag_names
from tf_serving_compat.errors import failed_precondition, invalid
from tf_serving_compat.observers import PredictObserver
from tf_serving_compat.options import DEFAULT_GRPC_PORT, DEFAULT_REST_PORT
from tf_serving_compat.process import main as serve
from tf_serving_compat.versions import SignatureInfo

from .config import load_config
from .contract import (
    DEFAULT_CATEGORY_COLUMN,
    DEFAULT_MODEL_NAME,
    DEFAULT_SAVED_MODEL_DIR,
    DEFAULT_SIGNATURE,
    TAGS_OUTPUT,
)
from .evaluate.rules import binarize_tags, top2
from .serving_files import real_server_args

if TYPE_CHECKING:  # the monitoring modules load TensorFlow: imported when an adapter is built
    from .monitoring.metrics import ModelWatcher, VersionMetadata

log = logging.getLogger(__name__)

REAL_SERVER = "tensorflow_model_server"
PROG = "vinted serve"
UPLOAD_PATTERN = re.compile(r"/(?:models/([^/:]+)/)?predict_image")
_UPLOAD_HINT = "(curl -F file=@photo.jpeg ...)"


# ---------------------------------------------------------------- the adapter


class VintedAdapter(ModelAdapter):
    """What this project adds to the generic server: metadata, ``/predict_image``, model metrics.

    ``watcher``: the observer to use (tests pass their own); ``observe=False``: none.
    """

    def __init__(self, *, observe: bool = True, watcher: ModelWatcher | None = None):
        # Here, not at the top: the monitoring modules load TensorFlow, and `vinted serve` must start
        # the real tensorflow_model_server without it.
        from .monitoring.metrics import ModelWatcher, load_version_metadata  # noqa: PLC0415

        self._load_metadata = load_version_metadata
        if watcher is None and observe:
            # Active when the server exports metrics (--monitoring_config_file); settings: the
            # config's ``monitoring`` section (configs/default.yaml).
            watcher = ModelWatcher(load_config().monitoring)
        self.watcher = watcher

    def load_metadata(self, name: str, version: int, path: Path) -> VersionMetadata:
        return self._load_metadata(name, version, path)

    def routes(self) -> Sequence[Route]:
        return [Route(UPLOAD_PATTERN, frozenset({"POST"}), predict_image)]

    def observers(self) -> Sequence[PredictObserver]:
        return [self.watcher] if self.watcher is not None else []

    def image_inputs(self, info: SignatureInfo) -> frozenset[str]:
        """The encoded-image signature's string inputs (the pixels signature takes decoded floats)."""
        if info.name != DEFAULT_SIGNATURE:
            return frozenset()
        return super().image_inputs(info)


# ---------------------------------------------------------------- /predict_image


async def predict_image(ctx: RequestContext) -> Response:
    """``curl -F file=@photo.jpeg http://localhost:9000/predict_image`` -> top-2 + tags."""
    body = await ctx.read_body()
    data = await _upload_bytes(ctx.request, body)
    name = ctx.match.group(1) or ctx.default_model
    params = ctx.request.query_params
    loaded = ctx.resolve(name, params.get("version"), params.get("label"), api="predict_image")
    info = loaded.signature(DEFAULT_SIGNATURE)
    aliases = [a for a, s in info.inputs.items() if s.dtype == "DT_STRING"]
    if len(info.inputs) != 1 or not aliases:
        raise failed_precondition(f"Signature {DEFAULT_SIGNATURE} of {name} does not take one encoded image input")
    if not data:
        raise invalid(f"Empty image: send it as multipart field 'file' {_UPLOAD_HINT}")
    array = np.empty(1, dtype=object)
    array[0] = await ctx.prepare_image(data)
    outputs = await ctx.predict(loaded, info, {aliases[0]: array})
    labels = getattr(loaded.metadata, "labels", None) or {}
    return json_response(tj.dumps(describe_prediction(loaded.name, loaded.version, labels, outputs)))


async def _upload_bytes(request: Request, body: bytes) -> bytes:
    """The image: multipart field ``file``, or the raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - malformed multipart is a client error
        raise invalid(f"Malformed multipart body: {getattr(exc, 'message', exc)}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise invalid(f"Missing multipart file field 'file' {_UPLOAD_HINT}")
        return await upload.read()
    finally:
        await form.close()


def describe_prediction(model: str, version: int, labels: dict | None, outputs: dict[str, np.ndarray]) -> dict:
    """Top-2 categories and tag decisions for one image, named from labels.json."""
    labels = labels or {}
    category_key = labels.get("category_output", DEFAULT_CATEGORY_COLUMN)
    probabilities = outputs.get(category_key)
    if probabilities is None:
        raise failed_precondition(f"Model output {category_key!r} not found")
    probabilities = np.asarray(probabilities[0], dtype=np.float32)
    return {
        "model": model,
        "version": str(version),
        "top2": _top2_entries(labels, probabilities, outputs),
        "tags": _tag_entries(labels, outputs),
    }


def _top2_entries(labels: dict, probabilities: np.ndarray, outputs: dict[str, np.ndarray]) -> list[dict]:
    categories = labels.get("categories") or []
    codes = outputs.get("top2_codes")
    ranked = [int(c) for c in (codes[0] if codes is not None else top2(probabilities[None])[0])]
    names = outputs.get("top2_names")
    entries = []
    for rank, code in enumerate(ranked):
        if names is not None:
            label = names[0][rank]
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
        else:
            label = categories[code] if code < len(categories) else str(code)
        entries.append({"code": code, "name": label, "probability": probabilities[code]})
    return entries


def _tag_entries(labels: dict, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    tag_probs = outputs.get(TAGS_OUTPUT)
    if tag_probs is None:
        return tags
    tag_probs = np.asarray(tag_probs[0], dtype=np.float32)
    tag_names = labels.get("tags") or [f"tag_{i}" for i in range(len(tag_probs))]
    thresholds = labels.get("thresholds") or [0.5] * len(tag_probs)
    flags = outputs.get("tag_flags")
    flags = flags[0] if flags is not None else binarize_tags(tag_probs[None], thresholds)[0]
    for i, probability in enumerate(tag_probs):
        tags[tag_names[i] if i < len(tag_names) else f"tag_{i}"] = {
            "probability": probability,
            "present": bool(flags[i]),
        }
    return tags


# ---------------------------------------------------------------- the launcher


_BOOL_WORDS = ("true", "false", "1", "0")


def _flag_name(arg: str) -> str | None:
    return arg[2:].split("=", 1)[0] if arg.startswith("--") and len(arg) > 2 else None


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags the real binary knows, our own flags), every one normalised to ``--name=value``.

    TensorFlow's flag parser (what ``tensorflow_model_server`` uses) takes only ``--name=value``,
    and a bare ``--name`` for booleans: ``--model_base_path X`` would be two unknown arguments
    there, ignored, and the server would start without a model. So ``--name value`` is joined
    here, booleans are written ``--name=true``, and anything else is refused with ValueError.
    """
    parser = build_parser(PROG)
    booleans, known = boolean_flags(parser), flag_names(parser)
    real: list[str] = []
    own: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name = _flag_name(arg)
        if name is None:
            raise ValueError(f"unexpected argument {arg!r}: flags are written --name=value")
        if name not in known:
            raise ValueError(f"unknown flag --{name} (not a tensorflow_model_server flag nor one of ours)")
        following = argv[index + 1] if index + 1 < len(argv) else None
        if "=" in arg:
            flag = arg
        elif name in booleans:
            word = following.lower() if following is not None else ""
            takes_word = word in _BOOL_WORDS
            flag = f"--{name}={word if takes_word else 'true'}"
            index += takes_word
        elif following is None or following.startswith("--"):
            raise ValueError(f"flag --{name} needs a value: --{name}=VALUE")
        else:
            flag = f"--{name}={following}"
            index += 1
        (own if name in OWN_FLAGS else real).append(flag)
        index += 1
    return real, own


def _flag_value(args: list[str], name: str, default: str | None = None) -> str | None:
    """The last ``--name=value`` in normalised ``args`` (later flags win, as in both servers)."""
    value = default
    for arg in args:
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _int_flag(args: list[str], name: str, default: int) -> int:
    text = _flag_value(args, name)
    return default if text is None else int(text)


def server_flags(argv: list[str], default_base: Path) -> tuple[list[str], list[str]]:
    """(tensorflow_model_server flags, our own flags) for ``vinted serve ARGV``.

    When the export wrote ``<saved_model_dir>/serving_config/``, its files give the base flags
    (``serving_files.real_server_args``: model config, batching, monitoring, the session config for
    this host's rewrite decision); the user's real-binary flags follow so they win. A user
    ``--model_base_path`` replaces the config file's model list, as in the real binary.
    """
    real, own = split_args(argv)
    rest_port = _int_flag(real, "rest_api_port", DEFAULT_REST_PORT)
    grpc_port = _int_flag(real, "port", DEFAULT_GRPC_PORT)
    user_base = _flag_value(real, "model_base_path")
    base = Path(user_base or default_base)
    config_dir = base.parent / "serving_config"
    if config_dir.is_dir():
        decision = decide_rewrite(_flag_value(own, "mixed_precision_rewrite", "auto") or "auto")
        base_args = [
            arg
            for arg in real_server_args(config_dir, decision, rest_port, grpc_port)
            if not (user_base and arg.startswith("--model_config_file"))
        ]
    else:
        base_args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}"]
    if not user_base and not any(a.startswith("--model_config_file") for a in base_args + real):
        base_args += [f"--model_name={DEFAULT_MODEL_NAME}", f"--model_base_path={base}"]
    return [*base_args, *real], own


def serve_main(argv: list[str] | None = None) -> int:
    """``vinted serve``: the real tensorflow_model_server when on PATH, else our server, same flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    default_base = Path(
        os.environ.get("TF_SERVING_COMPAT_MODEL_BASE_PATH") or DEFAULT_SAVED_MODEL_DIR / DEFAULT_MODEL_NAME
    )
    if "--help" in argv or "-h" in argv:
        build_parser(PROG).print_help()
        return 0
    try:
        real, own = server_flags(argv, default_base)
    except ValueError as exc:
        print(f"vinted serve: {exc}", file=sys.stderr)
        return 2
    binary = shutil.which(REAL_SERVER)
    if binary:
        if own:
            print(f"not passed to {REAL_SERVER} (flags of our server only): {' '.join(own)}", file=sys.stderr)
        print(f"using the real {REAL_SERVER}: {binary} {' '.join(real)}", file=sys.stderr, flush=True)
        try:
            return subprocess.call([binary, *real])
        except KeyboardInterrupt:
            return 130
    print(f"{REAL_SERVER} not on PATH: using tf_serving_compat", file=sys.stderr, flush=True)
    return serve([*real, *own], adapter=VintedAdapter(), prog=PROG)


if __name__ == "__main__":
    raise SystemExit(serve_main())
