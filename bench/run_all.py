"""Run the benchmarks: ``python -m bench.run_all [--smoke] [--only NAME ...]``.

Full mode (``make bench``, ~25 min on 2 cores) writes ``docs/benchmarks.md`` and
``bench/results/latest.json`` (with ``--only``, the named benchmarks replace their
entries in the existing results). Smoke mode (``make bench-smoke``) runs everything
tiny and writes to a temporary folder (or ``--out DIR``), never the docs. ``--render``
re-writes the docs from the saved results without measuring anything.
Each benchmark runs in its own child process (clean TensorFlow state, its own
memory, a time limit).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness

BENCHMARKS = (
    "precision",
    "pipeline",
    "frozen",
    "predict",
    "serve",
    "memory",
    "backbones",
    "export_precision",
    "beam",
    "determinism",
    "serve_protocols",
    "large_requests",
    "budget",
)
DOCS = harness.PROJECT / "docs" / "benchmarks.md"
RESULTS = harness.BENCH_DIR / "results" / "latest.json"

PREFACE = """
Performance of `vinted_classifier` on a small shared CPU machine. Every claim is a **ratio of two
variants measured side by side in one run** — warm-up calls first, then repeated rounds that alternate
the variants' order (A B, B A, …) — with the **absolute figures beside it**. Values are medians over
the rounds; a ratio is the median of the per-round ratios (each round's pair saw the same load).

**Noise.** The machine is shared with other engineers' test runs, so absolute throughputs move by
tens of percent from one run to the next (the 1-minute load average before/after each benchmark is
listed; above the core count means contention). Ratios measured in one run are much steadier, but a
ratio near its goal can still flip between runs; re-run a benchmark alone with
`python -m bench.run_all --only NAME` before drawing conclusions. Images/s are per process on all
usable cores. No timing is asserted in any test (`tests/e2e/test_bench.py` only checks that smoke mode
produces well-formed, positive results).

When the command line below chains `--only` runs, those benchmarks were re-measured after the full
run and replaced their entries (each benchmark's own date is under its heading).

Reproduce: `make bench` (full, writes this file and `bench/results/latest.json`), `make bench-smoke`
(seconds per benchmark, writes to a temp folder). The 10x demo set for the memory benchmark is
generated once into `bench/.cache/` (~25 min on 2 cores) and reused.
"""


def _module(name: str):
    return importlib.import_module(f"bench.bench_{name}")


def run_child(name: str, smoke: bool, out_dir: Path, timeout: float) -> dict:
    """Run ``bench.bench_<name>`` in a child process; return its result record (errors included)."""
    out = out_dir / f"{name}.json"
    log = out_dir / f"{name}.log"
    command = [sys.executable, "-m", f"bench.bench_{name}", "--out", str(out)] + (["--smoke"] if smoke else [])
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(harness.PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=harness.PROJECT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            harness._kill_group(process.pid)
            process.wait()
    seconds = round(time.perf_counter() - started, 1)
    if out.is_file():
        result = json.loads(out.read_text())
    else:
        tail = log.read_text(errors="replace")[-3000:]
        why = f"timed out after {timeout:.0f} s" if process.returncode in (-9, 137) else f"exit {process.returncode}"
        result = {
            "rows": [],
            "error": f"benchmark process {why}:\n{tail}",
            "loadavg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        }
    result["seconds"] = seconds
    result["date"] = harness.now_iso()
    result["mode"] = "smoke" if smoke else "full"
    return result


def _write_docs(report: dict, path: Path) -> None:
    modules = {name: _module(name) for name in report["benchmarks"]}
    harness.write_markdown(
        report,
        path,
        titles={n: m.TITLE for n, m in modules.items()},
        notes={n: m.NOTES for n, m in modules.items()},
        preface=PREFACE,
        tables={n: m.table for n, m in modules.items() if hasattr(m, "table")},
    )


def _print_summary(report: dict) -> None:
    for name, result in report["benchmarks"].items():
        status = "FAILED" if result.get("error") else "ok"
        print(f"== {name}: {status} ({result.get('seconds', 0):.0f} s)")
        for r in result.get("rows", []):
            ratio = f"  ratio {r['ratio']:.3g}x" if r.get("ratio") is not None else ""
            goal = ""
            if r.get("goal") is not None:
                goal = (
                    f"  goal {'>=' if r.get('higher_is_better', True) else '<='} {r['goal']} "
                    f"{'met' if r['goal_met'] else 'MISSED'}"
                )
            print(f"   {r['name']}: {r['value']:.4g} {r['unit']}{ratio}{goal}")
        if result.get("error"):
            print("   " + result["error"].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and data; writes to a temp dir")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"run only these ({', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--out", type=Path, help="smoke mode: write results here instead of a temp dir")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only re-write docs/benchmarks.md from bench/results/latest.json (no measuring)",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds per benchmark (default 900 full or the module's TIMEOUT_S, 300 smoke)"
    )
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(RESULTS.read_text())
        _write_docs(report, DOCS)
        print(f"[bench] report:  {DOCS}", file=sys.stderr)
        return 0
    names = list(args.only or BENCHMARKS)
    timeout = args.timeout or (300.0 if args.smoke else 900.0)
    command = " ".join(["python -m bench.run_all", *map(shlex.quote, argv)])
    started = time.perf_counter()
    report = {
        "date": harness.now_iso(),
        "command": command,
        "mode": "smoke" if args.smoke else "full",
        "machine": harness.machine(),
        "benchmarks": {},
    }

    if args.smoke:
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    else:
        if args.out:
            parser.error("--out is for smoke mode; full mode writes docs/benchmarks.md and bench/results/")
        out_dir = RESULTS.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-children-") as scratch:
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            limit = args.timeout or (300.0 if args.smoke else getattr(_module(name), "TIMEOUT_S", timeout))
            report["benchmarks"][name] = run_child(name, args.smoke, Path(scratch), limit)
            if not args.smoke:  # keep the logs of a full run next to the results (git-ignored *.tmp)
                log = Path(scratch) / f"{name}.log"
                if log.is_file():
                    (out_dir / f"{name}.log.tmp").write_bytes(log.read_bytes())
    report["total_seconds"] = round(time.perf_counter() - started, 1)

    if not args.smoke and args.only and RESULTS.is_file():
        previous = json.loads(RESULTS.read_text())
        merged = {n: previous["benchmarks"][n] for n in BENCHMARKS if n in previous.get("benchmarks", {})}
        merged.update(report["benchmarks"])
        if previous.get("machine") and previous["machine"] != report["machine"]:
            # The header's machine stays the one most sections were measured on; a benchmark
            # re-measured elsewhere carries its own machine (its rows' notes name it).
            for result in report["benchmarks"].values():
                result["machine"] = report["machine"]
            report["machine"] = previous["machine"]
        report["benchmarks"] = {n: merged[n] for n in BENCHMARKS if n in merged}
        report["command"] = f"{previous.get('command')}; then {command}"
        report["total_seconds"] = round(sum(b.get("seconds", 0) for b in report["benchmarks"].values()), 1)
    results_path = out_dir / ("results.json" if args.smoke else RESULTS.name)
    docs_path = out_dir / "benchmarks.md" if args.smoke else DOCS
    results_path.write_text(json.dumps(report, indent=2) + "\n")
    _write_docs(report, docs_path)
    _print_summary(report)
    print(f"[bench] results: {results_path}\n[bench] report:  {docs_path}", file=sys.stderr)
    return 1 if any(b.get("error") for b in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
