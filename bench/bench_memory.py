"""Memory: peak RSS of training and prediction on the demo set vs a 10x demo set (child processes)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import harness
from vinted_classifier.contract import RunLabels

TIMEOUT_S = 2400  # the 10x children decode-check ~35k images each
TITLE = "6. Memory: peak RSS, demo set vs 10x demo set"
NOTES = """
Each figure is the peak RSS (kernel high-water mark `VmHWM`, reported by the child at its end) of a
fresh child process that does one job on one dataset; the ratio is 10x-set peak / demo-set peak
(goal: within 10%, i.e. <= 1.10x).
*predict* is `predict.predict_test_set` (the `vinted predict` path: load the run, check every test
image, stream, write the parquet files) for every row of `test.parquet`, VGG19 160x128.
*train, uncached* is phase 1 without feature caching: `data.prepare` (labels, decode-check and hash of
every image, splits) then `model.fit` over `make_dataset` (shuffle buffer over all training file
names), VGG19 160x128, **truncated to the same number of steps on both sets** (a full uncached epoch
over the 10x set would take ~10 minutes here); the streaming pipeline's state does not grow after the
first steps, so this isolates what depends on dataset size.
*train, cached features* is `train._train_head_on_cached_features` with `head_epochs=1` (the
`cache_features=true` phase 1, default 2 augmented views) over the whole training split; it runs at
32x32 to fit the time budget — the cached feature vectors are 1024 floats per view whatever the image
size, so the growing part is the same as at 160x128 while the constant part (activations) is smaller.
The cache is `N x (1 + views) x 1028 x 4` bytes (~0.3 GB for the 10x training split) and lives in a
file (`features.py`), streamed back through a shuffle buffer of `train.feature_shuffle_buffer` rows
(8,192 by default, ~32 MiB): the demo set's 7.2k rows fit the buffer (and are kept in memory
between epochs), the 10x set's 72k rows fill it, and that bounded buffer is all that grows besides
`data.prepare`'s label tables (the *uncached* row's growth). (Before the cache moved to disk this row was 1.98x:
the features were held in memory in several copies at once.)
"""


def _children_cmd(task: str, data_dir: Path, work: Path, smoke: bool, out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_memory",
        "--task",
        task,
        "--data",
        str(data_dir),
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    return cmd + (["--smoke"] if smoke else [])


def _task_main(argv: list[str]) -> int:
    """Child side: do one job, write a small JSON with what was done."""

    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True, choices=["train_cached", "train_uncached", "predict"])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    harness.quiet_tensorflow()
    ctx = harness.Context(name="memory", smoke=args.smoke, work=args.work)
    started = time.perf_counter()
    info: dict = {"task": args.task, "data": str(args.data)}
    if args.task == "predict":
        # Each child imports only what its job uses: the peak RSS of that job is what is measured.
        from vinted_classifier.predict import predict_test_set  # noqa: PLC0415

        frame = predict_test_set(args.work / "run", data_dir=args.data, out_path=args.out.with_suffix(".parquet"))
        info["images"] = len(frame)
        info["image_size"] = list(ctx.image_size)
    else:
        # Each child imports only what its job uses: the peak RSS of that job is what is measured.
        from vinted_classifier import data, train  # noqa: PLC0415
        from vinted_classifier.model import LAST_BLOCK_PREFIXES, build_model, set_trainable  # noqa: PLC0415
        from vinted_classifier.precision import set_precision  # noqa: PLC0415

        cached = args.task == "train_cached"
        size = (32, 32) if cached else ctx.image_size
        run_name = f"{args.task}-{args.data.name}"
        cfg = harness.bench_config(
            ctx,
            args.data,
            [
                f"model.image_height={size[0]}",
                f"model.image_width={size[1]}",
                "train.head_epochs=1",
                "train.early_stopping_patience=0",
                f"run_name={run_name}",
            ],
        )
        set_precision(harness.auto_policy())
        prepared = data.prepare(cfg.data, cfg.seed)
        bundle = build_model(
            cfg.model,
            list(prepared.vocab.categories),
            list(prepared.vocab.tags),
            category_output=cfg.data.category_column,
        )
        set_trainable(bundle, "head", LAST_BLOCK_PREFIXES[cfg.model.backbone])
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        info["train_images"] = len(prepared.paths("train"))
        if cached:
            train._train_head_on_cached_features(bundle, cfg, prepared, cfg.run_dir)
        else:
            steps = ctx.pick(16, 2)
            harness.compile_for(bundle, bundle.model, cfg, cfg.train.head_learning_rate)
            ds = train._image_dataset(cfg, prepared, "train", training=True).take(steps)
            bundle.model.fit(ds, epochs=1, verbose=0, shuffle=False)
            info["steps"] = steps
        info["image_size"] = list(size)
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["own_peak_rss_mb"] = round(harness.own_peak_rss_mb(), 1)
    args.out.write_text(json.dumps(info))
    return 0


def _make_run(ctx: harness.Context, data_dir: Path) -> Path:
    """A finished-run folder (config, labels, model.keras) for predict_test_set; untrained head."""
    # Each child imports only what its job uses: the peak RSS of that job is what is measured.
    from vinted_classifier.model import build_model  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    cfg = harness.bench_config(ctx, data_dir)
    categories, tags = harness.vocabulary(cfg)
    run_dir = ctx.work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    with use_precision(harness.auto_policy()):
        bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    bundle.model.save(run_dir / "model.keras")
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size).save(
        run_dir / "labels.json"
    )
    return run_dir


def datasets(ctx: harness.Context) -> dict[str, tuple[Path, float]]:
    """{label: (folder, scale)}: demo vs 10x (full), 0.02 vs 0.2 (smoke); generated once, cached."""
    if ctx.smoke:
        small, large = (harness.demo_dir(ctx), 0.02), (ctx.cache / "demo_s0.2", 0.2)
    else:
        small, large = (harness.demo_dir(ctx), 1.0), (ctx.cache / "demo_x10", 10.0)
    return {"1x": small, "10x": large}


def run(ctx: harness.Context) -> list[dict]:
    sets = {label: harness.ensure_demo(folder, scale) for label, (folder, scale) in datasets(ctx).items()}
    scales = {label: scale for label, (_, scale) in datasets(ctx).items()}
    _make_run(ctx, sets["1x"])
    timeout = ctx.pick(900, 180)
    results: dict[tuple[str, str], dict] = {}
    for task in ("predict", "train_uncached", "train_cached"):
        for label, folder in sets.items():
            out = ctx.work / f"{task}-{label}.json"
            measured = harness.peak_rss_of(
                _children_cmd(task, folder, ctx.work, ctx.smoke, out),
                timeout=timeout,
                log_path=ctx.work / f"{task}-{label}.log",
            )
            if measured["returncode"] != 0:
                log = (ctx.work / f"{task}-{label}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"memory child {task} on {label} failed ({measured['returncode']}):\n{log}")
            measured["info"] = json.loads(out.read_text())
            # the child's own VmHWM at its end is exact; the polled value can only be lower
            measured["peak_rss_mb"] = max(measured["peak_rss_mb"], measured["info"]["own_peak_rss_mb"])
            results[(task, label)] = measured
    names = {
        "predict": "predict_test_set over test.parquet",
        "train_uncached": "train phase 1, uncached (streaming)",
        "train_cached": "train phase 1, cached features, 1 epoch",
    }
    rows = []
    for task, title in names.items():
        small, large = results[(task, "1x")], results[(task, "10x")]

        def size(r, task=task):
            info = r["info"]
            return f"{info.get('images', info.get('train_images'))} {'test' if task == 'predict' else 'train'} images"

        extra = f", {small['info']['steps']} steps each" if "steps" in small["info"] else ""
        rows.append(
            harness.row(
                "memory",
                f"{title}: {scales['10x']:g}x set",
                large["peak_rss_mb"],
                "MiB",
                baseline_name=f"scale {scales['1x']:g} set",
                baseline_value=small["peak_rss_mb"],
                goal=1.10,
                higher_is_better=False,
                note=f"{size(small)} -> {size(large)}{extra}; "
                f"image size {'x'.join(map(str, small['info']['image_size']))}; "
                f"child wall {small['seconds']:.0f} s / {large['seconds']:.0f} s",
            )
        )
    return rows


if __name__ == "__main__":
    if "--task" in sys.argv:
        sys.exit(_task_main(sys.argv[1:]))
    sys.exit(harness.child_main(sys.modules[__name__]))
