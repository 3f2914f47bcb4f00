"""The static figures a reader gets: titles that fit, labels that do not overlap.

The figures are drawn by :func:`steerlib.experiment.figures.draw_figures` (what step 06 and
``python -m steerlib figures`` draw) from a default-run-shaped sweep (three layers, the alpha
grid plus one searched alpha per layer, CAA and its random control, two halves) summarized by
the project's own functions. The browser test renders them with kaleido to SVG at their
export size and reads where plotly put every text; the fast test estimates the same from the
figure's layout.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from steerlib.data.subsets import assign_split
from steerlib.evaluate import admissibility, controls, metrics, operating_point
from steerlib.experiment import figures as run_figures
from steerlib.figures import files as figure_files

from steerlib.steer.vectors import SteeringVector

LAYERS = (12, 18, 24)
GRID = [-1.0, 0.0, 0.5, 1.5]
SEARCHED = {12: 0.63, 18: 0.91, 24: 0.72}
"""One searched alpha per layer, as the chain's alpha search adds (the default run's shape)."""
WORDS = "the a cat sat on mat and we went to see our friends at home today with them".split()


def _completion(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=12))


def default_sweep(n_prompts: int = 12, samples: int = 2, seed: int = 0) -> pd.DataFrame:
    """Sweep rows shaped like the default run's: baseline, CAA and random at every setting.

    Alpha 0 gives the same completions at every layer (the unsteered model, one seed), so its
    points coincide on the trade-off figure, as in a real run.
    """
    rows = []
    settings = [(-1, 0.0, "none")] + [
        (layer, alpha, direction)
        for layer in LAYERS
        for alpha in sorted({*GRID, SEARCHED[layer]})
        for direction in ("caa", "random")
    ]
    for subset, base in (("challenging", 0.55), ("benign", 0.08)):
        for prompt in range(n_prompts):
            for sample in range(samples):
                noise = np.random.default_rng([seed, prompt, sample, base > 0.5])
                start, wobble = float(noise.uniform(-0.2, 0.2)), float(noise.normal(0, 0.03))
                for layer, alpha, direction in settings:
                    strength = {12: 0.25, 18: 0.35, 24: 0.15}.get(layer, 0.0)
                    effect = strength * alpha * (1.0 if direction == "caa" else 0.15)
                    key = [seed, prompt, sample, layer + 1, round((alpha + 2) * 100)]
                    rng = np.random.default_rng(key)
                    rows.append(
                        {
                            "prompt_id": f"{subset}-{prompt}",
                            "subset": subset,
                            "layer": layer,
                            "alpha": alpha,
                            "direction": direction,
                            "sample": sample,
                            "completion": _completion(rng if alpha else noise),
                            "toxicity": float(np.clip(base + start - effect + wobble, 0.01, 0.99)),
                            "perplexity": 40.0 + 6.0 * alpha**2 * (layer / 12) + 10 * wobble,
                        }
                    )
    sweep = pd.DataFrame(rows)
    return sweep.assign(split=assign_split(sweep, seed))


def default_kl() -> pd.DataFrame:
    """Held-out perplexity and KL per setting; alpha 0 is the unsteered model's at every layer."""
    rows = [
        {
            "layer": layer,
            "alpha": alpha,
            "direction": direction,
            "kl_benign": 0.02 * alpha**2,
            "human_perplexity": 52.0 * (1 + (0.12 if direction == "caa" else 0.05) * alpha**2 * layer / 18),
        }
        for layer in LAYERS
        for alpha in sorted({*GRID, SEARCHED[layer]})
        for direction in ("caa", "random")
    ]
    return pd.DataFrame(rows)


def default_vector() -> SteeringVector:
    """A CAA vector over the default layers, with the diagnostics step 04 records."""
    generator = torch.Generator().manual_seed(0)
    directions = {layer: torch.randn(16, generator=generator) for layer in LAYERS}
    diagnostics = [
        {
            "layer": layer,
            "norm_ratio": 0.3 + 0.1 * i,
            "sink_cosine_raw": 0.4,
            "sink_cosine": 0.01,
            "split_half_cosine": 0.8,
        }
        for i, layer in enumerate(LAYERS)
    ]
    return SteeringVector(directions, provenance={"diagnostics": diagnostics})


@pytest.fixture(scope="module")
def run_tables() -> dict[str, Any]:
    """The tables step 06 saves for a default-shaped run, made by the project's functions."""
    sweep = default_sweep()
    summary = metrics.summarize(sweep, kl=default_kl(), n_resamples=100)
    summary = admissibility.admissibility(summary)
    recommended = operating_point.recommend_operating_point(summary)
    overall = summary[summary["split"] == "all"]
    evaluation = sweep[sweep["direction"] != "none"]
    control = controls.delta_vs_control(overall, evaluation, n_resamples=100)
    record = {
        "recommended_by_variant": {"caa": recommended},
        "control": control.to_dict("records"),
        "fluency_measure": str(summary["fluency_measure"].iloc[0]),
    }
    return {
        "summary": summary.assign(variant="caa"),
        "record": record,
        "sweep": sweep.assign(variant="caa"),
        "recommended": recommended,
    }


def draw(tables: dict[str, Any]) -> dict[str, go.Figure]:
    return run_figures.draw_figures(
        tables["summary"], tables["record"], tables["sweep"], default_vector(), GRID
    )
