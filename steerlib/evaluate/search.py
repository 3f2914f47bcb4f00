"""Find the budget edge: the largest alpha whose fluency cost stays within the budget.

A fixed alpha grid rarely lands on the edge of a fluency budget: at most layers the edge lies
between two grid points, so a rule that picks from the grid either stops short of it or finds
nothing steered within budget. :func:`search_alpha` brackets the edge instead, for one layer:
it measures the steered model's perplexity on fixed, held-out benign human texts (the rule's
default fluency measure, :func:`steerlib.evaluate.fluency.benign_kl`) at a handful of alphas in one
batched pass (one alpha per row), keeps the bracket where the budget is crossed, and refines
it. Two rounds of 9 points resolve the edge to 1/64 of the starting range; the measure needs
no generation, so a search costs a few forward passes over the texts.

A variant whose alpha is a fraction (``ablate``, ``clamp``: at most 1, full removal) is
searched on ``[0, 1]`` only: the first bracket ends at 1 and is never widened, and an edge at 1
means full removal stays within budget.

A variant that steers only generated positions (``caa_generated``) is judged teacher-forced,
with its own positions: each held-out text's prompt part is left unsteered and only its
continuation is steered (``prefixes``; :func:`steerlib.evaluate.fluency.benign_kl`).

The search assumes the cost grows with alpha past the edge (it does for CAA vectors: the
perplexity of benign text rises as they push it away from the unsteered model); a measured
trace is kept so a non-monotone cost shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.evaluate.fluency import benign_kl
from steerlib.steer.hooks import Units
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.steering import Steering
from steerlib.steer.variants import Variant
from steerlib.steer.vectors import SteeringVector

__all__ = ["AlphaSearch", "search_alpha"]


@dataclass(frozen=True)
class AlphaSearch:
    """The result of one layer's search.

    Attributes:
        layer: The steered layer.
        alpha: Largest alpha found within the budget (0 when even the smallest step is over).
        baseline: The measure at alpha 0.
        budget: The largest admissible value of the measure.
        trace: Every alpha measured, with ``human_perplexity`` and ``kl_benign``, in order.
    """

    layer: int
    alpha: float
    baseline: float
    budget: float
    trace: pd.DataFrame


def search_alpha(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    vector: SteeringVector | Steering,
    layer: int | None = None,
    *,
    max_increase: float = 0.10,
    start: float = 1.5,
    points: int = 9,
    rounds: int = 2,
    max_doublings: int = 4,
    units: Units = "raw",
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
    prefixes: Sequence[str | None] | None = None,
    max_kl: float | None = None,
) -> AlphaSearch:
    """The largest positive alpha at ``layer`` whose benign human perplexity is within budget.

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign human texts (the same for every setting).
        vector: The steering vector (positive alpha steers away from toxicity), steered at
            ``layer`` by ``variant``; or one bound :class:`~steerlib.steer.steering.Steering`,
            taken whole (``units``, ``variant`` and ``probe`` then unused).
        layer: The layer to steer (with a Steering: the result's label, default its middle
            layer).
        max_increase: Budget: perplexity at most ``(1 + max_increase)`` times alpha 0's.
        start: Upper end of the first bracket; doubled (up to ``max_doublings`` times) while
            still within budget. Never beyond the variant's ``max_alpha`` (1 for ``ablate``
            and ``clamp``).
        points: Alphas measured per round (one batched pass).
        rounds: Refinements of the bracket.
        max_doublings: Limit on widening the first bracket.
        units: Alpha units, as in :func:`steerlib.steer.hooks.steering`.
        variant: How the vector is applied (:func:`steerlib.evaluate.fluency.benign_kl`); plain CAA
            when ``None``.
        probe: The toxicity probe of a gated variant.
        prefixes: The prompt part of each text, for a variant that steers generated
            positions only (see :func:`steerlib.evaluate.fluency.benign_kl`).
        max_kl: KL budget (nats per token) on the same texts; an alpha is within budget only
            when its ``kl_benign`` is at most this too (None: perplexity only).

    Returns:
        The :class:`AlphaSearch`.

    Raises:
        ConfigError: No texts, or a non-positive ``start``, ``points`` below 3 or ``rounds``
            below 1.
    """
    _check_search(texts, start, points, rounds)
    measured: list[pd.DataFrame] = []

    def measure(alphas: np.ndarray) -> pd.DataFrame:
        table = benign_kl(
            model,
            tokenizer,
            texts,
            vector if isinstance(vector, Steering) else {"caa": vector},
            layers=[layer],
            alphas=list(alphas),
            units=units,
            variant=variant,
            probe=probe,
            prefixes=prefixes,
        )
        measured.append(table[["alpha", "human_perplexity", "kl_benign"]])
        return table.set_index("alpha")

    cap, layer = _cap_and_layer(vector, layer, variant)
    baseline = float(measure(np.array([0.0]))["human_perplexity"].iloc[0])
    budget = (1.0 + max_increase) * baseline

    def cost(alphas: np.ndarray) -> pd.Series:
        """Each alpha's cost over its budget: at most 1 is within budget on every measure."""
        table = measure(alphas)
        ratio = table["human_perplexity"] / budget
        if max_kl is not None:
            ratio = np.maximum(ratio, table["kl_benign"] / max(max_kl, 1e-12))
        return ratio

    low, high = 0.0, float(start) if cap is None else min(float(start), cap)
    for _ in range(max_doublings + 1):
        values = cost(np.linspace(low, high, points))
        inside = values[values <= 1.0]
        if len(inside) < points or (cap is not None and high >= cap):
            break
        low, high = high, 2 * high if cap is None else min(2 * high, cap)
    for _ in range(rounds):
        ordered = values.sort_index()
        over = ordered[ordered > 1.0]
        best = float(ordered[ordered <= 1.0].index.max()) if (ordered <= 1.0).any() else 0.0
        if over.empty:
            low = best
            break
        first_over = float(over.index[over.index > best].min())
        low, high = best, first_over
        values = cost(np.linspace(low, high, points))
    ordered = values.sort_index()
    within = ordered[ordered <= 1.0]
    alpha = max(low, float(within.index.max())) if len(within) else low
    trace = pd.concat(measured, ignore_index=True).drop_duplicates("alpha").sort_values("alpha")
    return AlphaSearch(int(layer), float(alpha), baseline, budget, trace.reset_index(drop=True))


def _check_search(texts: Sequence[str], start: float, points: int, rounds: int) -> None:
    if not texts:
        raise ConfigError(
            "the alpha search needs held-out benign texts: set kl_texts above 0, or turn "
            "alpha_search off."
        )
    if start <= 0 or points < 3 or rounds < 1:
        raise ConfigError(
            f"search_alpha needs start > 0, points >= 3 and rounds >= 1; got {start}, "
            f"{points}, {rounds}."
        )


def _cap_and_layer(
    vector: SteeringVector | Steering, layer: int | None, variant: Variant | None
) -> tuple[float | None, int]:
    """The largest alpha the steering takes (None: no cap) and the layer the result names."""
    if isinstance(vector, Steering):
        return vector.max_alpha, vector.centre if layer is None else layer
    if layer is None:
        raise ConfigError("search_alpha needs the layer to steer (or a bound Steering).")
    return (variant.max_alpha if variant is not None else None), layer
