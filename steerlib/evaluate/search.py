"""Find the budget edge: the largest alpha whose fluency cost stays within the budget.

A fixed alpha grid rarely lands on the edge of a fluency budget: at most layers the edge lies
between two grid points, so a rule that picks from the grid either stops short of it or finds
nothing steered within budget. :func:`search_alpha` brackets the edge instead, for one layer:
it measures the steered model's perplexity on fixed, held-out benign human texts (the rule's
default fluency measure, :func:`steerlib.evaluate.fluency.benign_kl`) at the 9 points of a bracket,
keeps the bracket where the budget is crossed, and refines it. Two rounds of 9 points resolve
the edge to 1/64 of the starting range; the measure needs no generation, so a search costs a
few forward passes over the texts.

**What is measured** (:func:`find_edge`, which holds the proof). An alpha is measured once
per search (a round's bracket ends were measured by the round before; alpha 0 is the unsteered
pass, :mod:`steerlib.evaluate.benign_pass`, made once per list of texts and shared through
``bases``). A round's result is only its largest point within budget and the over-budget
point just above it, so a *lazy* search (``lazy=True``) measures the new points from the top
down, one pass each, and stops at the first point within budget (while doubling the first
bracket: once a point within and one over are both found). The edge is the one measuring every
point would find; the trace then lacks the points below each round's best, which decide
nothing. It is not the default: on the 2-core CPU of the default run (issue 25, held-out texts
of 15-22 tokens) a pass of one alpha cost about half the CPU time of a pass of nine, and a
round measures 4-7 points top-down, so the lazy search took more CPU than the batched one
(same edge). The default measures every new point of a round in one batched pass, which on a
GPU costs about as much as one.

A variant whose alpha is a fraction (``ablate``, ``clamp``: at most 1, full removal) is
searched on ``[0, 1]`` only: the first bracket ends at 1 and is never widened, and an edge at 1
means full removal stays within budget.

A variant that steers only generated positions (``caa_generated``) is judged teacher-forced,
with its own positions: each held-out text's prompt part is left unsteered and only its
continuation is steered (``prefixes``; :func:`steerlib.evaluate.fluency.benign_kl`).

The search assumes the cost grows with alpha past the edge (it does for CAA vectors: the
perplexity of benign text rises as they push it away from the unsteered model); a measured
trace is kept so a non-monotone cost shows. Where a cost is not monotone and a round's top
point is within budget while a point below it is over, the edge is that top point (the
search up to 2026-12 took NaN as the next bracket's end there and fell back to alpha 0).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.evaluate.benign import bind_steering
from steerlib.evaluate.benign_pass import BasePass, base_pass, measure
from steerlib.steer.hooks import Units
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.steering import Steering
from steerlib.steer.variants import Variant
from steerlib.steer.vectors import SteeringVector

__all__ = ["AlphaSearch", "find_edge", "search_alpha"]


@dataclass(frozen=True)
class AlphaSearch:
    """The result of one layer's search.

    Attributes:
        layer: The steered layer.
        alpha: Largest alpha found within the budget (0 when even the smallest step is over).
        baseline: The measure at alpha 0.
        budget: The largest admissible value of the measure.
        trace: Every alpha measured, with ``human_perplexity`` and ``kl_benign``, in order of
            alpha (alpha 0 first: the baseline). A lazy search (:func:`find_edge`) leaves out
            the points below each round's best, which decide nothing.
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
    lazy: bool = False,
    bases: MutableMapping[Any, BasePass] | None = None,
) -> AlphaSearch:
    """The largest positive alpha at ``layer`` whose benign human perplexity is within budget.

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign texts (the same for every setting).
        vector: The steering vector (positive alpha steers away from toxicity), steered at
            ``layer`` by ``variant``; or one bound :class:`~steerlib.steer.steering.Steering`,
            taken whole (``units``, ``variant`` and ``probe`` then unused).
        layer: The layer to steer (with a Steering: the result's label, default its middle
            layer).
        max_increase: Budget: perplexity at most ``(1 + max_increase)`` times alpha 0's.
        start: Upper end of the first bracket; doubled (up to ``max_doublings`` times) while
            still within budget. Never beyond the variant's ``max_alpha`` (1 for ``ablate``
            and ``clamp``).
        points: Alphas of each round's bracket, its ends included.
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
        lazy: Measure a round's points from the top down, one pass each, only as far as the
            edge needs (:func:`find_edge`); ``False`` (the default): all its new points in one
            batched pass. Same edge either way (the module docstring says why batched).
        bases: Unsteered passes already made, by texts and judged positions (alpha 0 steers
            nothing, so one serves every direction, variant and layer): the search takes
            its texts' pass from there, or makes it and adds it. None: made for this search.

    Returns:
        The :class:`AlphaSearch`.

    Raises:
        ConfigError: No texts, or a non-positive ``start``, ``points`` below 3 or ``rounds``
            below 1.
    """
    _check_search(texts, start, points, rounds)
    cap, layer = _cap_and_layer(vector, layer, variant)
    bound = (
        vector
        if isinstance(vector, Steering)
        else bind_steering(model, vector, layer, units, variant, probe)
    )
    teacher_forced = bound.positions == "generated"
    key = (tuple(texts), tuple(prefixes) if prefixes is not None else None, teacher_forced)
    base = None if bases is None else bases.get(key)
    if base is None or not base.matches(texts, prefixes, teacher_forced):
        base = base_pass(model, tokenizer, texts, prefixes=prefixes, teacher_forced=teacher_forced)
        if bases is not None:
            bases[key] = base
    baseline = base.perplexity
    budget = (1.0 + max_increase) * baseline
    measured: dict[float, tuple[float, float]] = {0.0: (0.0, baseline)}  # (kl, perplexity)

    def over_budget(kl: float, ppl: float) -> float:
        """The cost over its budget: at most 1 is within budget on every measure."""
        ratio = ppl / budget
        return float(ratio if max_kl is None else np.maximum(ratio, kl / max(max_kl, 1e-12)))

    def cost(alphas: list[float]) -> list[float]:
        kl, ppl = measure(model, base, bound, alphas)
        measured.update(zip(alphas, zip(kl.tolist(), ppl.tolist(), strict=True), strict=True))
        return [over_budget(*measured[alpha]) for alpha in alphas]

    alpha = find_edge(
        cost,
        {0.0: over_budget(*measured[0.0])},
        start=start if cap is None else min(float(start), cap),
        cap=cap,
        points=points,
        rounds=rounds,
        max_doublings=max_doublings,
        lazy=lazy,
    )
    trace = pd.DataFrame(
        [(a, ppl, kl) for a, (kl, ppl) in sorted(measured.items())],
        columns=["alpha", "human_perplexity", "kl_benign"],
    )
    return AlphaSearch(int(layer), float(alpha), baseline, budget, trace)


def find_edge(
    cost: Callable[[list[float]], list[float]],
    known: dict[float, float],
    *,
    start: float,
    cap: float | None,
    points: int = 9,
    rounds: int = 2,
    max_doublings: int = 4,
    lazy: bool = False,
) -> float:
    """The bracketing search over a cost (at most 1: within budget), measuring what it needs.

    The first bracket is ``[0, start]``, doubled while all its points are within budget (up
    to ``max_doublings`` times, never beyond ``cap``); each of ``rounds`` refinements then
    brackets the round's largest point within budget (``best``, 0 if none) and the smallest
    over-budget point above it (``first_over``). The result is the last round's ``best``.

    **Lazy rounds measure less, for the same edge.** ``best`` is the *largest* point within
    budget, so every point above it is over budget (or NaN, neither); ``first_over`` is the
    smallest over-budget point above ``best``, so it depends only on points above ``best``.
    Measuring from the top down and stopping at the first point within budget therefore finds
    the same ``best`` and ``first_over`` as measuring every point: the points left unmeasured
    all lie below ``best``. A doubling round needs to know whether *all* its points are within
    budget: top-down, the first over-budget point settles that (no); a round whose top point
    is over is settled at its ``best`` as above, one whose top point is within at the first
    point over (then ``best`` is the top point, and no point is over above it) or at its last
    point (all within: double). A round that cannot double (the cap, or the last doubling)
    with its top point within ends at that point. ``known`` (alpha 0, and every point measured
    before: each bracket's ends) is never measured again.

    Args:
        cost: Measures alphas (one pass for all given) and returns each one's cost.
        known: Costs already measured, by alpha (at least alpha 0's); filled as it goes.
        start: Upper end of the first bracket (already capped).
        cap: Largest alpha allowed, or None.
        points: Points of each bracket, its ends included.
        rounds: Refinements of the bracket.
        max_doublings: Limit on widening the first bracket.
        lazy: Measure top-down, one point per pass, only as far as the round needs;
            ``False``: all of a round's new points in one pass (one batched pass on a GPU).

    Returns:
        The edge: the largest alpha found within budget (0 when none).
    """

    def scan(low: float, high: float, need_all: bool) -> tuple[float | None, float | None, bool]:
        """The round's ``best``, ``first_over`` and whether every point is within budget."""
        grid = [float(a) for a in np.linspace(low, high, points)]
        if not lazy:
            new = [a for a in dict.fromkeys(grid) if a not in known]
            known.update(zip(new, cost(new), strict=True) if new else [])
        best = first_over = None
        any_over = False
        for alpha in reversed(grid):
            if alpha not in known:
                known[alpha] = cost([alpha])[0]
            value = known[alpha]
            if value <= 1.0:
                if best is None:
                    best = alpha
                    if not need_all or any_over:
                        break
            elif value > 1.0:
                any_over = True
                if best is None:
                    first_over = alpha
                elif lazy:  # not all within: decided
                    break
        all_within = all(known.get(a, np.nan) <= 1.0 for a in grid)
        return best, first_over, all_within

    low, high = 0.0, float(start)
    for doubling in range(max_doublings + 1):
        final = doubling == max_doublings or (cap is not None and high >= cap)
        best, first_over, all_within = scan(low, high, need_all=not final)
        if not all_within or final:
            break
        low, high = high, 2 * high if cap is None else min(2 * high, cap)
    for _ in range(rounds):
        if first_over is None:  # nothing over budget above the best point: it is the edge
            low = 0.0 if best is None else best
            break
        low = 0.0 if best is None else best
        best, first_over, _ = scan(low, first_over, need_all=False)
    return max(low, best) if best is not None else low


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
