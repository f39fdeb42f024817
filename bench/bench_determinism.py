"""What `train.deterministic: true` costs: training steps with TensorFlow op determinism on vs off."""

from __future__ import annotations

import numpy as np

from bench import harness

TITLE = "Op determinism: training step throughput, deterministic vs default kernels"
NOTES = """
`train.deterministic: true` calls `tf.config.experimental.enable_op_determinism()` (through
`utils.set_seed`). The flag is process-wide, so the two variants are two copies of the same model
(VGG19 fine-tune set-up: block5 + heads trainable, the run's precision policy), each warmed up and
then always called with the flag set its way; the calls alternate (A B, B A, ...). One timed call
is `steps` consecutive `train_on_batch` calls on one in-memory batch. A *head* row does the same for
the phase-1 head on cached-feature vectors. On a CPU most kernels are already deterministic for a
fixed thread count, so the cost is small here; on a GPU it is larger (deterministic reductions and
cuDNN algorithms).
"""


def run(ctx: harness.Context) -> list[dict]:
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from tensorflow.python.framework import config as tf_config  # noqa: PLC0415

    from vinted_classifier.model import LAST_BLOCK_PREFIXES, build_model, feature_dim, set_trainable  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    policy = "float32" if ctx.smoke else harness.auto_policy()
    batch, steps, repeats = ctx.pick(16, 4), ctx.pick(2, 1), ctx.pick(4, 2)
    height, width = ctx.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
    y = {
        cfg.data.category_column: rng.integers(0, len(categories), batch).astype(np.int64),
        "tags": rng.integers(0, 2, (batch, len(tags))).astype(np.float32),
    }
    variants = {"deterministic": True, "default": False}
    bundles = {}
    with use_precision(policy):
        for name in variants:
            bundles[name] = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)
            set_trainable(bundles[name], "finetune", LAST_BLOCK_PREFIXES[cfg.model.backbone])
            harness.compile_for(bundles[name], bundles[name].model, cfg, 1e-5)
    features = rng.normal(size=(256, feature_dim(bundles["default"]))).astype(np.float32)
    head_y = {
        cfg.data.category_column: rng.integers(0, len(categories), 256).astype(np.int64),
        "tags": rng.integers(0, 2, (256, len(tags))).astype(np.float32),
    }
    for name in variants:
        harness.compile_for(bundles[name], bundles[name].head, cfg, 1e-3)

    def call(name: str, part: str):
        def go():
            (tf_config.enable_op_determinism if variants[name] else tf_config.disable_op_determinism)()
            if part == "finetune":
                return [bundles[name].model.train_on_batch(x, y) for _ in range(steps)]
            return [bundles[name].head.train_on_batch(features, head_y) for _ in range(steps * 8)]

        return go

    rows = []
    try:
        with use_precision(policy):
            for part, items, label in (
                ("finetune", batch * steps, "fine-tune step (block5 + heads)"),
                ("head", 256 * steps * 8, "head step on cached features"),
            ):
                times = harness.interleaved({n: call(n, part) for n in variants}, repeats=repeats, warmup=1)
                ms = {n: harness.median(times[n]) * 1000 for n in variants}
                rows.append(
                    harness.ratio_rows(
                        "determinism",
                        f"{label}: deterministic",
                        "default kernels",
                        times,
                        items,
                        "deterministic",
                        "default",
                        unit="rows/s",
                        note=f"{cfg.model.backbone} {height}x{width}, {policy}; {ms['deterministic']:.0f} ms vs "
                        f"{ms['default']:.0f} ms per call; {repeats} interleaved rounds",
                    )
                )
    finally:
        tf_config.disable_op_determinism()
    return rows


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
