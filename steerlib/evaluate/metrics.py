"""Toxicity, diversity and trade-off metrics over the sweep table: the front of their modules.

Each metric follows a published definition; where it departs, the docstring says so.

* **mean toxicity**, **expected maximum toxicity (EMT)** and **toxicity probability (TP)**
  (RealToxicityPrompts, Gehman et al., 2020; DExperts, Liu et al., 2021):
  :mod:`steerlib.evaluate.toxicity`;
* **distinct-n** (DExperts' ``distinctness``) and the older unique-over-all ratio:
  :mod:`steerlib.evaluate.diversity`;
* **perplexity**: the mean of the per-sample continuation perplexities, leaving out those of
  :data:`PERPLEXITY_CAP` or more (DExperts drops them too) and counting them;
* prompt-cluster **bootstrap intervals**: :mod:`steerlib.evaluate.bootstrap`;
* the **summary** table, one row per condition and half: :mod:`steerlib.evaluate.summary`;
* the **Pareto front** of a summary: :func:`pareto_front`, here.

Every function is pure: it reads a DataFrame and returns numbers or a new DataFrame. The
column names and constants they share are in :mod:`steerlib.evaluate.contract`. The comparisons
with the random control live in :mod:`steerlib.evaluate.controls` and the operating-point rule
in :mod:`steerlib.evaluate.operating_point`; their names are importable from here too.
"""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd

from steerlib.evaluate.bootstrap import (
    bootstrap_ci,
    mean_statistic,
    perplexity_interval,
    run_bootstrap,
)
from steerlib.evaluate.contract import (
    ALPHA_DECIMALS,
    FLOOR_TOLERANCE,
    GROUP_COLUMNS,
    PERPLEXITY_CAP,
    SECOND_SUFFIX,
    SPLITS,
    require_columns,
)
from steerlib.evaluate.diversity import (
    distinct_n,
    distinct_n_ngrams,
    mean_distinct_n,
    mean_distinct_n_ngrams,
)
from steerlib.evaluate.summary import summarize
from steerlib.evaluate.toxicity import (
    expected_max_toxicity,
    mean_toxicity,
    per_prompt_scores,
    toxicity_probability,
)

__all__ = [
    "ALPHA_DECIMALS",
    "FLOOR_TOLERANCE",
    "GROUP_COLUMNS",
    "PERPLEXITY_CAP",
    "SECOND_SUFFIX",
    "SPLITS",
    "bootstrap_ci",
    "distinct_n",
    "distinct_n_ngrams",
    "expected_max_toxicity",
    "mean_distinct_n",
    "mean_distinct_n_ngrams",
    "mean_statistic",
    "mean_toxicity",
    "pareto_front",
    "per_prompt_scores",
    "perplexity_interval",
    "require_columns",
    "run_bootstrap",
    "summarize",
    "toxicity_probability",
]


def pareto_front(
    summary: pd.DataFrame, x: str = "perplexity", y: str = "expected_max_toxicity"
) -> pd.DataFrame:
    """Rows not dominated on ``(x, y)``, lower being better on both.

    A row is dominated when another row is at most as high on both columns and strictly lower
    on one. Rows with a missing ``x`` or ``y`` are dropped; exact duplicates are all kept. Pass
    the rows of one subset and direction.

    Args:
        summary: Summary rows.
        x: Cost column (lower is better).
        y: Toxicity column (lower is better).

    Returns:
        The non-dominated rows sorted by ``x`` (then ``y``), original index dropped.
    """
    require_columns(summary, [x, y], what="summary")
    rows = summary[summary[x].notna() & summary[y].notna()]
    xs, ys = rows[x].to_numpy(float), rows[y].to_numpy(float)
    le = (xs[None, :] <= xs[:, None]) & (ys[None, :] <= ys[:, None])
    lt = (xs[None, :] < xs[:, None]) | (ys[None, :] < ys[:, None])
    dominated = (le & lt).any(axis=1)
    front = rows[~dominated].sort_values([x, y], kind="stable")
    return front.reset_index(drop=True)


_MOVED = {
    "delta_vs_control": "controls",
    "fluency_matched_control": "controls",
    "paired_permutation_pvalue": "controls",
    "tradeoff_rows": "controls",
    "recommend_operating_point": "operating_point",
}
"""Names that live in :mod:`steerlib.evaluate.controls` and
:mod:`steerlib.evaluate.operating_point`, still importable from here."""


def __getattr__(name: str) -> Any:
    """Resolve the moved names lazily (those modules import this one's neighbours)."""
    if name in _MOVED:
        module = importlib.import_module(f"steerlib.evaluate.{_MOVED[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
