"""``vinted release``: evaluate a staged candidate, validate it in a server, push it only if all pass.

The TFX flow in one command: Evaluator (``checks`` on the frozen held-out split, against the
served version on the same rows), InfraValidator (``infra``), Pusher (``staging.push``), with the
decision recorded either way in ``<saved_model_dir>/releases/<model>/`` and, for a pushed version,
in its ``assets.extra/release.json`` and ``provenance.json``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from hostinfo import configure_rewrite
from tf_serving_compat.images import DEFAULT_DECODE_PIXELS, image_size

from ..config import load_config
from ..contract import ASSETS_DIR, ASSETS_EXTRA_DIR, LABELS_FILE, TAGS_OUTPUT, RunLabels, labels_path
from ..experiments.tracking import find_training_run, log_export
from ..export import existing_versions, read_export_info
from . import checks as C
from . import holdout as H
from .infra import validate_in_server
from .provenance import provenance
from .report import write_report
from .rollout import STATE_DIR, load_state, record_push
from .staging import latest_candidate, push, served_root

log = logging.getLogger(__name__)
GOLDEN_HOLDOUT_IMAGES = 8


def candidate_run_config(candidate: Path, cfg):
    """The config the candidate was trained with (its held-out split), else the caller's."""
    path = candidate / ASSETS_EXTRA_DIR / "config.yaml"
    return load_config(path) if path.is_file() else cfg


def served_version(cfg) -> Path | None:
    """What users get now: the ``stable`` label if the gate labelled one, else the newest version."""
    root = served_root(cfg)
    stable = load_state(Path(cfg.export.saved_model_dir), cfg.export.model_name)["labels"].get("stable")
    if stable is not None and (root / str(stable)).is_dir():
        return root / str(stable)
    versions = existing_versions(root)
    return root / str(versions[-1]) if versions else None


def summary_metrics(holdout: H.Holdout, pred: C.Predictions) -> dict:
    f1 = C.tag_f1(holdout.y_tags, pred.flags)
    return {
        "top1": float(C.top_k_hits(holdout.y_cat, pred.p_cat, 1).mean()),
        "top2": float(C.top_k_hits(holdout.y_cat, pred.p_cat, 2).mean()),
        "tag_f1": {name: float(v) for name, v in zip(holdout.tag_names, f1, strict=True)},
        "rows": len(holdout.y_cat),
    }


def _load(path: Path, what: str, found: list[C.Check]) -> H.SavedModelRunner | None:
    try:
        return H.SavedModelRunner(path)
    except Exception as error:  # noqa: BLE001 - any load failure is a verdict, not a crash
        found.append(
            C.Check(
                f"{what} loads in process",
                None,
                None,
                False if what == "candidate" else None,
                f"{path}: {type(error).__name__}: {str(error)[:500]}",
            )
        )
        return None


def evaluate(
    cfg, run_cfg, candidate: Path, served: Path | None, progress, tolerance: float
) -> tuple[list[C.Check], dict, dict]:
    """(checks, metrics, golden) — golden: the images and in-process outputs infra validation compares with.

    ``tolerance``: how far category probabilities may sum from 1 (the host's rewrite rounds them).
    Quality and cost checks run only on a candidate whose outputs are finite.
    """
    found: list[C.Check] = []
    labels = RunLabels.load(labels_path(candidate))
    progress(f"held-out rows of {run_cfg.data.data_dir} (seed {run_cfg.seed})")
    holdout = H.load_holdout(run_cfg, labels)
    images = holdout.images()
    runner = _load(candidate, "candidate", found)
    if runner is None:
        return found, {}, {}
    cand, golden = _numerics_checks(runner, labels, images, tolerance, found, progress)
    if any(c.passed is False for c in found):
        found.append(C.Check("quality checks", None, None, None, "not run: the candidate's outputs are not finite"))
        return found, {}, golden
    metrics = {"candidate": summary_metrics(holdout, cand)}
    found += _absolute_checks(cfg.release, run_cfg, holdout, cand, progress)
    served_runner = _load(served, "served", found) if served is not None else None
    served_pred = _served_checks(
        cfg.release, run_cfg, labels, holdout, images, cand, served, served_runner, found, metrics, progress
    )
    masks = H.slice_masks(holdout, run_cfg.data.category_column, list(run_cfg.data.extra_columns))
    found += C.slice_checks(holdout.y_cat, cand, served_pred, masks, cfg.release, seed=run_cfg.seed)
    found += _cost_checks(cfg.release, runner, candidate, served, served_runner, images[:GOLDEN_HOLDOUT_IMAGES])
    return found, metrics, golden


def _numerics_checks(
    runner: H.SavedModelRunner, labels: RunLabels, images: list[bytes], tolerance: float, found: list[C.Check], progress
) -> tuple[C.Predictions, dict]:
    """Finite, well-formed outputs on the held-out rows and on plain images; returns (predictions, golden)."""
    plain = H.plain_images(labels.image_size)
    progress(f"candidate on {len(images)} held-out rows and {len(plain)} plain images")
    cand = runner.predictions(images)
    found.append(C.numerics_check("held-out", cand.p_cat, cand.p_tags, tolerance))
    plain_out = runner.outputs(list(plain.values()))
    for index, name in enumerate(plain):
        found.append(
            C.numerics_check(
                name,
                plain_out[labels.category_output][index : index + 1],
                plain_out[TAGS_OUTPUT][index : index + 1],
                tolerance,
            )
        )
    candidates = images[:GOLDEN_HOLDOUT_IMAGES] + list(plain.values())
    golden_images = [image for image in candidates if _decoded_as_sent(image)]
    golden = {
        "images": golden_images,
        "offline": runner.outputs(golden_images),
        "category_output": labels.category_output,
    }
    return cand, golden


def _decoded_as_sent(image: bytes) -> bool:
    """Whether every server decodes ``image`` as the SavedModel does in process.

    Ours hands images above ``DEFAULT_DECODE_PIXELS`` to the graph pre-shrunk (bounded memory,
    docs/serving.md), which moves answers by resampling, not by a serving fault: the 1200x900 noise
    image moved the tiny test model's probabilities by 2.1e-3 on a float32 host. Such images are
    checked for finite outputs in process, and not compared.
    """
    size = image_size(image)
    return size is None or size[0] * size[1] <= DEFAULT_DECODE_PIXELS


def _absolute_checks(release, run_cfg, holdout: H.Holdout, cand: C.Predictions, progress) -> list[C.Check]:
    """The candidate alone: quality floors, and margins over a class prior and a linear probe."""
    found = C.floor_checks(holdout.y_cat, holdout.y_tags, cand, holdout.tag_names, release)
    progress("baselines: class prior and a linear probe on colour features")
    found += C.baseline_checks(
        holdout.y_cat,
        cand,
        H.class_prior_top1(holdout.train_codes, holdout.y_cat),
        H.linear_probe_top1(holdout, run_cfg.seed),
        release,
    )
    return found


def _served_checks(
    release,
    run_cfg,
    labels: RunLabels,
    holdout: H.Holdout,
    images: list[bytes],
    cand: C.Predictions,
    served: Path | None,
    served_runner: H.SavedModelRunner | None,
    found: list[C.Check],
    metrics: dict,
    progress,
) -> C.Predictions | None:
    """Non-regression against the served version on the same rows, when it loads and has the same vocabulary;
    returns its predictions (None when not comparable) and adds its metrics to ``metrics``."""
    if (
        served is None
        or served_runner is None
        or served_runner.labels.categories != labels.categories
        or served_runner.labels.tags != labels.tags
    ):
        why = "nothing served yet" if served is None else f"served version {served} not comparable (load or vocabulary)"
        found.append(C.Check("vs served", None, -release.regression_margin, None, why))
        return None
    progress(f"served version {served.name} on the same rows")
    served_pred = served_runner.predictions(images)
    metrics["served"] = {"version": int(served.name), **summary_metrics(holdout, served_pred)}
    found += C.non_regression_checks(holdout.y_cat, holdout.y_tags, cand, served_pred, release, seed=run_cfg.seed)
    return served_pred


def _cost_checks(
    release,
    runner: H.SavedModelRunner,
    candidate: Path,
    served: Path | None,
    served_runner: H.SavedModelRunner | None,
    timing_images: list[bytes],
) -> list[C.Check]:
    """Size on disk and in-process latency, each against the served version's when it loads."""
    served_bytes = float(H.version_bytes(served)) if served is not None and served_runner else None
    found = [
        C.ratio_check("cost size", float(H.version_bytes(candidate)), served_bytes, release.max_size_ratio, "bytes")
    ]
    if served_runner is not None:
        cand_s, served_s = H.compare_latency(runner, served_runner, timing_images)
    else:
        cand_s, served_s = runner.seconds_per_image(timing_images), None
    found.append(
        C.ratio_check(
            "cost latency",
            cand_s * 1e3,
            served_s * 1e3 if served_s else None,
            release.max_latency_ratio,
            "ms per image (in process, same host)",
        )
    )
    return found


def already_released(cfg, candidate: Path) -> int | None:
    """The served version a staged candidate was pushed as before (a rerun must not push it twice)."""
    state = load_state(Path(cfg.export.saved_model_dir), cfg.export.model_name)
    pushed = [e["version"] for e in state["released"] if e.get("candidate") == str(candidate.resolve())]
    return pushed[-1] if pushed else None


def infra_tolerance(cfg, decision) -> float:
    return cfg.release.infra_atol if decision.mode == "off" else cfg.release.infra_atol_low_precision


def next_served_version(cfg) -> int:
    """One above every version the served path has or the gate ever released (numbers are never reused)."""
    state = load_state(Path(cfg.export.saved_model_dir), cfg.export.model_name)
    used = existing_versions(served_root(cfg)) + [e["version"] for e in state["released"]]
    return max(used, default=0) + 1


def run_release(
    cfg, candidate: str | Path | None = None, *, force: bool = False, canary: bool = False, progress=print
) -> dict:
    """Check ``candidate`` (default: the newest staged one); push it if every check passes or ``force``."""
    candidate = Path(candidate) if candidate is not None else latest_candidate(cfg)
    if not labels_path(candidate).is_file():
        raise FileNotFoundError(f"{candidate} is not a staged export (no {ASSETS_DIR}/{LABELS_FILE})")
    run_cfg = candidate_run_config(candidate, cfg)
    decision = configure_rewrite(cfg.inference.mixed_precision_rewrite)  # as the server will (same host)
    served = served_version(cfg)
    found, metrics = check_candidate(cfg, run_cfg, candidate, served, infra_tolerance(cfg, decision), progress)
    blocked_by = [c.name for c in found if c.passed is False]
    stamp = _dt.datetime.now(_dt.UTC)
    report = {
        "model_name": cfg.export.model_name,
        "candidate": str(candidate),
        "compared_with": str(served) if served else None,
        "utc": stamp.isoformat(timespec="seconds"),
        "host_rewrite": decision.describe(),
        "release_config": cfg.release.model_dump(mode="json"),
        "metrics": metrics,
        "checks": [c.to_dict() for c in found],
        "blocked_by": blocked_by,
        "forced": bool(force and blocked_by),
        "decision": "blocked",
        "pushed_version": None,
        "label": None,
    }
    records = Path(cfg.export.saved_model_dir) / STATE_DIR / cfg.export.model_name
    record = records / f"{stamp.strftime('%Y%m%dT%H%M%S%fZ')}-candidate-{candidate.name}.json"
    report["record"] = str(record)
    if blocked_by and not force:
        write_report(record, report)
        return report
    label = "canary" if canary and served is not None else "stable"
    return _push(cfg, run_cfg, candidate, report, canary=canary, label=label, progress=progress)


def check_candidate(
    cfg, run_cfg, candidate: Path, served: Path | None, tolerance: float, progress
) -> tuple[list[C.Check], dict]:
    """Every check of the gate, in report order: not released before, evaluation, infra validation."""
    earlier = already_released(cfg, candidate)
    found, metrics, golden = evaluate(cfg, run_cfg, candidate, served, progress, tolerance)
    if cfg.release.infra_validation and golden:
        progress(f"infra validation: serving the candidate in a subprocess ({len(golden['images'])} golden images)")
        found += validate_in_server(
            candidate,
            cfg.export.model_name,
            golden["images"],
            golden["offline"],
            golden["category_output"],
            atol=tolerance,
            timeout=cfg.release.infra_timeout_seconds,
            rewrite=cfg.inference.mixed_precision_rewrite,
        )
    elif not cfg.release.infra_validation:
        found.append(C.Check("infra validation", None, None, None, "off (release.infra_validation=false)"))
    found.insert(
        0,
        C.Check(
            "candidate not released before",
            earlier,
            None,
            earlier is None,
            f"already pushed as version {earlier}" if earlier else str(candidate),
        ),
    )
    return found, metrics


def _push(cfg, run_cfg, candidate: Path, report: dict, *, canary: bool, label: str, progress) -> dict:
    """Push a passed (or forced) candidate as the next served version, label it, record it (files, MLflow)."""
    version = next_served_version(cfg)
    record = report["record"]
    report.update(decision="forced" if report["blocked_by"] else "pushed", pushed_version=version, label=label)
    pushed = push(
        candidate,
        served_root(cfg),
        version,
        {"release.json": report, "provenance.json": provenance(run_cfg, candidate, report["metrics"])},
    )
    adopted = existing_versions(served_root(cfg))
    state = record_push(
        Path(cfg.export.saved_model_dir),
        cfg.export.model_name,
        version,
        canary=canary,
        forced=report["forced"],
        report_file=record,
        candidate=str(candidate.resolve()),
        adopted=[v for v in adopted if v != version],
    )
    report["labels"] = state["labels"]
    report["mlflow"] = register(cfg, pushed, report)
    write_report(Path(record), report)
    progress(f"pushed {pushed}")
    return report


def register(cfg, pushed: Path, report: dict) -> dict | None:
    """Record the release on its MLflow training run; register the version when a registry name is set.

    The run gets ``release/v<N>/{release,provenance}.json`` and a ``release.v<N>`` tag (the decision);
    with ``tracking.registered_model_name`` the SavedModel is logged and registered (``log_export``) and
    the model version tagged with the decision, label and forced flag. A tracking outage is reported in
    the result, never undoes the push.
    """
    if not cfg.tracking.enabled:
        return None
    run_dir = read_export_info(pushed).get("run_dir")
    try:
        run_id = find_training_run(cfg, Path(run_dir)) if run_dir else None
        if run_id is None or not run_dir:
            return {"error": f"no MLflow run for {run_dir}: the release is recorded in files only"}
        # mlflow only when a release is recorded there: its import takes seconds.
        import mlflow  # noqa: PLC0415

        client = mlflow.MlflowClient()
        version = report["pushed_version"]
        for name in ("release.json", "provenance.json"):
            client.log_artifact(run_id, str(pushed / ASSETS_EXTRA_DIR / name), f"release/v{version}")
        client.set_tag(run_id, f"release.v{version}", report["decision"])
        out = {"run_id": run_id, "artifact_path": f"release/v{version}"}
        if cfg.tracking.registered_model_name:
            tracked = log_export(cfg, Path(run_dir), pushed) or {}
            if registered := tracked.get("registered"):
                for key in ("decision", "label", "pushed_version", "forced"):
                    client.set_model_version_tag(
                        registered["name"], registered["version"], f"release_{key}", str(report[key])
                    )
                out["registered"] = registered
        return out
    except Exception as error:  # noqa: BLE001 - the push happened; a tracking outage is reported, not fatal
        log.warning("MLflow record of %s failed: %s", pushed, error)
        return {"error": str(error)[:300]}
