"""Training step throughput: mixed_bfloat16 vs float32 (VGG19, fine-tune and head-only phases)."""

from __future__ import annotations

import numpy as np

from bench import harness

TITLE = "1. Training step throughput: mixed_bfloat16 vs float32"
NOTES = """
Two copies of the same model (VGG19, bundled ImageNet weights, `avg_block4_5` pooling, augmenter on),
one built under each Keras policy, each compiled with the project's `compile_model`. One timed call
is `steps` consecutive `train_on_batch` calls on the same in-memory batch (no input pipeline in the
loop); the two policies alternate call by call. *fine-tune* = `set_trainable(bundle, "finetune",
["block5_"])` (block5 + heads train, the whole forward pass runs); *head-only* = backbone frozen but
still run every step (the uncached phase 1). bf16 pays off through oneDNN's AVX512_BF16/AMX kernels;
variables stay float32 (mixed policy), outputs are float32.
"""


def run(ctx: harness.Context) -> list[dict]:
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier.model import LAST_BLOCK_PREFIXES, build_model, set_trainable  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    cfg = harness.bench_config(ctx)
    categories, tags = harness.vocabulary(cfg)
    batch = ctx.pick(16, 4)
    steps = ctx.pick(2, 1)
    repeats = ctx.pick(4, 2)
    height, width = ctx.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
    y = {
        cfg.data.category_column: rng.integers(0, len(categories), batch).astype(np.int64),
        "tags": rng.integers(0, 2, (batch, len(tags))).astype(np.float32),
    }

    policies = ("mixed_bfloat16", "float32")
    bundles = {}
    for policy in policies:
        with use_precision(policy):
            bundles[policy] = build_model(cfg.model, categories, tags, category_output=cfg.data.category_column)

    rows = []
    for phase in ("finetune", "head"):
        for policy in policies:
            with use_precision(policy):
                set_trainable(bundles[policy], phase, LAST_BLOCK_PREFIXES["vgg19"])
                harness.compile_for(bundles[policy], bundles[policy].model, cfg, 1e-5)

        def step(policy: str):
            model = bundles[policy].model
            return lambda: [model.train_on_batch(x, y) for _ in range(steps)]

        times = harness.interleaved({p: step(p) for p in policies}, repeats=repeats, warmup=1)
        label = "fine-tune (block5 trainable)" if phase == "finetune" else "head-only (backbone frozen, run each step)"
        ms = {p: harness.median(times[p]) / steps * 1000 for p in policies}
        rows.append(
            harness.ratio_rows(
                "precision",
                f"{label}: mixed_bfloat16",
                "float32",
                times,
                batch * steps,
                "mixed_bfloat16",
                "float32",
                unit="img/s",
                goal=1.8,
                note=f"VGG19 {height}x{width}, batch {batch}; step {ms['mixed_bfloat16']:.0f} ms vs "
                f"{ms['float32']:.0f} ms; {repeats} interleaved rounds x {steps} steps",
            )
        )
    return rows


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
