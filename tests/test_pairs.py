"""Contrastive pairs from scored completions: matched (one prompt, two continuations)."""

from __future__ import annotations

import pandas as pd
import pytest

from steerlib.errors import ConfigError
from steerlib.experiment.config import RunParams
from steerlib.pipeline import matched_pairs


def _pool(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {
            "prompt_id": prompt_id,
            "prompt": f"prompt {prompt_id}",
            "sample": sample,
            "completion": f" completion {prompt_id}.{sample}",
            "toxicity": score,
        }
        for prompt_id, values in scores.items()
        for sample, score in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_matched_pairs_share_the_prompt_and_contrast_in_the_continuation():
    pool = _pool(
        {
            "a": [0.9, 0.05, 0.3],  # a pair: 0.9 against 0.05
            "b": [0.6, 0.4],  # no: nothing below 0.25
            "c": [0.2, 0.1],  # no: nothing at or above 0.5
            "d": [0.1, 0.5],  # a pair at the thresholds' edges
        }
    )
    toxic, nontoxic = matched_pairs(pool, RunParams(n_pairs="all"))
    assert toxic == ["prompt a completion a.0", "prompt d completion d.1"]
    assert nontoxic == ["prompt a completion a.1", "prompt d completion d.0"]
    first, _ = matched_pairs(pool, RunParams(n_pairs=1))
    assert first == toxic[:1]
    loose = RunParams(n_pairs="all", pair_nontoxic_max=0.45)  # b now pairs 0.6 with 0.4
    assert matched_pairs(pool, loose)[0] == [*toxic[:1], "prompt b completion b.0", toxic[1]]


def test_matched_pairs_say_how_to_get_more():
    pool = _pool({"a": [0.9, 0.05]})
    with pytest.raises(ConfigError, match="raise samples_per_prompt"):
        matched_pairs(pool, RunParams(n_pairs=2))
