"""The shared benchmark harness: timing, child-process peak RSS, result rows, markdown.

Design rules (the machine is shared, so absolute numbers drift between runs):

* every claim is a *ratio* of two variants measured side by side in one process:
  warm-up calls first, then ``repeats`` rounds that alternate the variants' order
  (A B, B A, A B, ...); each row reports the medians, and the ratio is the median
  of the per-round ratios (each round's pair saw the same machine load);
* absolute figures go beside every ratio, with the 1-minute load average
  before/after each benchmark as a noise indicator;
* peak RSS is measured on a child process: its kernel high-water mark VmHWM
  (reported by the child itself at exit, or polled from /proc); ``ru_maxrss`` is not used
  because on Linux it includes the parent's RSS at fork time.

A benchmark module ``bench/bench_<name>.py`` defines ``TITLE``, ``NOTES`` and
``run(ctx) -> list[dict]`` (rows made with :func:`row`); ``python -m bench.bench_<name>``
runs it alone through :func:`child_main`. ``bench.run_all`` runs each in a child
process and writes the report.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from vinted_classifier.config import load_config

PROJECT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT / "bench"
CACHE_DIR = BENCH_DIR / ".cache"
ROW_FIELDS = (
    "bench",
    "name",
    "value",
    "unit",
    "baseline_name",
    "baseline_value",
    "ratio",
    "goal",
    "goal_met",
    "samples",
    "note",
)


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What a benchmark needs to know: mode, scratch folder, cache folder."""

    name: str
    smoke: bool
    work: Path  # scratch, deleted afterwards
    cache: Path = CACHE_DIR  # kept between runs (git-ignored)
    extra: dict[str, Any] = field(default_factory=dict)

    def pick(self, full: Any, smoke: Any) -> Any:
        """``smoke`` in smoke mode, else ``full``."""
        return smoke if self.smoke else full

    @property
    def image_size(self) -> tuple[int, int]:
        return self.pick((160, 128), (32, 32))


# --------------------------------------------------------------------------- rows


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def row(
    bench: str,
    name: str,
    value: float,
    unit: str,
    *,
    baseline_name: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    goal: float | None = None,
    higher_is_better: bool = True,
    samples: Sequence[float] | None = None,
    note: str = "",
) -> dict:
    """One result line. ``ratio`` defaults to value / baseline_value; ``goal`` is a minimum
    ratio (or a maximum when ``higher_is_better`` is false)."""
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    goal_met = None
    if goal is not None and ratio is not None:
        goal_met = bool(ratio >= goal) if higher_is_better else bool(ratio <= goal)
    return {
        "bench": bench,
        "name": name,
        "value": _clean(float(value)),
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline_value": None if baseline_value is None else _clean(float(baseline_value)),
        "ratio": None if ratio is None else _clean(float(ratio)),
        "goal": goal,
        "goal_met": goal_met,
        "higher_is_better": higher_is_better,
        "samples": None if samples is None else _clean([float(s) for s in samples]),
        "note": note,
    }


def ratio_rows(
    bench: str,
    name: str,
    baseline_name: str,
    times: dict[str, list[float]],
    items: float,
    variant: str,
    baseline: str,
    *,
    unit: str = "img/s",
    goal: float | None = None,
    baseline_items: float | None = None,
    note: str = "",
) -> dict:
    """Throughput row (items per second) of ``variant`` vs ``baseline`` from interleaved times.

    value/baseline_value are median throughputs; ratio is the median of per-round ratios.
    """
    baseline_items = items if baseline_items is None else baseline_items
    rates = [items / t for t in times[variant]]
    base_rates = [baseline_items / t for t in times[baseline]]
    paired = [a / b for a, b in zip(rates, base_rates, strict=True)]
    result = row(
        bench,
        name,
        median(rates),
        unit,
        baseline_name=baseline_name,
        baseline_value=median(base_rates),
        ratio=median(paired),
        goal=goal,
        samples=rates,
        note=note,
    )
    result["baseline_samples"] = _clean([float(b) for b in base_rates])
    return result


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def interleaved(
    variants: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1, deadline: float | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each variant: ``warmup`` untimed rounds, then ``repeats`` rounds
    alternating the order (A B, B A, ...). Stops early (keeping >= 1 round) past ``deadline``
    (a ``time.monotonic()`` value)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeats):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            seconds, _ = timed(variants[name])
            times[name].append(seconds)
        if deadline is not None and time.monotonic() > deadline:
            break
    return times


# --------------------------------------------------------------------------- memory


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """``VmHWM`` (peak resident set of the process's current address space) in MiB, or None.

    Unlike ``ru_maxrss``, VmHWM starts afresh at ``exec``: a child's ``ru_maxrss`` on Linux is at
    least its parent's RSS at fork time (the pre-exec address space counts), which would inflate
    children of a benchmark process that already holds TensorFlow and a model.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_of(
    command: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = PROJECT,
    log_path: Path | None = None,
    poll_s: float = 0.05,
) -> dict:
    """Run ``command`` as a child; return its peak RSS (MiB), wall seconds and exit code.

    ``peak_rss_mb``: the child's VmHWM (kernel high-water mark of its resident set since exec),
    read every ``poll_s`` while it runs — exact for any peak reached before the last read, so only
    growth in its final ``poll_s`` could be missed. ``ru_maxrss_mb`` (``os.wait4``) is kept for
    reference but includes the parent's RSS at fork time (see :func:`vm_hwm_mb`).
    ``polled_peak_mb`` is the largest summed RSS of the child and its descendants seen by polling.
    A command that writes its own final VmHWM (see :func:`own_peak_rss_mb`) is more exact still.
    """

    full_env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    full_env.update(env or {})
    log_file = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command), cwd=cwd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    polled, hwm = [0], [0.0]
    done = threading.Event()

    def poll() -> None:
        try:
            parent = psutil.Process(process.pid)
        except psutil.Error:
            return
        while not done.is_set():
            try:
                total = parent.memory_info().rss
                peak = vm_hwm_mb(process.pid)
                if peak is not None:
                    hwm[0] = max(hwm[0], peak)
                for child in parent.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                polled[0] = max(polled[0], total)
            except psutil.Error:
                return
            done.wait(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    timer = threading.Timer(timeout, lambda: _kill_group(process.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
        done.set()
        poller.join(5)
        if log_path:
            log_file.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    ru_maxrss = usage.ru_maxrss / 1024.0
    return {
        "peak_rss_mb": hwm[0] or ru_maxrss,
        "ru_maxrss_mb": ru_maxrss,
        "polled_peak_mb": polled[0] / 2**20,
        "seconds": time.perf_counter() - started,
        "returncode": process.returncode,
    }


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child's own session (start_new_session=True)
    except ProcessLookupError:
        pass


def own_peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM; ``ru_maxrss`` where /proc is missing)."""
    peak = vm_hwm_mb()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    """CPU model, cores, RAM, bf16 flags, library versions, load average."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "keras", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_bf16_flags": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _goal(r: dict) -> str:
    if r.get("goal") is None:
        return ""
    sign = "≥" if r.get("higher_is_better", True) else "≤"
    mark = {True: " ✅", False: " ❌", None: ""}[r.get("goal_met")]
    return f"{sign} {r['goal']}×{mark}"


def rows_table(rows: list[dict]) -> str:
    lines = [
        "| measurement | value | baseline | baseline value | ratio | goal | note |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = f"{_fmt(r['ratio'])}×" if r.get("ratio") is not None else ""
        base = f"{_fmt(r['baseline_value'])} {r['unit']}" if r.get("baseline_value") is not None else ""
        note = str(r.get("note") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r['name']} | {_fmt(r['value'])} {r['unit']} | {r.get('baseline_name') or ''} | {base} "
            f"| {ratio} | {_goal(r)} | {note} |"
        )
    return "\n".join(lines)


def write_markdown(
    report: dict,
    path: Path,
    *,
    titles: dict[str, str],
    notes: dict[str, str],
    preface: str = "",
    tables: dict[str, Callable[[list[dict]], str]] | None = None,
) -> None:
    """The report. ``tables[name](rows)`` replaces the generic rows table of that benchmark."""
    tables = tables or {}
    m = report["machine"]
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by `python -m bench.run_all` (make bench); edit bench/*.py, not this file -->",
        "",
    ]
    if preface:
        out += [preface.strip(), ""]
    out += [
        "## Run",
        "",
        f"* **Date:** {report['date']} (UTC; each benchmark's own date is under its heading); "
        f"total wall time {report['total_seconds'] / 60:.1f} min",
        f"* **Command:** `{report['command']}`",
        f"* **Machine:** {m['cpu_model']}; {m['usable_cores']} usable of {m['logical_cores']} logical cores; "
        f"{m['ram_gib']} GiB RAM; CPU flags {', '.join(m['cpu_bf16_flags']) or 'none'}; {m['platform']}",
        f"* **Software:** Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, NumPy {m['numpy']}",
        f"* **Load average (1 min)** at start: {m['loadavg_1m']}; per benchmark below.",
        "",
    ]
    summary = [r for b in report["benchmarks"].values() for r in b.get("rows", []) if r.get("goal") is not None]
    if summary:
        out += ["## Goals at a glance", "", "| benchmark | measurement | ratio | goal |", "|---|---|---:|---|"]
        for r in summary:
            out.append(f"| {r['bench']} | {r['name']} | {_fmt(r['ratio'])}× | {_goal(r)} |")
        out.append("")
    for name, result in report["benchmarks"].items():
        out += [f"## {titles.get(name, name)} (`{name}`)", ""]
        load = result.get("loadavg_1m") or {}
        when = f"{result['date']}, " if result.get("date") else ""
        out.append(
            f"*{when}{result.get('mode', 'full')} mode, {result.get('seconds', 0):.0f} s; load average "
            f"{load.get('before', '?')} → {load.get('after', '?')}*"
        )
        out.append("")
        if result.get("error"):
            out += ["**Failed:**", "", "```", result["error"].strip()[-2000:], "```", ""]
        if result.get("rows"):
            out += [(tables[name] if name in tables else rows_table)(result["rows"]), ""]
        if notes.get(name):
            out += [notes[name].strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(out).rstrip() + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- project helpers


def ensure_demo(folder: Path, scale: float, seed: int = 0) -> Path:
    """A demo dataset at ``scale``, generated once and reused (``bench/.cache`` by default)."""
    if (folder / "data.parquet").is_file() and (folder / "test.parquet").is_file():
        return folder
    # The project and TensorFlow load in a benchmark's process only: run_all imports the harness.
    from vinted_classifier.demo import generate_demo_dataset  # noqa: PLC0415

    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"[bench] generating demo data scale={scale} into {folder} (once; cached)", file=sys.stderr, flush=True)
    generate_demo_dataset(folder, scale=scale, seed=seed, force=True)
    return folder


def demo_dir(ctx: Context) -> Path:
    """Full mode: the repo's demo set (scale 1); smoke: a cached scale-0.02 set."""
    if ctx.smoke:
        return ensure_demo(ctx.cache / "demo_s0.02", 0.02)
    folder = PROJECT / "data" / "demo"
    if not (folder / "data.parquet").is_file():
        ensure_demo(folder, 1.0)
    return folder


def bench_config(ctx: Context, data_dir: Path | None = None, overrides: Sequence[str] = ()):
    """The default run pointed at the bench data; smoke mode stacks the ``smoke`` preset, without weights."""

    height, width = ctx.image_size
    sets = [
        f"data.data_dir={data_dir or demo_dir(ctx)}",
        f"model.image_height={height}",
        f"model.image_width={width}",
        "train.verbose=0",
        f"output_dir={ctx.work / 'runs'}",
        f"export.saved_model_dir={ctx.work / 'saved_model'}",
    ]
    if ctx.smoke:
        sets.append("model.weights=none")
    return load_config(None, [*sets, *overrides], presets=["smoke"] if ctx.smoke else ())


def vocabulary(cfg) -> tuple[list[str], list[str]]:
    """(categories, tag names) from the labels file, without the image checks of ``prepare``."""
    # The project and TensorFlow load in a benchmark's process only: run_all imports the harness.
    from vinted_classifier import data  # noqa: PLC0415

    vocab = data.Vocabulary.from_labels(data.read_labels(cfg.data), cfg.data)
    return list(vocab.categories), list(vocab.tags)


def compile_for(bundle, keras_model, cfg, learning_rate: float) -> None:
    # The project and TensorFlow load in a benchmark's process only: run_all imports the harness.
    from vinted_classifier.model import compile_model  # noqa: PLC0415

    compile_model(
        keras_model,
        category_output=cfg.data.category_column,
        n_tags=len(bundle.tag_names),
        tag_names=list(bundle.tag_names),
        learning_rate=learning_rate,
        loss_weights=cfg.train.loss_weights,
        label_smoothing=cfg.train.label_smoothing,
    )


def auto_policy() -> str:
    # The project and TensorFlow load in a benchmark's process only: run_all imports the harness.
    from vinted_classifier.precision import resolve_precision  # noqa: PLC0415

    return resolve_precision("auto")


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        # absl comes with TensorFlow: present whenever there is TensorFlow logging to quieten.
        import absl.logging  # noqa: PLC0415

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


# --------------------------------------------------------------------------- entry points


def run_benchmark(module, ctx: Context) -> dict:
    """Run one benchmark module in this process; returns its result record."""
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    rows, error = [], None
    try:
        rows = module.run(ctx)
    except Exception:  # noqa: BLE001 - reported in the results, the other benchmarks still run
        error = traceback.format_exc()
    for r in rows:
        missing = set(ROW_FIELDS) - set(r)
        if missing:
            raise ValueError(f"row {r.get('name')!r} of {ctx.name} lacks {sorted(missing)}")
    return {
        "rows": rows,
        "error": error,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "peak_rss_mb": round(own_peak_rss_mb(), 1),
    }


def child_main(module, argv: list[str] | None = None) -> int:
    """``python -m bench.bench_<name> [--smoke] [--work DIR] [--out FILE]``: run one benchmark."""
    spec = getattr(module, "__spec__", None)  # under ``python -m`` __name__ is "__main__"
    name = (spec.name if spec else module.__name__).rsplit(".", 1)[-1].removeprefix("bench_")
    parser = argparse.ArgumentParser(description=getattr(module, "TITLE", name))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--out", type=Path, help="write the result record (JSON) here")
    args = parser.parse_args(argv)
    quiet_tensorflow()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run_benchmark(module, Context(name=name, smoke=args.smoke, work=work))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    if result["error"]:
        print(result["error"], file=sys.stderr)
    return 1 if result["error"] else 0
