"""Execute ``Vinted_exercise.ipynb`` with papermill on this project's own interpreter.

    python -m tools.notebook run                 # default parameters -> a temp copy
    python -m tools.notebook run --smoke         # tiny demo set, temp outputs -> a temp copy
    python -m tools.notebook run --in-place      # regenerate the committed notebook (make notebook)
    python -m tools.notebook run -p epochs=5 --output /tmp/nb.ipynb

The kernel is always this interpreter (``sys.executable``): a ``python3`` kernelspec pointing at it is written
to a temp folder that is put first on ``JUPYTER_PATH``, so a user-level ``python3`` kernel elsewhere cannot take
over. ``--smoke`` never writes the committed copy and keeps its data, runs and SavedModels in a temp folder
that is deleted afterwards. ``--in-place`` executes into a temp file first and replaces the committed notebook
only when every cell succeeded, after stripping run-specific noise (timings, papermill metadata, kernel
details, progress-bar redraws) so that diffs show real changes. Any cell error exits non-zero and names the cell.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from vinted_classifier.config import PROJECT_ROOT

log = logging.getLogger(__name__)

NOTEBOOK = PROJECT_ROOT / "Vinted_exercise.ipynb"
KERNEL_NAME = "python3"
WORKDIR_ENV = "VINTED_NOTEBOOK_WORKDIR"  # read by module.config(smoke=True)
SMOKE_PARAMETERS = {"smoke": True, "demo_scale": 0.1}
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL_NAME}


class NotebookError(RuntimeError):
    """A cell failed; the message names the cell and the exception."""


# --------------------------------------------------------------------------- parameters


def parse_parameters(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML (``epochs=3``, ``image_size=[64,48]``, ``data_dir=null``)."""
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"parameter {item!r} must look like name=value")
        parameters[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return parameters


def free_port() -> int:
    """A TCP port that was free a moment ago (for the smoke run's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- kernel


@contextmanager
def venv_kernel() -> Iterator[str]:
    """A ``python3`` kernelspec that runs ``sys.executable``, first on ``JUPYTER_PATH`` for the duration."""
    folder = Path(tempfile.mkdtemp(prefix="vinted-kernel-"))
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNELSPEC["display_name"],
        "language": "python",
        "metadata": {"debugger": True},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(folder), *([previous] if previous else [])])
    try:
        yield KERNEL_NAME
    finally:
        if previous is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- cleaning


_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# TensorFlow's C++ start-up INFO lines (absl format, not silenced by TF_CPP_MIN_LOG_LEVEL) and their preamble.
_TF_INFO = re.compile(
    r"^(I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)\n?",
    re.MULTILINE,
)


def collapse_terminal(text: str) -> str:
    """What a terminal would show: ``\\r`` rewinds the line, ``\\b`` deletes a character, ANSI codes vanish.

    Keras progress bars redraw one line hundreds of times; only the final state of each line is kept.
    """
    text = _CSI.sub("", text.replace("\r\n", "\n"))
    lines = []
    for line in text.split("\n"):
        shown: list[str] = []
        cursor = 0
        for piece in re.split(r"([\r\b])", line):
            if piece == "\r":
                cursor = 0
            elif piece == "\b":
                cursor = max(0, cursor - 1)
            else:
                shown[cursor : cursor + len(piece)] = piece
                cursor += len(piece)
        lines.append("".join(shown).rstrip())
    return "\n".join(lines)


def _clean_outputs(outputs: list) -> list:
    """Merge consecutive stream chunks of the same stream, then collapse their redraws."""
    merged: list = []
    for output in outputs:
        if (
            output.get("output_type") == "stream"
            and merged
            and merged[-1].get("output_type") == "stream"
            and merged[-1].get("name") == output.get("name")
        ):
            merged[-1]["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = _TF_INFO.sub("", collapse_terminal(output["text"]))
        output.get("metadata", {}).pop("papermill", None)
    return [o for o in merged if not (o.get("output_type") == "stream" and not o["text"].strip())]


def strip_noise(nb: dict) -> dict:
    """Remove what changes on every run without meaning anything; return a cleaned copy.

    Execution counts become 1..n in cell order, papermill/nbclient timing metadata goes, the kernelspec is
    the plain ``python3`` one and language_info keeps only the language name and version.
    """
    nb = copy.deepcopy(nb)
    nb["metadata"].pop("papermill", None)
    nb["metadata"]["kernelspec"] = dict(KERNELSPEC)
    info = nb["metadata"].get("language_info", {})
    nb["metadata"]["language_info"] = {k: info[k] for k in ("name", "version") if k in info} or {"name": "python"}
    count = 0
    for cell in nb["cells"]:
        metadata = cell.setdefault("metadata", {})
        for key in ("papermill", "execution", "collapsed", "scrolled"):
            metadata.pop(key, None)
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is not None or cell.get("outputs"):
            count += 1
            cell["execution_count"] = count
            for output in cell.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = count
        cell["outputs"] = _clean_outputs(cell.get("outputs", []))
    return nb


def clear_outputs(nb: dict) -> dict:
    """The notebook as source only (what ``--clear`` writes)."""
    nb = strip_noise(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


# --------------------------------------------------------------------------- execution


def _failure(error: Exception, output: Path) -> NotebookError:
    """Name the failing cell (position among code cells and first source line) from the executed copy."""
    # nbformat and papermill are the [notebook] extra: the helpers above and `--help` work without it.
    import nbformat  # noqa: PLC0415

    detail = f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', error)}"
    where = "a cell"
    try:  # papermill puts an error banner cell on top, so find the cell carrying the error output
        code_cells = [c for c in nbformat.read(str(output), as_version=4).cells if c.cell_type == "code"]
        for number, cell in enumerate(code_cells, start=1):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip()), "")
                where = f"code cell {number} (`{first[:80]}`)"
                break
    except Exception:  # noqa: BLE001 - the message is still useful without the source line
        pass
    return NotebookError(f"notebook failed in {where}: {detail}; executed copy with the traceback: {output}")


def execute(
    output: Path,
    parameters: dict[str, Any] | None = None,
    *,
    source: Path = NOTEBOOK,
    workdir: Path | None = None,
    timeout: int | None = None,
) -> dict:
    """Run ``source`` into ``output`` with papermill on this interpreter; raise NotebookError on a cell error."""
    # nbformat and papermill are the [notebook] extra: the helpers above and `--help` work without it.
    import nbformat  # noqa: PLC0415
    import papermill  # noqa: PLC0415
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415

    output.parent.mkdir(parents=True, exist_ok=True)
    env = {
        WORKDIR_ENV: str(workdir) if workdir else None,
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    with venv_kernel() as kernel_name, _environment(**env):
        try:
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters=parameters or None,
                kernel_name=kernel_name,
                cwd=str(PROJECT_ROOT),
                progress_bar=sys.stderr.isatty(),
                log_output=False,
                execution_timeout=timeout,
            )
        except PapermillExecutionError as error:
            raise _failure(error, output) from error
    return nbformat.read(str(output), as_version=4)


def check_interpreter(nb: dict) -> None:
    """The kernel must have been this interpreter: the notebook's first outputs print ``sys.prefix``."""
    text = json.dumps([c.get("outputs", []) for c in nb["cells"][:5] if c["cell_type"] == "code"])
    if json.dumps(sys.prefix)[1:-1] not in text:
        raise NotebookError(f"the notebook did not report running in {sys.prefix}; check the kernel")


def run(
    *,
    smoke: bool = False,
    in_place: bool = False,
    output: Path | None = None,
    parameters: dict[str, Any] | None = None,
    source: Path = NOTEBOOK,
    timeout: int | None = None,
) -> Path:
    """Execute the notebook as the CLI does; return the executed notebook's path."""
    # nbformat and papermill are the [notebook] extra: the helpers above and `--help` work without it.
    import nbformat  # noqa: PLC0415

    parameters = dict(parameters or {})
    if in_place and (smoke or parameters or output):
        raise ValueError(
            "--in-place regenerates the committed notebook with its default parameters; "
            "it takes no --smoke, -p or --output"
        )
    if smoke:
        parameters = {**SMOKE_PARAMETERS, "port": free_port(), **parameters}
        if output is not None and Path(output).resolve() == Path(source).resolve():
            raise ValueError("--smoke never writes the committed notebook; choose another --output")
    scratch = Path(tempfile.mkdtemp(prefix="vinted-notebook-"))
    target = Path(output) if output else scratch / f"{Path(source).stem}.executed.ipynb"
    started = time.perf_counter()
    try:
        nb = execute(target, parameters, source=source, workdir=scratch / "work" if smoke else None, timeout=timeout)
        check_interpreter(nb)
    finally:  # the smoke workspace (demo data, runs, SavedModels) goes; a failed copy stays for its traceback
        shutil.rmtree(scratch if output else scratch / "work", ignore_errors=True)
    if in_place:
        cleaned = strip_noise(nb)
        nbformat.validate(cleaned)
        staged = Path(source).with_name(f".{Path(source).name}.tmp")
        nbformat.write(nbformat.from_dict(cleaned), str(staged))
        os.replace(staged, source)
        target = Path(source)
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("notebook executed in %.0fs -> %s", time.perf_counter() - started, target)
    return target


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.notebook", description="Execute Vinted_exercise.ipynb with papermill on this interpreter."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the notebook")
    run_p.add_argument("--smoke", action="store_true", help="tiny demo set, temp outputs, into a temp copy")
    run_p.add_argument("--in-place", action="store_true", help="regenerate the committed notebook (default parameters)")
    run_p.add_argument("--output", type=Path, default=None, help="where the executed copy goes (default: a temp file)")
    run_p.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter, value parsed as YAML (repeatable)",
    )
    run_p.add_argument("--source", type=Path, default=NOTEBOOK, help=argparse.SUPPRESS)
    run_p.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")
    clear_p = sub.add_parser("clear", help="strip outputs and noise from the committed notebook")
    clear_p.add_argument("--source", type=Path, default=NOTEBOOK, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "clear":
        # nbformat and papermill are the [notebook] extra: the helpers above and `--help` work without it.
        import nbformat  # noqa: PLC0415

        nb = nbformat.read(str(args.source), as_version=4)
        nbformat.write(nbformat.from_dict(clear_outputs(nb)), str(args.source))
        print(f"cleared {args.source}")
        return 0
    try:
        path = run(
            smoke=args.smoke,
            in_place=args.in_place,
            output=args.output,
            parameters=parse_parameters(args.parameter),
            source=args.source,
            timeout=args.cell_timeout,
        )
    except (NotebookError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"executed notebook: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
