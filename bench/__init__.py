"""Benchmarks for vinted_classifier: ``python -m bench.run_all [--smoke] [--only NAME ...]``.

Every measurement is a ratio of two variants timed side by side in one process
(interleaved repeats, medians), with the absolute figures beside it; see
``docs/benchmarks.md``. ``bench/harness.py`` holds the shared pieces.
"""
