"""The memoised, lazy alpha search finds the edge the batched search of 9 points per round did.

``_reference`` is a faithful copy of ``search_alpha``'s algorithm before issue 25 (every round's
9 points measured in one batch, its ends and alpha 0 measured again), kept here only as the
reference. Both run on synthetic costs through an injected measure; the new one through the
real ``search_alpha`` (its unsteered pass, measure and binding replaced by fakes).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from steerlib.evaluate import search
from steerlib.evaluate.search import search_alpha
from steerlib.steer.operators import OPERATORS, Fitted, apply_operator
from steerlib.steer.vectors import SteeringVector


def _reference(curve, *, max_increase, start, points, rounds, max_doublings, max_kl, cap):
    """The search before issue 25, on ``curve(alpha) -> (perplexity, kl)``; also says whether
    it measured a NaN alpha (its non-monotone corner: no over-budget point above the best)."""
    measured: list[pd.DataFrame] = []

    def measure(alphas):
        rows = [(float(a), *curve(float(a))) for a in alphas]
        table = pd.DataFrame(rows, columns=["alpha", "human_perplexity", "kl_benign"])
        measured.append(table[["alpha", "human_perplexity", "kl_benign"]])
        return table.set_index("alpha")

    baseline = float(measure(np.array([0.0]))["human_perplexity"].iloc[0])
    budget = (1.0 + max_increase) * baseline

    def cost(alphas):
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
    nan_alpha = bool(trace["alpha"].isna().any())
    return alpha, baseline, budget, trace.reset_index(drop=True), nan_alpha


def _new(monkeypatch, curve, *, lazy, cap, **options):
    """``search_alpha`` on ``curve`` (fake unsteered pass and measure), and its measure calls."""
    calls: list[list[float]] = []
    base = SimpleNamespace(perplexity=curve(0.0)[0], matches=lambda *args: True)

    def fake_measure(model, base, steering, alphas):
        calls.append(list(alphas))
        values = [curve(float(a)) for a in alphas]
        return np.array([v[1] for v in values]), np.array([v[0] for v in values])

    monkeypatch.setattr(search, "base_pass", lambda *args, **kwargs: base)
    monkeypatch.setattr(search, "measure", fake_measure)
    monkeypatch.setattr(search, "bind_steering", lambda *a, **k: SimpleNamespace(positions="all"))
    variant = None if cap is None else SimpleNamespace(max_alpha=cap)
    vector = SteeringVector({3: torch.ones(4)})
    found = search_alpha(None, None, ["a text"], vector, 3, variant=variant, lazy=lazy, **options)
    return found, calls


def _monotone(edge_alpha, power=1.0):
    """Perplexity 10 at alpha 0, crossing 11 (+10%) at ``edge_alpha``."""
    return lambda a: (10.0 * (1 + 0.1 * (max(a, 0.0) / edge_alpha) ** power), 0.01 * a * a)


def _curves():
    curves = {
        f"edge {e} power {p}": _monotone(e, p)
        for e in (0.05, 0.4, 1.1, 1.49, 2.7, 9.0)
        for p in (1, 2)
    }
    curves["never over"] = lambda a: (10.0, 0.0)
    curves["over at once"] = lambda a: (10.0 if a == 0 else 50.0, 0.0)
    curves["wavy"] = lambda a: (10.0 * (1 + 0.15 * math.sin(4 * a) ** 2 + 0.02 * a), 0.0)
    curves["bump"] = lambda a: (12.0 if 0.3 < a < 0.5 else 10.0 * (1 + 0.05 * a), 0.0)
    curves["saw"] = lambda a: (10.0 * (1 + 0.12 * ((7 * a) % 1.0)), 0.0)
    curves["nan beyond 1"] = lambda a: (math.nan if a > 1 else 10.0 * (1 + 0.05 * a), 0.0)
    rng = np.random.default_rng(0)
    for k in range(20):  # random step functions: within or over on random pieces
        cuts = np.sort(rng.uniform(0, 6, size=6))
        levels = rng.choice([10.5, 11.5], size=7)

        def steps(a, cuts=cuts, levels=levels):
            return (10.0 if a == 0 else float(levels[np.searchsorted(cuts, a)]), 0.0)

        curves[f"steps {k}"] = steps
    return curves


OPTIONS = [
    {
        "max_increase": 0.1,
        "start": 1.5,
        "points": 9,
        "rounds": 2,
        "max_doublings": 4,
        "max_kl": None,
    },
    {
        "max_increase": 0.1,
        "start": 1.5,
        "points": 9,
        "rounds": 2,
        "max_doublings": 4,
        "max_kl": 0.02,
    },
    {
        "max_increase": 0.1,
        "start": 0.5,
        "points": 5,
        "rounds": 3,
        "max_doublings": 2,
        "max_kl": None,
    },
]


@pytest.mark.parametrize("cap", [None, 1.0])
@pytest.mark.parametrize("lazy", [True, False])
def test_lazy_search_finds_the_reference_edge(monkeypatch, lazy, cap):
    compared = corner = 0
    for name, curve in _curves().items():
        for options in OPTIONS:
            alpha, baseline, budget, trace, nan_alpha = _reference(curve, cap=cap, **options)
            found, calls = _new(monkeypatch, curve, lazy=lazy, cap=cap, **options)
            assert (found.baseline, found.budget) == (baseline, budget), name
            if nan_alpha:  # the old search's corner: it took NaN as a bracket end
                corner += 1
                value = curve(found.alpha)[0]
                assert found.alpha == 0 or value <= budget, name
                continue
            compared += 1
            assert found.alpha == alpha, (name, options)
            # Every alpha measured is one the reference measured, with the same values ...
            merged = found.trace.merge(
                trace, on="alpha", suffixes=("", "_ref"), how="left", indicator=True
            )
            assert (merged["_merge"] == "both").all(), name
            pd.testing.assert_series_equal(
                merged["human_perplexity"], merged["human_perplexity_ref"], check_names=False
            )
            # ... each once, never alpha 0 again (the unsteered pass), fewer when lazy.
            flat = [a for call in calls for a in call]
            assert len(flat) == len(set(flat)) and 0.0 not in flat, name
            assert len(found.trace) <= len(trace), name
            if lazy:
                assert all(len(call) == 1 for call in calls), name
    assert compared >= 3 * corner and compared > 60


def test_lazy_search_measures_fewer_points(monkeypatch):
    curve = _monotone(1.2)
    options = OPTIONS[0]
    lazy, _ = _new(monkeypatch, curve, lazy=True, cap=None, **options)
    batched, batched_calls = _new(monkeypatch, curve, lazy=False, cap=None, **options)
    alpha, _, _, trace, _ = _reference(curve, cap=None, **options)
    assert lazy.alpha == batched.alpha == alpha
    # The reference measured 1 + 3 x 9 alphas (ends and alpha 0 again), 23 of them distinct.
    assert len(trace) == 23 and sum(len(call) for call in batched_calls) == 22
    assert len(batched_calls) == 3  # one pass per round: the first bracket and 2 refinements
    assert len(lazy.trace) < 18  # the points below each round's best: not measured


def test_every_operator_is_the_identity_at_alpha_0():
    """Alpha 0 needs no steered pass (``benign_pass``): each variant leaves ``h`` as it is."""
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 8, generator=generator)
    h[0, 0] = 0.0  # a zero state: norm preservation must leave it too
    v = torch.randn(8, generator=generator)
    fitted = Fitted(gate=torch.rand(3, 5, generator=generator), offset=0.3)
    for name, op in OPERATORS.items():
        steered = apply_operator(op, h, v, torch.zeros(3, 1, 1), fitted)
        assert torch.equal(steered, h), (
            f"variant {name!r} changes the states at alpha 0: leave it out of the shared "
            "unsteered pass (steerlib.evaluate.benign_pass.judge) before adding it"
        )


def test_tiny_model_search_measures_fewer_alphas_for_the_same_edge(llama, tokenizer, texts):
    from steerlib.evaluate import benign_pass

    vector = SteeringVector({1: torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3})
    bases: dict = {}
    made = []
    original = benign_pass.base_pass

    def counted(*args, **kwargs):
        made.append(1)
        return original(*args, **kwargs)

    search.base_pass = counted
    try:
        options = {"max_increase": 0.1, "start": 1.0, "max_kl": 0.05, "bases": bases}
        lazy = search_alpha(llama, tokenizer, texts, vector, 1, lazy=True, **options)
        batched = search_alpha(llama, tokenizer, texts, vector, 1, lazy=False, **options)
    finally:
        search.base_pass = original
    assert len(made) == 1 and len(bases) == 1  # one unsteered pass for both searches
    assert (lazy.alpha, lazy.baseline, lazy.budget) == (
        batched.alpha,
        batched.baseline,
        batched.budget,
    )
    assert 0 < lazy.alpha < 1.0
    # The batched search measures each new point of 3 rounds once (the old one: 1 + 3 x 9).
    assert len(lazy.trace) < len(batched.trace) <= 1 + 8 + 7 + 7
    merged = lazy.trace.merge(batched.trace, on="alpha", suffixes=("", "_all"))
    assert len(merged) == len(lazy.trace)
    np.testing.assert_allclose(
        merged["human_perplexity"], merged["human_perplexity_all"], rtol=1e-5
    )


def test_benign_kl_extra_settings_equal_separate_calls(llama, tokenizer, texts):
    """One unsteered pass for the grid and the searched alphas: the rows separate calls give."""
    from steerlib.evaluate.benign_pass import base_pass
    from steerlib.evaluate.fluency import benign_kl

    generator = torch.Generator().manual_seed(1)
    vectors = {
        "caa": SteeringVector({1: torch.randn(32, generator=generator)}),
        "random": SteeringVector({1: torch.randn(32, generator=generator)}),
    }
    options = {"halves": ["a", "b", "a"], "n_resamples": 50, "seed": 3, "batch_size": 2}
    grid = {"layers": [1], "alphas": [0.0, 0.5, 1.5]}
    together = benign_kl(
        llama, tokenizer, texts, vectors, extra=[(1, 0.7), (1, 0.9)], **grid, **options
    )
    apart = pd.concat(
        [benign_kl(llama, tokenizer, texts, vectors, **grid, **options)]
        + [
            benign_kl(llama, tokenizer, texts, vectors, layers=[1], alphas=[a], **options)
            for a in (0.7, 0.9)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(together, apart)
    at_zero = together[(together["alpha"] == 0) & (together["split"] == "all")]
    assert (at_zero["kl_benign"] == 0).all()  # alpha 0 steers nothing: no steered pass
    unsteered = base_pass(llama, tokenizer, texts, batch_size=2).perplexity
    assert (at_zero["human_perplexity"] == unsteered).all()
    steered = together[together["alpha"] > 0]
    assert (steered["kl_benign"] > 0).all()
