"""``vinted`` command line: demo, train, evaluate, predict, export, serve.

Every model command takes ``--config FILE`` (YAML) and any number of
``--set section.key=value`` overrides, e.g. ``--set train.head_epochs=3``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import PROJECT_ROOT, load_config

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None,
                        help="YAML run config (default: configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.head_epochs=3 (repeatable)")


def _cfg(args):
    return load_config(args.config, args.overrides)


def cmd_demo(args) -> int:
    from .demo import generate_demo_dataset

    out = Path(args.out)
    if (out / "data.parquet").is_file() and not args.force:
        print(f"demo data already present in {out} (use --force to regenerate)")
        return 0
    summary = generate_demo_dataset(out, scale=args.scale, seed=args.seed, force=args.force)
    print(f"demo dataset written to {out}: {summary}")
    return 0


def cmd_train(args) -> int:
    from .evaluate import format_report
    from .train import train

    result = train(_cfg(args))
    print(format_report(result.metrics["holdout"]))
    print(f"run folder: {result.run_dir} ({result.seconds:.0f}s)")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import format_report
    from .train import evaluate_run

    print(format_report(evaluate_run(_cfg(args))["holdout"]))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_test_set

    cfg = _cfg(args)
    frame = predict_test_set(cfg.run_dir, data_dir=args.data_dir, out_path=args.out, bad_images=args.bad_images)
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    cfg = _cfg(args)
    path = export_run(cfg.run_dir, cfg.export.saved_model_dir, cfg.export.model_name)
    print(f"exported SavedModel version {path.name} to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # The server takes tensorflow_model_server's own flag names; hand them over untouched.
        import os

        from tf_serving_compat.server import main as serve_main

        os.environ.setdefault("TF_SERVING_COMPAT_MODEL_BASE_PATH",
                              str(PROJECT_ROOT / "model_training" / "saved_model" / "my_model"))

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="vinted", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write the synthetic demo dataset")
    demo.add_argument("out", nargs="?", default=str(PROJECT_ROOT / "data" / "demo"))
    demo.add_argument("--scale", type=float, default=1.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(func=cmd_demo)

    for name, func, text in [("train", cmd_train, "train, tune thresholds and evaluate a run"),
                             ("evaluate", cmd_evaluate, "re-evaluate a finished run on its held-out split"),
                             ("export", cmd_export, "export a run as the next SavedModel version")]:
        command = sub.add_parser(name, help=text)
        _config_args(command)
        command.set_defaults(func=func)

    predict = sub.add_parser("predict", help="write predictions.parquet for test.parquet")
    _config_args(predict)
    predict.add_argument("--data-dir", default=None, help="folder with test.parquet and images (default: the run's)")
    predict.add_argument("--out", default=str(PROJECT_ROOT / "predictions.parquet"))
    predict.add_argument("--bad-images", choices=["fail", "skip"], default=None)
    predict.set_defaults(func=cmd_predict)
    sub.add_parser("serve", help="TF-Serving-compatible REST server (flags: see `vinted serve --help`)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
