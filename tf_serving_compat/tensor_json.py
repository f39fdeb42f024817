"""JSON <-> tensor conversion with TF Serving's REST semantics.

Mirrors tensorflow_serving/util/json_tensor.cc: the same request shapes (row and
columnar), the same type rules (int64 rejects 1.0, bool only true/false, strings
accept ``{"b64": ...}``), the same error wording, and the same number writer
(float32 as 6 significant digits unless that does not round-trip, then 9; whole
numbers get ``.0``; NaN/Infinity as bare tokens). Python's ``json`` cannot write
those tokens nor control float digits, hence the small writer here.
No TensorFlow import: arrays are numpy; dtypes are TF enum names ("DT_FLOAT").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

import numpy as np

from .errors import ServingError, invalid, unimplemented

ROW = "row"
COLUMNAR = "columnar"

# TF enum name -> (numpy dtype, DataTypeString as TF prints it in messages).
DTYPES: dict[str, tuple[Any, str]] = {
    "DT_FLOAT": (np.float32, "float"),
    "DT_DOUBLE": (np.float64, "double"),
    "DT_INT32": (np.int32, "int32"),
    "DT_INT16": (np.int16, "int16"),
    "DT_INT8": (np.int8, "int8"),
    "DT_UINT8": (np.uint8, "uint8"),
    "DT_INT64": (np.int64, "int64"),
    "DT_UINT32": (np.uint32, "uint32"),
    "DT_UINT64": (np.uint64, "uint64"),
    "DT_BOOL": (np.bool_, "bool"),
    "DT_STRING": (object, "string"),
    "DT_HALF": (np.float16, "half"),
}

_INT_RANGES = {
    "DT_INT8": (-(2**7), 2**7 - 1),
    "DT_UINT8": (0, 2**8 - 1),
    "DT_INT16": (-(2**15), 2**15 - 1),
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_LOSSLESS_INT = {"DT_FLOAT": 2**24 - 1, "DT_DOUBLE": 2**53 - 1}
_B64_RE = re.compile(r"^[A-Za-z0-9+/\s]*={0,2}\s*$")
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89abcdefABCDEF]")
MAX_RANK = 254  # TensorShape::MaxDimensions()
# numpy holds at most 64 dimensions (NPY_MAXDIMS): deeper values are refused with a 400 up front,
# 63 for one row of "instances" (the batch adds one). No model here takes more than a handful.
ARRAY_MAX_RANK = 64
_ERROR_VALUE_CHARS = 256  # error messages quote the offending JSON, truncated


def dtype_string(dtype: str) -> str:
    return DTYPES.get(dtype, (None, dtype.removeprefix("DT_").lower()))[1]


# ---------------------------------------------------------------- number writer


def format_float(value: float, double: bool = False) -> str:
    """TF Serving's WriteDecimal: short form if it round-trips, else full precision."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if double:
        if float(text) != value:
            text = f"{value:.17g}"
    elif float(np.float32(text)) != value:
        text = f"{value:.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _format_values(flat: list, dtype: Any, as_bytes: bool) -> list[str]:
    """Turn one flat list of Python scalars into JSON tokens for the given numpy dtype."""
    if dtype == np.float32:
        return [format_float(v) for v in flat]
    if dtype in (np.float64, np.float16):
        return [format_float(v, double=dtype == np.float64) for v in flat]
    if dtype == np.bool_:
        return ["true" if v else "false" for v in flat]
    if dtype == object:  # noqa: E721 - numpy dtype equality, not a type check
        if as_bytes:
            return ['{"b64": "' + base64.b64encode(_as_bytes(v)).decode("ascii") + '"}' for v in flat]
        return [json.dumps(_as_bytes(v).decode("utf-8", errors="replace")) for v in flat]
    return [str(int(v)) for v in flat]


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def array_to_json(array: np.ndarray, as_bytes: bool = False) -> str:
    """Write an array as nested JSON lists (a 0-d array as a bare value)."""
    array = np.asarray(array)
    kind = array.dtype.type if array.dtype != object else object
    if array.dtype.kind in "SU":
        array, kind = array.astype(object), object
    tokens = _format_values(array.reshape(-1).tolist(), kind, as_bytes)
    if array.ndim == 0:
        return tokens[0]
    return _nest(tokens, array.shape)


def _nest(tokens: list[str], shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return "[" + ", ".join(tokens) + "]"
    step = int(np.prod(shape[1:])) if shape[1:] else 1
    parts = [_nest(tokens[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
    return "[" + ", ".join(parts) + "]"


def dumps(obj: Any) -> str:
    """Compact JSON that writes numpy values the TF Serving way (float32 digits, NaN tokens)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, np.ndarray):
        return array_to_json(obj)
    if isinstance(obj, (bool, np.bool_)):
        return "true" if obj else "false"
    if isinstance(obj, np.floating):
        return format_float(float(obj), double=obj.dtype == np.float64)
    if isinstance(obj, float):
        return format_float(obj, double=True)
    if isinstance(obj, (int, np.integer)):
        return str(int(obj))
    if obj is None:
        return "null"
    if isinstance(obj, bytes):
        return json.dumps(obj.decode("utf-8", errors="replace"))
    return json.dumps(str(obj))


def error_json(message: str) -> str:
    return json.dumps({"error": message})


# ---------------------------------------------------------------- request parsing


def value_to_string(value: Any) -> str:
    """Render a request value for an error message (compact, truncated)."""
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > _ERROR_VALUE_CHARS:
        text = text[:_ERROR_VALUE_CHARS] + "..."
    return text


def json_type_string(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def parse_json_body(body: bytes) -> dict:
    """Parse a request body; TF Serving wording for empty/invalid/non-object documents."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not text.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {exc.msg}. at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: document nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's 4,300-digit limit
        raise invalid(f"JSON Parse error: Number too big to be stored: {str(exc)[:120]}") from None
    if _SURROGATE_ESCAPE_RE.search(text):
        _reject_lone_surrogates(doc)
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {value_to_string(doc)} Is not object")
    return doc


def _reject_lone_surrogates(doc: Any) -> None:
    """RapidJSON (TF Serving) refuses ``"\\ud800"`` without its pair; Python's json accepts it."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("JSON Parse error: The surrogate pair in string is invalid.") from None
    except (RecursionError, ValueError):
        raise invalid("JSON Parse error: document nested too deeply") from None


def signature_name(doc: dict) -> str:
    """The optional ``signature_name`` (must be a string); '' means serving_default."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {value_to_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    """Decode ``{"b64": "..."}`` with the standard alphabet (URL-safe is rejected, like absl)."""
    if not is_b64_object(value):
        raise invalid(f"JSON Value: {value_to_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    if not _B64_RE.match(text):
        raise invalid("Unable to base64 decode")
    compact = "".join(text.split())
    if "=" not in compact:  # absl accepts unpadded input
        compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid(
        f"JSON Value: {value_to_string(value)} Type: {json_type_string(value)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _convert_scalar(value: Any, dtype: str) -> Any:
    """One JSON leaf -> Python scalar for ``dtype`` (AddValueToTensor's rules)."""
    kind = type(value)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if kind is float:
            if dtype == "DT_FLOAT" and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
                raise _lossy(value, dtype)
            return value
        if kind is int:
            if abs(value) > _MAX_LOSSLESS_INT[dtype]:
                raise _lossy(value, dtype)
            return float(value)
        raise _type_error(value, dtype)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if kind is not int or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_BOOL":
        if kind is not bool:
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_STRING":
        if kind is dict:
            return decode_b64(value)
        if kind is not str:
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    raise unimplemented(f"Conversion of JSON Value: {value_to_string(value)} to type: {dtype_string(dtype)}")


def _lossy(value: Any, dtype: str) -> ServingError:
    return invalid(
        f"Cannot convert JSON value: {value_to_string(value)} to {dtype_string(dtype)} without loss of precision."
    )


def dense_shape(value: Any) -> list[int]:
    """Shape implied by following the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def json_to_array(value: Any, dtype: str, max_rank: int = ARRAY_MAX_RANK, name: str | None = None) -> np.ndarray:
    """A dense JSON value (scalar or nested lists) -> numpy array, checking rank and sizes."""
    shape = dense_shape(value)
    rank = len(shape)
    _check_rank(rank, max_rank, name)  # also bounds the recursion below
    flat: list = []

    def fill(node: Any, level: int) -> None:
        if not isinstance(node, list):
            if level != rank:
                raise invalid(
                    f"JSON Value: {value_to_string(node)} found at incorrect level: {level + 1} "
                    f"in the JSON DOM. Expected at level: {rank}"
                )
            if isinstance(node, dict) and dtype != "DT_STRING":
                raise _type_error(node, dtype)
            flat.append(_convert_scalar(node, dtype))
            return
        if level >= rank:
            raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(node) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(node)} at level: {level} expected size: {shape[level]}"
            )
        if level == rank - 1 and dtype in ("DT_FLOAT", "DT_DOUBLE"):
            # Hot path for pixel arrays: plain numbers need no per-value call.
            if all(type(v) is float for v in node):
                if dtype == "DT_FLOAT" and any(abs(v) > _FLOAT32_MAX and math.isfinite(v) for v in node):
                    pass  # fall through to the slow path for the exact error
                else:
                    flat.extend(node)
                    return
        for child in node:
            fill(child, level + 1)  # noqa: F821 - defined: ``del fill`` below runs after the recursion

    try:
        fill(value, 0)
    finally:
        # ``fill`` refers to itself through its closure cell: a reference cycle that would keep
        # ``flat`` (the request's decoded bytes, megabytes for an image) alive until the cyclic GC.
        del fill
    np_dtype = DTYPES[dtype][0] if dtype in DTYPES else object
    if np_dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


def _check_rank(rank: int, max_rank: int, name: str | None) -> None:
    where = f" for input {name}" if name else ""
    if rank > MAX_RANK:
        raise invalid(f"JSON Value nested {rank} levels deep{where} exceeds the maximum tensor rank of {MAX_RANK}")
    if rank > max_rank:
        raise invalid(
            f"JSON Value nested {rank} levels deep{where} exceeds the maximum tensor rank of {max_rank} "
            "this server supports"
        )


def _status_string(error: ServingError) -> str:
    return f"{error.code}: {error.message}"


def parse_predict_inputs(doc: dict, input_dtypes: dict[str, str]) -> tuple[str, dict[str, np.ndarray]]:
    """``instances``/``inputs`` -> (format, {alias: array}) for a signature's input dtypes."""
    if not input_dtypes:
        raise invalid("Failed to get input map for signature")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {value_to_string(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {value_to_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {value_to_string(doc)} No values in 'instances' array")
        return ROW, _parse_instances(instances, input_dtypes)
    if has_inputs:
        return COLUMNAR, _parse_inputs(doc["inputs"], input_dtypes)
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _parse_instances(instances: list, input_dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    names = sorted(input_dtypes)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    objects = _is_element_object(instances[0])
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, element in enumerate(instances):
        if objects:
            _add_object_instance(rows, input_dtypes, index, element)
            continue
        if _is_element_object(element):
            raise invalid(f"Expecting value/list but got object at item {index} of input list")
        try:
            _add_row(rows, input_dtypes, element, names[0])
        except ServingError as exc:
            raise invalid(
                f"Failed to process element: {index} of 'instances' list. Error: {_status_string(exc)}"
            ) from None
    result = {}
    for name, arrays in rows.items():
        flat = np.concatenate([a.reshape(-1) for a in arrays])  # keeps object elements as bytes
        result[name] = flat.reshape((len(arrays),) + arrays[0].shape)
    return result


def _add_object_instance(
    rows: dict[str, list[np.ndarray]], input_dtypes: dict[str, str], index: int, element: Any
) -> None:
    """One ``{"alias": value, ...}`` element of ``instances``: a row for every input."""
    if not _is_element_object(element):
        raise invalid(f"Expecting object but got list at item {index} of input list")
    for key, value in element.items():
        try:
            _add_row(rows, input_dtypes, value, key)
        except ServingError as exc:
            raise invalid(
                f"Failed to process element: {index} key: {key} of 'instances' list. Error: {_status_string(exc)}"
            ) from None
    if set(element) != set(rows):
        raise invalid(
            f"Failed to process element: {index} of 'instances' list. JSON object: "
            f"{value_to_string(element)} keys must be equal to: {','.join(sorted(rows))}"
        )


def _add_row(rows: dict[str, list[np.ndarray]], input_dtypes: dict[str, str], value: Any, name: str) -> None:
    """One instance's value for input ``name``: same shape as the rows before it."""
    if name not in input_dtypes:
        raise invalid(f"JSON object: does not have named input: {name}")
    array = json_to_array(value, input_dtypes[name], ARRAY_MAX_RANK - 1)  # one row of a batch
    seen = rows[name]
    if seen:
        first = seen[0]
        if first.size != array.size:
            raise invalid(f"Expecting tensor size: {first.size} but got: {array.size}")
        if first.shape != array.shape:
            raise invalid(f"Expecting shape {_shape_str(first.shape)} but got: {_shape_str(array.shape)}")
    seen.append(array)


def _input_array(name: str, value: Any, dtype: str) -> np.ndarray:
    """``json_to_array`` for one named input of the columnar format (rank errors name the input)."""
    return json_to_array(value, dtype, name=name)


def _parse_inputs(value: Any, input_dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    names = sorted(input_dtypes)
    if not isinstance(value, dict) or is_b64_object(value):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        return {names[0]: _input_array(names[0], value, input_dtypes[names[0]])}
    result = {}
    for name in names:
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        result[name] = _input_array(name, value[name], input_dtypes[name])
    extra = sorted(set(value) - set(names))
    if extra:
        shown = ",".join(extra)[:_ERROR_VALUE_CHARS]
        raise invalid(f"Extra inputs in 'inputs' object: {shown} (signature inputs: {','.join(names)})")
    return result


def _shape_str(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------- response writing


def is_bytes_alias(name: str, array: np.ndarray) -> bool:
    """Only DT_STRING outputs whose alias ends in ``_bytes`` go back as ``{"b64": ...}``."""
    return name.endswith("_bytes") and (array.dtype == object or array.dtype.kind == "S")


def predict_response_json(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar), TF Serving layout."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    for array in outputs.values():
        if np.asarray(array).dtype == np.float16:
            raise unimplemented("Failed to write JSON value for tensor type: half")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = array_to_json(outputs[names[0]], is_bytes_alias(names[0], outputs[names[0]]))
        else:
            body = (
                "{"
                + ", ".join(
                    f"{json.dumps(n)}: {array_to_json(outputs[n], is_bytes_alias(n, outputs[n]))}" for n in names
                )
                + "}"
            )
        return '{"outputs": ' + body + "}"
    batch = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows = []
    flags = {n: is_bytes_alias(n, outputs[n]) for n in names}
    for i in range(batch):
        if len(names) == 1:
            rows.append(array_to_json(outputs[names[0]][i], flags[names[0]]))
        else:
            rows.append(
                "{" + ", ".join(f"{json.dumps(n)}: {array_to_json(outputs[n][i], flags[n])}" for n in names) + "}"
            )
    return '{"predictions": [' + ", ".join(rows) + "]}"
