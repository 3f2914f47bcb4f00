"""Prompt-cluster bootstrap intervals of the sweep metrics.

Confidence intervals resample *prompts* (all samples of a prompt stay together) with
:func:`scipy.stats.bootstrap`; BCa falls back to the percentile method where it is undefined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from steerlib.errors import ConfigError
from steerlib.evaluate.contract import PERPLEXITY_CAP
from steerlib.evaluate.toxicity import (
    expected_max_toxicity,
    mean_toxicity,
    per_prompt_scores,
    toxicity_probability,
)

__all__ = ["bootstrap_ci", "mean_statistic", "perplexity_interval", "pooled_ratio", "run_bootstrap"]


def pooled_ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pooled mean of resampled prompts: total score over total number of samples."""
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def mean_statistic(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean along ``axis`` (the bootstrap statistic of per-prompt aggregates)."""
    return np.mean(values, axis=axis)


def run_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    *,
    vectorized: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
    method: str,
) -> tuple[float, float]:
    """Call scipy's bootstrap; fall back to the percentile method when BCa is undefined."""
    kwargs: dict[str, Any] = {
        "paired": len(data) > 1,
        "vectorized": vectorized,
        "n_resamples": n_resamples,
        "confidence_level": confidence,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = stats.bootstrap(
            data, statistic, method=method, rng=np.random.default_rng(seed), **kwargs
        )
        low, high = result.confidence_interval
        if not (math.isfinite(low) and math.isfinite(high)) and method.lower() != "percentile":
            result = stats.bootstrap(
                data, statistic, method="percentile", rng=np.random.default_rng(seed), **kwargs
            )
            low, high = result.confidence_interval
    return float(low), float(high)


_STAT_NAMES = ("mean_toxicity", "expected_max_toxicity", "toxicity_probability")


def _stat_name(statistic: str | Callable[..., float]) -> str | None:
    """Map a statistic (name or one of this module's functions) to its fast-path name."""
    if isinstance(statistic, str):
        if statistic not in _STAT_NAMES:
            raise ConfigError(
                f"bootstrap_ci got statistic={statistic!r}; use one of {list(_STAT_NAMES)} or "
                "a function that maps a sweep table to a float."
            )
        return statistic
    known = {
        mean_toxicity: "mean_toxicity",
        expected_max_toxicity: "expected_max_toxicity",
        toxicity_probability: "toxicity_probability",
    }
    return known.get(statistic)  # type: ignore[call-overload]


def bootstrap_ci(
    df: pd.DataFrame,
    statistic: str | Callable[[pd.DataFrame], float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    threshold: float = 0.5,
    method: Literal["BCa", "percentile", "basic"] = "BCa",
) -> tuple[float, float]:
    """Cluster-bootstrap confidence interval of a sweep statistic, resampling prompts.

    All samples of a prompt stay together. For the three named statistics the bootstrap runs
    on per-prompt aggregates (vectorized): the pooled mean of (score sum, sample count) pairs
    for mean toxicity, the per-prompt maximum for EMT and the per-prompt indicator for TP. Any
    other function of a sweep table is bootstrapped by rebuilding the resampled table (slow).

    Args:
        df: Sweep rows of one condition, with ``prompt_id`` and ``toxicity``.
        statistic: ``"mean_toxicity"``, ``"expected_max_toxicity"``,
            ``"toxicity_probability"``, one of those functions, or any function mapping a
            sweep table to a float.
        confidence: Confidence level in (0, 1).
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator.
        threshold: Toxicity threshold of the named ``"toxicity_probability"`` statistic.
        method: scipy's interval method; BCa falls back to percentile when undefined.

    Returns:
        ``(low, high)``; ``(value, value)`` when there are fewer than two prompts or every
        prompt has the same aggregate value.

    Raises:
        ConfigError: If ``confidence`` or ``n_resamples`` is out of range or the statistic is
            unknown.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"bootstrap_ci got confidence={confidence!r}; pass a value in (0, 1).")
    if n_resamples < 1:
        raise ConfigError(f"bootstrap_ci got n_resamples={n_resamples!r}; pass 1 or more.")
    name = _stat_name(statistic)
    per_prompt = per_prompt_scores(df, threshold)
    options = {
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "method": method,
    }
    if name is not None:
        if name == "mean_toxicity":
            sums = per_prompt["sum"].to_numpy(float)
            counts = per_prompt["count"].to_numpy(float)
            spread = sums / counts
            value = float(sums.sum() / counts.sum())
            data: tuple[np.ndarray, ...] = (sums, counts)
            func: Callable[..., Any] = pooled_ratio
        else:
            column = "max" if name == "expected_max_toxicity" else "toxic"
            spread = per_prompt[column].to_numpy(float)
            value = float(spread.mean())
            data, func = (spread,), mean_statistic
        if len(per_prompt) < 2 or np.ptp(spread) == 0:
            return value, value
        return run_bootstrap(data, func, vectorized=True, **options)

    value = float(statistic(df))  # type: ignore[operator]
    if len(per_prompt) < 2:
        return value, value
    prompt_ids = df["prompt_id"].to_numpy()
    blocks = [df[prompt_ids == pid] for pid in per_prompt.index]

    def resampled(indices: np.ndarray) -> float:
        parts = [blocks[int(i)].assign(prompt_id=f"p{k}") for k, i in enumerate(indices)]
        return float(statistic(pd.concat(parts, ignore_index=True)))  # type: ignore[operator]

    low, high = run_bootstrap((np.arange(len(blocks)),), resampled, vectorized=False, **options)
    if not (math.isfinite(low) and math.isfinite(high)):
        return value, value
    return low, high


def perplexity_interval(
    group: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Prompt-cluster bootstrap interval (BCa) of the mean continuation perplexity of a group.

    The statistic is the summary's ``perplexity``: the mean of the per-sample perplexities
    below :data:`PERPLEXITY_CAP`, pooled over prompts (each prompt's kept sum over its kept
    count), so the interval resamples whole prompts with all their samples.

    Args:
        group: Sweep rows of one condition, with ``prompt_id`` and ``perplexity``.
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        ``(low, high)``; NaN without a perplexity column or kept values, ``(value, value)``
        when fewer than two prompts have kept values or they all agree.
    """
    if "perplexity" not in group.columns:
        return math.nan, math.nan
    ppl = pd.to_numeric(group["perplexity"], errors="coerce").astype(float)
    kept = ppl.where(ppl < PERPLEXITY_CAP)
    per_prompt = pd.DataFrame({"prompt_id": group["prompt_id"].to_numpy(), "v": kept.to_numpy()})
    per_prompt = per_prompt.groupby("prompt_id")["v"].agg(["sum", "count"])
    per_prompt = per_prompt[per_prompt["count"] > 0]
    if per_prompt.empty:
        return math.nan, math.nan
    sums, counts = per_prompt["sum"].to_numpy(float), per_prompt["count"].to_numpy(float)
    value = float(sums.sum() / counts.sum())
    if len(per_prompt) < 2 or np.ptp(sums / counts) == 0:
        return value, value
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    return run_bootstrap((sums, counts), pooled_ratio, vectorized=True, method="BCa", **options)
