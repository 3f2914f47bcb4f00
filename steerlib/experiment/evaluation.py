"""Step 06's evaluation table and the operating point chosen in it, the same for every variant.

:func:`evaluation_table` joins the baseline and sweep rows of the evaluation subsets, each prompt
in its selection or confirmation half; :func:`operating_point_for` summarizes it, adds the
admissibility checks and applies the operating-point rule under :func:`analysis_rule`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerlib.errors import SteerlibError
from steerlib.evaluate.gates import RELATIVE_PARAMETER, budget_parameters
from steerlib.experiment.steps import EVAL_SUBSETS, eval_prompts

__all__ = ["analysis_rule", "evaluation_table", "operating_point_for", "split_counts"]


def analysis_rule(p: Any) -> dict[str, Any]:
    """The operating-point rule's parameters of a run, every gate's budget among them.

    Args:
        p: The run's parameters (:class:`steerlib.experiment.config.RunParams`).
    """
    return {
        RELATIVE_PARAMETER: p.max_perplexity_increase,
        "fluency_measure": p.fluency_measure,
        "min_distinct_ratio": p.min_distinct_ratio,
        "max_floor_share_increase": p.max_floor_share_increase,
        **{name: getattr(p, name) for name in budget_parameters() if name != RELATIVE_PARAMETER},
    }


def split_counts(evaluation: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Number of prompts of each subset in each half."""
    counts = evaluation.drop_duplicates(["subset", "prompt_id"]).groupby(["subset", "split"])
    return {
        str(subset): {str(half): int(n) for (_, half), n in group.items()}
        for subset, group in counts.size().groupby(level=0)
    }


def operating_point_for(
    p: Any,
    evaluation: pd.DataFrame,
    kl: pd.DataFrame,
    floor: float | None,
    rule: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The summary with its admissibility checks, and the point the rule chooses in it.

    The same for plain CAA and every other variant; a rule that finds nothing gives
    ``{"error": ...}`` instead of a point.
    """
    from steerlib.evaluate import metrics, operating_point

    summary = metrics.summarize(
        evaluation,
        threshold=p.toxicity_threshold,
        n_resamples=p.n_resamples,
        seed=p.seed,
        kl=kl.drop(columns=["n_tokens"], errors="ignore"),
        floor=floor,
    )
    summary = operating_point.admissibility(summary, **rule)
    try:
        return summary, operating_point.recommend_operating_point(summary, **rule)
    except SteerlibError as exc:
        return summary, {"error": str(exc)}


def evaluation_table(
    prompts: pd.DataFrame, baseline: pd.DataFrame, sweep: pd.DataFrame, seed: int
) -> pd.DataFrame:
    """Baseline and sweep rows of the evaluation subsets, each with its half (``split``)."""
    from steerlib.evaluate import operating_point

    halves = eval_prompts(prompts)[["subset", "prompt_id"]]
    halves = halves.assign(split=operating_point.assign_split(halves, seed))
    evaluation = pd.concat(
        [baseline[baseline["subset"].isin(EVAL_SUBSETS)], sweep], ignore_index=True
    )
    return evaluation.drop(columns="split", errors="ignore").merge(
        halves, on=["subset", "prompt_id"], how="left"
    )
