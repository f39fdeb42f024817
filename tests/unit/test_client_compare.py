"""client.served_vs_local / check_served: the served answers against the local predictions for the same images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vinted_classifier import client
from vinted_classifier.contract import DEFAULT_CATEGORY_COLUMN, TAGS_OUTPUT, RunLabels


def test_served_vs_local_tolerates_only_borderline_differences():
    labels = RunLabels(DEFAULT_CATEGORY_COLUMN, ["A", "B", "C"], ["t1", "t2"], [0.5, 0.5], (64, 48))
    detailed = pd.DataFrame(
        [
            {
                "uuid": "u1",
                "category1": 0,
                "category2": 1,
                "t1": 1,
                "t2": 0,
                "category1_probability": 0.6,
                "category2_probability": 0.3,
                "t1_probability": 0.9,
                "t2_probability": 0.497,
            }
        ]
    )

    def served(probs, flags, tags=(0.9, 0.497)):
        top2 = list(np.argsort(-np.asarray(probs), kind="stable")[:2])
        return {
            "predictions": [
                {
                    labels.category_output: probs,
                    TAGS_OUTPUT: list(tags),
                    "top2_codes": top2,
                    "top2_names": [labels.categories[i] for i in top2],
                    "tag_flags": flags,
                }
            ]
        }

    same = client.served_vs_local(served([0.6, 0.3, 0.1], [1, 0]), detailed, labels)
    assert same["match"].all() and same["max_prob_diff"].iloc[0] < 1e-9
    borderline = client.served_vs_local(served([0.6, 0.3, 0.1], [1, 1], tags=(0.9, 0.501)), detailed, labels)
    assert borderline["match"].all(), "t2 sits 0.003 from its threshold: a flip there is rounding, not a bug"
    wrong_top2 = client.served_vs_local(served([0.1, 0.3, 0.6], [1, 0]), detailed, labels)
    assert not wrong_top2["match"].any()
    wrong_flag = client.served_vs_local(served([0.6, 0.3, 0.1], [0, 0]), detailed, labels)
    assert not wrong_flag["match"].any()
    with pytest.raises(AssertionError, match="disagrees"):
        client.check_served(same, wrong_flag)
