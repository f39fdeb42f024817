"""TensorFlow's command-line flag rules, as ``tensorflow_model_server`` applies them.

``tensorflow/core/util/command_line_flags.cc``: a flag matches only as ``--name=value``
(``--name`` alone only for booleans, meaning true); an int32/int64/float value must parse
whole or the binary prints its usage and exits; booleans take true/false/1/0. Arguments that
match no flag are left over: ``main.cc`` prints ``unknown argument`` and starts anyway, which
is how ``--model_base_path X`` silently starts a server without a model. The fake binary in
the tests fails on that instead, so a launcher that writes such flags cannot pass.

The flag table is ``data/tf_serving_main_flags.tsv``, read from TF Serving's ``main.cc``.
"""

from __future__ import annotations

from pathlib import Path

TABLE = Path(__file__).parent / "data" / "tf_serving_main_flags.tsv"
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def flag_table(path: Path = TABLE) -> dict[str, str]:
    """flag name -> type (int32, int64, bool, float, string)."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    header, *entries = rows
    assert header[:2] == ["name", "type"], header
    return {name: kind for name, kind, *_ in entries}


def _value_ok(kind: str, text: str) -> bool:
    if kind == "string":
        return True
    if kind == "bool":
        return text in ("true", "false", "1", "0")
    if kind == "float":
        try:
            float(text)
        except ValueError:
            return False
        return True
    low, high = _INT_RANGES[kind]
    try:
        return low <= int(text, 10) <= high
    except ValueError:
        return False


def parse(argv: list[str], table: dict[str, str] | None = None) -> dict[str, str]:
    """argv -> {name: value}; ValueError names the first argument TensorFlow would not take."""
    table = flag_table() if table is None else table
    parsed: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"unknown argument: {arg}")
        name, equals, value = arg[2:].partition("=")
        kind = table.get(name)
        if kind is None:
            raise ValueError(f"unknown argument: {arg}")
        if not equals:
            if kind != "bool":
                raise ValueError(f"unknown argument: {arg} (only booleans may omit =value)")
            value = "true"
        elif not _value_ok(kind, value):
            raise ValueError(f"Couldn't interpret value {value} for flag {name}.")
        parsed[name] = value
    return parsed
