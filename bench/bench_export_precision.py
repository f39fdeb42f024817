"""Export precision across CPUs: float32 graph, float32 + rewrite, bf16 graph under each oneDNN ISA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench import harness

TITLE = "8. Export precision across CPUs: float32 graph, float32 + rewrite, bf16 graph"
NOTES = """
The same VGG19 weights exported twice through `export.export_saved_model`: a float32 graph (the
default) and a bfloat16 graph (`export.precision=bfloat16`). Each oneDNN ISA cap runs in its own child
process (`ONEDNN_MAX_CPU_ISA` is read once, when oneDNN starts): `AVX2` (many AMD servers, laptops),
`AVX512_CORE` (AVX-512 without bf16: most cloud x86 servers), and no cap (this machine as it is).
Under each cap three variants run, each in its own child process (a SavedModel loaded a second time in
one process reuses functions optimised at its first load, so a rewrite switched on in between would
silently not apply), on the same 16 demo JPEGs through `serving_default`, alternating call by call:
*float32*, *float32 + rewrite* (the float32 graph loaded after switching on
`auto_mixed_precision_onednn_bfloat16`), *bf16 graph*. A variant that
raises (oneDNN has no bf16 primitive below AVX-512) is reported as failing. The row compares what the
product does by default on that host — the float32 graph plus `decide_rewrite("auto")` — with the
fastest variant that runs there (goal ≥ 0.95×).

Measured on an AMD EPYC with AVX512_BF16 and no AMX (2026-12-01; the report header names the machine of
the full run), all three caps in one run: uncapped, the float32 graph with the host's rewrite runs at the
bf16 graph's speed and 1.8× float32; under `AVX512_CORE` the bf16 graph and the forced rewrite fall to a third
of float32; under `AVX2` both fail ("Graph execution error"), as on Intel. So the float32 export with
`decide_rewrite("auto")` is the fastest choice, or within noise of it, on every one of these hosts, and the
only one that runs on all of them. The figures from an Intel CPU with AMX (float32 13.3 img/s, bf16 graph
26.5, float32 + rewrite 26.6; bf16 graph 4.9 under `AVX512_CORE`, failing under `AVX2`) are in
docs/export.md. An earlier run on an AMD EPYC without bf16 units (2026-11-22) found the three variants
equal within noise there; it loaded all variants in one process, which (found on 2026-12-01) can leave the
rewrite variant running the float32 functions, so its rewrite column is not evidence either way.
"""

# One process per variant: loading the same SavedModel a second time in one process reuses the
# functions TensorFlow optimised at the first load, so a rewrite switched on in between is not applied
# (measured: "float32 + rewrite" then runs at float32 speed). Each child loads its variant, warms it,
# says ready, then times one call per "run" line on stdin, so the parent can alternate the variants.
CHILD = r"""
import json, sys, time
import tensorflow as tf
from hostinfo import RewriteDecision, apply_rewrite, decide_rewrite
path, mode, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
auto = decide_rewrite("auto")
apply_rewrite(RewriteDecision(mode, "benchmark"))  # before the load: functions are optimised at first call
batch = tf.constant([open(f, "rb").read() for f in files])
try:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    fn(image_bytes=batch)["cc3"].numpy()
except Exception as error:  # noqa: BLE001
    print(json.dumps({"error": str(error).strip().splitlines()[0][:160]}), flush=True)
    raise SystemExit(0)
print(json.dumps({"ready": True, "auto": auto.mode, "auto_reason": auto.reason}), flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    fn(image_bytes=batch)["cc3"].numpy()
    print(json.dumps({"s": time.perf_counter() - started}), flush=True)
"""
VARIANTS = (("float32", "float32", "off"), ("float32 + rewrite", "float32", "bf16"), ("bf16 graph", "bfloat16", "off"))


def measure_isa(exports: dict, files: list[str], repeats: int, env: dict) -> dict:
    """Start one child per variant under ``env``, alternate timed calls between them; times and errors."""
    children, logs, errors, auto = {}, [], {}, None
    try:
        for name, precision, mode in VARIANTS:
            log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - a file, so a chatty child never blocks on a pipe
            logs.append(log)
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(exports[precision]), mode, json.dumps(files)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
            first = child.stdout.readline()
            if not first:
                child.wait(60)
                log.seek(0)
                raise RuntimeError(f"{name} child failed: {log.read()[-1500:]}")
            status = json.loads(first)
            if "error" in status:
                errors[name] = status["error"]
                child.wait(60)
                continue
            children[name] = child
            auto = auto or status
        times = {name: [] for name in children}
        for index in range(repeats):
            for name in list(children) if index % 2 == 0 else list(children)[::-1]:
                children[name].stdin.write("run\n")
                children[name].stdin.flush()
                times[name].append(json.loads(children[name].stdout.readline())["s"])
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait(60)
        for log in logs:
            log.close()
    if auto is None:
        raise RuntimeError(f"no variant runs: {errors}")
    return {"times": times, "errors": errors, "auto": auto["auto"], "auto_reason": auto["auto_reason"]}


ISAS = ("AVX2", "AVX512_CORE", None)


def run(ctx: harness.Context) -> list[dict]:
    from vinted_classifier import data, export
    from vinted_classifier.model import build_model
    from vinted_classifier.runs import RunLabels

    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    model = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column).model
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    exports = {
        precision: export.export_saved_model(
            model, labels, ctx.work / precision, "m", precision=precision, model_cfg=cfg.model
        )
        for precision in ("float32", "bfloat16")
    }
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()[: ctx.pick(16, 4)]
    files = [str(cfg.data.images / f"{uuid}.jpeg") for uuid in ids]
    repeats = ctx.pick(6, 2)
    rows = []
    for isa in ISAS:
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        env.update(
            {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
        )
        try:
            result = measure_isa(exports, files, repeats, env)
        except RuntimeError as error:
            raise RuntimeError(f"ISA {isa or 'default'}: {error}") from None
        rates = {name: [len(files) / t for t in samples] for name, samples in result["times"].items()}
        medians = {name: harness.median(values) for name, values in rates.items()}
        fastest = max(medians, key=medians.get)
        default = "float32 + rewrite" if result["auto"] == "bf16" else "float32"
        paired = [a / b for a, b in zip(rates[default], rates[fastest], strict=True)]
        described = [f"{name} {medians[name]:.1f} img/s" for name in medians]
        described += [f"{name} fails ({reason})" for name, reason in result["errors"].items()]
        rows.append(
            harness.row(
                "export_precision",
                f"ISA {isa or 'default (uncapped)'}: product default ({default})",
                medians[default],
                "img/s",
                baseline_name=f"fastest that runs ({fastest})",
                baseline_value=medians[fastest],
                ratio=harness.median(paired),
                goal=0.95,
                samples=rates[default],
                note=f"{'; '.join(described)}; auto rewrite: {result['auto']} ({result['auto_reason']}); "
                f"{len(files)} JPEGs per call, {repeats} interleaved rounds",
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(harness.child_main(sys.modules[__name__]))
