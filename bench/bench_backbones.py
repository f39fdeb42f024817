"""Model size and speed per backbone: parameters, SavedModel MB, inference img/s, held-out accuracy."""

from __future__ import annotations

import re

import numpy as np

from bench import harness
from vinted_classifier.contract import RunLabels

TITLE = "7. Backbones: size, speed and held-out accuracy"
NOTES = """
Each backbone is built by `build_model` at the run's precision policy and image size, with the
default head (dense 256, dropout 0.3). *Parameters* counts the full model; *SavedModel* is the
version folder `export.export_saved_model` writes (both signatures). *Inference* is
`model.predict` on preloaded images (batch 32), all backbones alternating round by round; the
ratio is vs VGG19 (the default). *Accuracy*: backbone features of the train/val/holdout splits are
computed once (clean views only, no augmentation — a shorter recipe than `make train`), the head
trains for a few epochs on them, tag thresholds are tuned on val (`evaluate.tune_thresholds`) and
`evaluate.evaluate_predictions` scores the held-out split; tag F1 is the macro F1 over tags.
**Only VGG19 has ImageNet weights offline here** (bundled); every other backbone is trained from
`weights=none` (random) features, so **its accuracy is not representative** of that architecture
— only its size and speed are. Non-VGG backbones use `pooling=avg` (`avg_block4_5` is VGG-only).
The SavedModel is `parameters x 4 bytes` (float32 variables whatever the policy) plus under 1 MB of
graph: `export.py` saves a `tf.Module` with `tf.saved_model.save`, which stores each variable once
(Keras's `ExportArchive` stores each twice, keras-team/keras#23553; `tests/integration/test_predict_export.py`
checks the count).
"""

BACKBONES = ("vgg19", "vgg16", "mobilenet_v2", "efficientnet_b0", "resnet50")


def run(ctx: harness.Context) -> list[dict]:
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier import data, evaluate  # noqa: PLC0415
    from vinted_classifier.export import export_saved_model  # noqa: PLC0415
    from vinted_classifier.model import LAST_BLOCK_PREFIXES, build_model, set_trainable  # noqa: PLC0415
    from vinted_classifier.pipeline import load_images  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    base_cfg = harness.bench_config(ctx)
    prepared = data.prepare(base_cfg.data, base_cfg.seed)
    categories, tags = list(prepared.vocab.categories), list(prepared.vocab.tags)
    category = base_cfg.data.category_column
    policy = harness.auto_policy()
    epochs = ctx.pick(15, 2)
    backbones = ctx.pick(BACKBONES, ("vgg19", "mobilenet_v2"))
    images = {
        split: load_images(prepared.paths(split), base_cfg.model.image_size) for split in ("train", "val", "holdout")
    }
    speed_batch = images["holdout"][: ctx.pick(96, 8)]

    bundles, facts = {}, {}
    for name in backbones:
        overrides = [f"model.backbone={name}"]
        if name != "vgg19":
            overrides += ["model.weights=none", "model.pooling=avg"]
        cfg = harness.bench_config(ctx, overrides=overrides)
        with use_precision(policy):
            bundle = build_model(cfg.model, categories, tags, category_output=category)
            set_trainable(bundle, "head", LAST_BLOCK_PREFIXES[name])
            harness.compile_for(bundle, bundle.head, cfg, cfg.train.head_learning_rate)
        params = int(sum(int(np.prod(v.shape)) for v in bundle.model.weights))
        feats = {split: bundle.feature_extractor.predict(x, batch_size=32, verbose=0) for split, x in images.items()}
        targets = {category: prepared.codes("train"), "tags": prepared.tags("train")}
        bundle.head.fit(feats["train"], targets, batch_size=cfg.train.batch_size, epochs=epochs, verbose=0)
        probs = {}
        for split in ("val", "holdout"):
            out = bundle.head.predict(feats[split], batch_size=256, verbose=0)
            probs[split] = (np.asarray(out[category], np.float32), np.asarray(out["tags"], np.float32))
        thresholds = evaluate.tune_thresholds(prepared.tags("val").astype(np.int64), probs["val"][1])
        metrics = evaluate.evaluate_predictions(
            prepared.codes("holdout"),
            probs["holdout"][0],
            prepared.tags("holdout").astype(np.int64),
            probs["holdout"][1],
            categories=categories,
            tag_names=tags,
            thresholds=np.asarray(thresholds),
        )
        labels = RunLabels(category, categories, tags, [float(t) for t in thresholds], cfg.model.image_size)
        version = export_saved_model(
            bundle.model, labels, ctx.work / "saved_model", name, version=1, model_cfg=cfg.model
        )
        saved_mb = sum(f.stat().st_size for f in version.rglob("*") if f.is_file()) / 2**20
        facts[name] = {
            "params": params,
            "saved_mb": saved_mb,
            "weights": bundle.weights_source.split(":")[0],
            "top1": metrics["top1_accuracy"],
            "top2": metrics["top2_accuracy"],
            "tag_f1": metrics["tags"]["macro_f1"] or 0.0,
            "n": metrics["n"],
            "feature_dim": int(feats["train"].shape[1]),
        }
        bundles[name] = bundle

    def infer(name: str):
        return lambda: bundles[name].model.predict(speed_batch, batch_size=32, verbose=0)

    times = harness.interleaved({name: infer(name) for name in backbones}, repeats=ctx.pick(6, 2), warmup=1)
    rows = []
    for name in backbones:
        f = facts[name]
        speed = harness.ratio_rows(
            "backbones",
            f"{name}: inference",
            "vgg19 inference",
            times,
            len(speed_batch),
            name,
            "vgg19",
            note=f"{policy}, {base_cfg.model.image_size[0]}x{base_cfg.model.image_size[1]}, batch 32",
        )
        representative = name == "vgg19" and f["weights"] != "none"
        rows += [
            speed,
            harness.row(
                "backbones", f"{name}: parameters", f["params"] / 1e6, "M", note=f"feature dim {f['feature_dim']}"
            ),
            harness.row("backbones", f"{name}: SavedModel size", f["saved_mb"], "MiB"),
            harness.row(
                "backbones",
                f"{name}: held-out top-1 / top-2 / tag F1",
                f["top1"],
                "score",
                note=f"top-1 {f['top1']:.3f}, top-2 {f['top2']:.3f}, tag macro F1 {f['tag_f1']:.3f} "
                f"(n={f['n']}, {epochs} head epochs on cached clean features); weights {f['weights']}"
                + ("" if representative else " — NOT representative (no ImageNet weights offline)"),
            ),
        ]
    return rows


def table(rows: list[dict]) -> str:
    """One line per backbone (the report's view of the rows; accuracy figures come from the notes)."""

    by: dict[str, dict] = {}
    for r in rows:
        backbone, _, what = r["name"].partition(": ")
        by.setdefault(backbone, {})[what] = r
    lines = [
        "| backbone | parameters | SavedModel | inference | vs VGG19 | held-out top-1 | top-2 | tag macro F1 "
        "| weights |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    detail = ""
    for backbone, r in by.items():
        acc = r["held-out top-1 / top-2 / tag F1"]
        scores = re.search(r"top-1 ([\d.]+), top-2 ([\d.]+), tag macro F1 ([\d.]+)", acc["note"])
        weights = re.search(r"weights (\S+)", acc["note"])
        detail = re.search(r"\((n=[^)]*)\)", acc["note"])
        mark = " \\*" if "NOT representative" in acc["note"] else ""
        top1, top2, f1 = scores.groups() if scores else ("?", "?", "?")
        speed = r["inference"]
        lines.append(
            f"| {backbone} | {r['parameters']['value']:.1f} M | {r['SavedModel size']['value']:.0f} MiB "
            f"| {speed['value']:.0f} img/s | {speed['ratio']:.2f}× | {top1}{mark} | {top2}{mark} | {f1}{mark} "
            f"| {weights.group(1).rstrip(';') if weights else ''} |"
        )
        detail = detail.group(1) if detail else ""
    speed_note = next(iter(by.values()))["inference"]["note"] if by else ""
    lines += [
        "",
        f"Inference: `model.predict` on preloaded images, {speed_note}; *vs VGG19* is the median of "
        "per-round ratios (all backbones interleaved round by round), so it can differ from the ratio of the "
        f"img/s medians. Accuracy: held-out split ({detail}). "
        "**\\* Not representative: trained from `weights=none` (random) features — there are no offline "
        "ImageNet weights for this backbone here; only its size and speed are meaningful.**",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
