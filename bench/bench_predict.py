"""Batch prediction of test.parquet: predict_ids (from JPEG files) vs the raw model on preloaded tensors."""

from __future__ import annotations

from bench import harness
from vinted_classifier.contract import RunLabels

TITLE = "4. Batch prediction: predict_ids from files vs raw model on preloaded tensors"
NOTES = """
`predict.predict_ids` is the whole path `vinted predict` takes for every uuid of `test.parquet`:
locate + fully decode-check every image (`data.check_images`), stream them with `make_dataset`, and
`model.predict`. The baseline is `model.predict` on the same images already decoded and resized into
one in-memory array (no file reading, no checks). Same model object (VGG19 at the run's policy, head
weights untrained — irrelevant to speed), same batch size, alternating call by call.
"""


def run(ctx: harness.Context) -> list[dict]:
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier import data, pipeline  # noqa: PLC0415
    from vinted_classifier.model import build_model  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415
    from vinted_classifier.predict import predict_ids  # noqa: PLC0415

    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    ids = data.read_test_ids(cfg.data)[cfg.data.id_column].tolist()
    batch = cfg.train.batch_size
    repeats = ctx.pick(5, 2)
    policy = harness.auto_policy()
    with use_precision(policy):
        bundle = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
    model = bundle.model
    labels = RunLabels(cfg.data.category_column, categories, tags, [0.5] * len(tags), cfg.model.image_size)
    paths = [str(cfg.data.images / f"{uuid}.jpeg") for uuid in ids]
    images = pipeline.load_images(paths, cfg.model.image_size)

    def files():
        kept, p_cat, _, skipped = predict_ids(model, labels, ids, cfg.data, batch_size=batch)
        assert len(kept) == len(ids) and not skipped and len(p_cat) == len(ids)

    def memory():
        model.predict(images, batch_size=batch, verbose=0)

    times = harness.interleaved({"files": files, "memory": memory}, repeats=repeats, warmup=1)
    return [
        harness.ratio_rows(
            "predict",
            "predict_ids over test.parquet (JPEG files)",
            "model.predict on preloaded array",
            times,
            len(ids),
            "files",
            "memory",
            goal=0.9,
            note=f"{len(ids)} images, {cfg.model.backbone} {policy} "
            f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}, "
            f"batch {batch}, {repeats} rounds",
        )
    ]


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
