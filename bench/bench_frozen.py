"""Frozen backbone: a head-training epoch on cached features vs re-running the backbone each epoch."""

from __future__ import annotations

import shutil

from bench import harness

TITLE = "3. Frozen backbone: cached features vs backbone every epoch"
NOTES = """
Phase 1 (frozen backbone) two ways, on the same `N` training images at the run's policy:
*cached* is what `train.cache_features=true` does: `features.write_feature_cache` once (clean view plus
`cached_augmented_views` augmented views, streamed to a file on disk, so the cached epoch covers
`N x (1 + views)` rows — more work than the uncached epoch), then `head.fit` on
`features.feature_dataset` (records read back from the file through a shuffle buffer); its per-epoch
time is the mean over `E` epochs in one `fit` call, as in real training (30 epochs in one call).
*uncached* is `model.fit` over `make_dataset` from the JPEGs with the backbone frozen (what
`train.cache_features=false` does). Validation is left out of both. The one-time caching cost and
the number of epochs after which caching has paid for itself are reported too.
Per image *pass*, the cached epoch is faster still by the factor `1 + views`; what bounds it is
Keras's fixed per-step cost for a tiny head (the head's arithmetic is negligible), so caching only the
clean view, or a larger batch size for the cached phase, would raise the ratio further.
"""


def run(ctx: harness.Context) -> list[dict]:
    # TensorFlow loads in the benchmark's process only: run_all imports this module for its docs.
    from vinted_classifier import data, pipeline  # noqa: PLC0415
    from vinted_classifier.features import feature_dataset, write_feature_cache  # noqa: PLC0415
    from vinted_classifier.model import LAST_BLOCK_PREFIXES, build_model, set_trainable  # noqa: PLC0415
    from vinted_classifier.precision import use_precision  # noqa: PLC0415

    cfg = harness.bench_config(ctx)
    prepared = data.prepare(cfg.data, cfg.seed)
    n = ctx.pick(320, 16)
    epochs_cached = ctx.pick(5, 2)
    repeats = ctx.pick(3, 2)
    paths = prepared.paths("train")[:n]
    n = len(paths)
    codes, tags = prepared.codes("train")[:n], prepared.tags("train")[:n]
    category = cfg.data.category_column
    batch = cfg.train.batch_size
    policy = harness.auto_policy()
    views = cfg.train.cached_augmented_views if cfg.model.augment else 0

    with use_precision(policy):
        bundle = build_model(
            cfg.model, list(prepared.vocab.categories), list(prepared.vocab.tags), category_output=category
        )
        set_trainable(bundle, "head", LAST_BLOCK_PREFIXES[cfg.model.backbone])
        harness.compile_for(bundle, bundle.model, cfg, cfg.train.head_learning_rate)
        harness.compile_for(bundle, bundle.head, cfg, cfg.train.head_learning_rate)

    def labelled():
        return pipeline.make_dataset(
            paths, image_size=cfg.model.image_size, batch_size=batch, codes=codes, tags=tags, category_output=category
        )

    def cache_to(name: str, ds):
        return write_feature_cache(
            bundle, ds, ctx.work / "feature_cache" / f"{name}.f32", category_output=category, augment_views=views
        )

    shutil.rmtree(ctx.work / "feature_cache", ignore_errors=True)  # a reused cache would time nothing
    cache_to("trace", labelled().take(1))  # trace once, untimed
    caching_s, cache = harness.timed(lambda: cache_to("train", labelled()))
    repeat = cache.rows // n

    def cached():
        ds = feature_dataset(
            cache,
            batch_size=batch,
            category_output=category,
            shuffle_buffer=cfg.train.feature_shuffle_buffer,
            seed=cfg.seed,
        )
        bundle.head.fit(ds, epochs=epochs_cached, verbose=0, shuffle=False)

    def uncached():
        ds = pipeline.make_dataset(
            paths,
            image_size=cfg.model.image_size,
            batch_size=batch,
            codes=codes,
            tags=tags,
            category_output=category,
            shuffle=True,
            seed=cfg.seed,
        )
        bundle.model.fit(ds, epochs=1, verbose=0, shuffle=False)

    times = harness.interleaved({"cached": cached, "uncached": uncached}, repeats=repeats, warmup=1)
    per_epoch = {"cached": [t / epochs_cached for t in times["cached"]], "uncached": times["uncached"]}
    speedups = [u / c for u, c in zip(per_epoch["uncached"], per_epoch["cached"], strict=True)]
    cached_s, uncached_s = harness.median(per_epoch["cached"]), harness.median(per_epoch["uncached"])
    break_even = caching_s / max(uncached_s - cached_s, 1e-9)
    common = f"{cfg.model.backbone} {policy}, {n} images, batch {batch}"
    return [
        harness.row(
            "frozen",
            "head epoch, backbone re-run (uncached) / cached features",
            harness.median(speedups),
            "x speed-up",
            baseline_name="uncached epoch s ÷ cached epoch s",
            ratio=harness.median(speedups),
            goal=20.0,
            samples=speedups,
            note=f"{common}; cached epoch = {n} x {repeat} view(s) rows, mean of {epochs_cached} epochs/fit",
        ),
        harness.row(
            "frozen",
            "uncached epoch time",
            uncached_s,
            "s",
            samples=per_epoch["uncached"],
            note=f"{n / uncached_s:.1f} img/s through the frozen backbone",
        ),
        harness.row(
            "frozen",
            "cached epoch time",
            cached_s,
            "s",
            samples=per_epoch["cached"],
            note=f"{cache.rows / cached_s:,.0f} feature rows/s",
        ),
        harness.row(
            "frozen",
            "one-time feature caching",
            caching_s,
            "s",
            note=f"{n} images x {repeat} view(s) ({cache.rows} rows, dim {cache.feature_dim}); "
            f"pays for itself after {break_even:.2f} epoch(s)",
        ),
    ]


if __name__ == "__main__":
    import sys

    sys.exit(harness.child_main(sys.modules[__name__]))
