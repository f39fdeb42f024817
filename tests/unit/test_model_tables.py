"""The backbone tables in model.py cover exactly the backbones the config accepts (so build_model need not check)."""

from __future__ import annotations

import typing

import pytest

from vinted_classifier.config import Backbone, ModelConfig, Pooling
from vinted_classifier.model import BACKBONES, LAST_BLOCK_PREFIXES, PREPROCESS_MODES


def test_every_configurable_backbone_has_a_constructor_and_a_last_block():
    names = set(typing.get_args(Backbone))
    assert set(BACKBONES) == names
    assert set(LAST_BLOCK_PREFIXES) == names
    assert {mode for _, mode in BACKBONES.values()} <= set(PREPROCESS_MODES)


def test_the_config_refuses_what_build_model_no_longer_checks():
    assert set(typing.get_args(Pooling)) == {"avg", "flatten", "avg_block4_5"}
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg11")
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="max")
