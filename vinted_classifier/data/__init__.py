"""Vinted-layout labels: reading, schema validation, vocabularies, images, duplicates, splits.

Layout: ``data.parquet`` (labels), ``test.parquet`` (uuids to predict) and ``<uuid>.jpeg``
images in one folder. Vocabularies come from the data and the config, never from constants:
category codes are the sorted category names; tag columns are a configured list.

Modules: ``schema`` (reading and validating label files), ``images`` (locating and decoding
images), ``splits`` (duplicates, splits, balancing), ``prepared`` (all of it for training).
"""

from __future__ import annotations

from .images import ImageError, ImageReport, check_images, enforce_image_policy
from .prepared import PreparedData, downsample_effect, prepare, split_table
from .schema import SchemaError, Vocabulary, corrupted_copy_error, read_labels, read_test_ids, validate_labels
from .splits import (
    SPLITS,
    class_weights,
    downsample,
    duplicate_groups,
    duplicate_report,
    load_or_make_splits,
    make_splits,
    splits_path,
    stratified_subsample,
)

__all__ = [
    "SPLITS",
    "ImageError",
    "ImageReport",
    "PreparedData",
    "SchemaError",
    "Vocabulary",
    "check_images",
    "class_weights",
    "corrupted_copy_error",
    "downsample",
    "downsample_effect",
    "duplicate_groups",
    "duplicate_report",
    "enforce_image_policy",
    "load_or_make_splits",
    "make_splits",
    "prepare",
    "read_labels",
    "read_test_ids",
    "split_table",
    "splits_path",
    "stratified_subsample",
    "validate_labels",
]
