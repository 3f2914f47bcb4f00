"""The alpha search finds the budget edge of the benign human-text perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlib.errors import ConfigError
from steerlib.evaluate.fluency import benign_kl
from steerlib.evaluate.search import search_alpha
from steerlib.steer.hooks import active_hook_count
from steerlib.steer.vectors import SteeringVector


@pytest.fixture
def vector():
    generator = torch.Generator().manual_seed(0)
    return SteeringVector({1: torch.randn(32, generator=generator) * 3})


def _perplexity(model, tokenizer, texts, vector, alphas):
    table = benign_kl(model, tokenizer, texts, {"caa": vector}, layers=[1], alphas=list(alphas))
    return table.set_index("alpha")["human_perplexity"]


def test_search_lands_on_the_budget_edge(llama, tokenizer, texts, vector):
    found = search_alpha(llama, tokenizer, texts, vector, 1, max_increase=0.1, start=1.0)
    assert active_hook_count(llama) == 0
    assert found.budget == pytest.approx(1.1 * found.baseline)
    fine = _perplexity(llama, tokenizer, texts, vector, np.linspace(0, 1, 201))
    assert fine.is_monotonic_increasing  # the premise of a bracketing search
    edge = float(fine[fine <= found.budget].index.max())  # the true edge, to 0.005
    at = _perplexity(llama, tokenizer, texts, vector, [found.alpha]).iloc[0]
    assert at <= found.budget
    assert 0 < found.alpha and abs(found.alpha - edge) <= 1.0 / 64 + 0.005
    assert found.trace["alpha"].is_monotonic_increasing and found.trace["alpha"].is_unique


def test_search_widens_a_bracket_that_is_all_within_budget(llama, tokenizer, texts, vector):
    found = search_alpha(llama, tokenizer, texts, vector, 1, max_increase=0.1, start=0.001)
    assert found.alpha > 0.002  # beyond the first bracket
    assert _perplexity(llama, tokenizer, texts, vector, [found.alpha]).iloc[0] <= found.budget


def test_search_refuses_without_texts(llama, tokenizer, texts, vector):
    with pytest.raises(ConfigError, match="kl_texts"):
        search_alpha(llama, tokenizer, [], vector, 1)
    with pytest.raises(ConfigError, match="points"):
        search_alpha(llama, tokenizer, texts, vector, 1, points=2)


def test_search_keeps_the_kl_budget_too(llama, tokenizer, texts, vector):
    """Issue 27: with a KL budget the edge is within it as well as within the perplexity one."""
    free = search_alpha(llama, tokenizer, texts, vector, 1, max_increase=0.1, start=1.0)
    kl_at_free = benign_kl(
        llama, tokenizer, texts, {"caa": vector}, layers=[1], alphas=[free.alpha]
    )["kl_benign"].iloc[0]
    tight = kl_at_free / 4
    bound = search_alpha(
        llama, tokenizer, texts, vector, 1, max_increase=0.1, start=1.0, max_kl=tight
    )
    assert 0 <= bound.alpha < free.alpha
    at = benign_kl(llama, tokenizer, texts, {"caa": vector}, layers=[1], alphas=[bound.alpha])
    assert at["kl_benign"].iloc[0] <= tight and at["human_perplexity"].iloc[0] <= bound.budget


def test_step_back_bisects_down_until_the_continuations_fit():
    """The searched edge breaks the continuation budget: bisect between 0 and the edge."""
    import pandas as pd

    from steerlib.experiment.config import RunParams
    from steerlib.experiment.sweep import _step_back

    def rows_at(layer, alpha):
        return pd.DataFrame({"alpha": [alpha]})

    def check(rows):  # continuation perplexity 10 * (1 + alpha / 2): budget +10% -> alpha <= 0.2
        return 10 * (1 + float(rows["alpha"].iloc[0]) / 2), 11.0

    params = RunParams(search_step_backs=4)
    chosen, steps = _step_back(check, rows_at, 12, 1.6, rows_at(12, 1.6), params)
    assert [s["alpha"] for s in steps] == [1.6, 0.8, 0.4, 0.2, 0.3]  # 0.2 fits, 0.3 does not
    assert chosen == 0.2 and all(s["stage"] == "step_back" for s in steps)
    assert check(rows_at(12, chosen))[0] <= 11.0
    inside, steps = _step_back(check, rows_at, 12, 0.1, rows_at(12, 0.1), params)
    assert inside == 0.1 and len(steps) == 1  # within budget: no step back
    none, _ = _step_back(check, rows_at, 12, 1.6, rows_at(12, 1.6), RunParams(search_step_backs=0))
    assert none == 0.0  # over budget and no bisection allowed: nothing steered is kept


def test_step_back_judges_a_grid_alpha_from_its_grid_rows():
    """A midpoint on a grid alpha is judged from the saved grid rows (review finding 8)."""
    import pandas as pd

    from steerlib.experiment.config import RunParams
    from steerlib.experiment.sweep import _grid_rows, _step_back

    def unit(direction, alpha, variant="caa"):  # a grid unit: continuation ppl 10 (1 + alpha/2)
        return pd.DataFrame(
            {
                "variant": [variant],
                "direction": [direction],
                "layer": [12],
                "alpha": [alpha],
                "ppl": [10 * (1 + alpha / 2)],
            }
        )

    saved = {
        "caa-L12-b000": pd.concat([unit("caa", 0.8), unit("caa", 0.2)]),
        "random-L12-b000": pd.concat([unit("random", 0.8), unit("random", 0.2)]),
        "clamp-caa-L12-b000": unit("caa", 0.4, "clamp"),
    }
    grid = _grid_rows(saved)
    at = grid("caa", 12, 0.8)
    assert set(at["direction"]) == {"caa", "random"} and set(at["alpha"]) == {0.8}
    assert grid("caa", 12, 0.4) is None and grid("clamp", 12, 0.4) is not None
    generated = []

    def rows_at(layer, alpha):  # as the search's generator: grid rows where the grid has them
        on_grid = grid("caa", layer, alpha)
        if on_grid is not None:
            return on_grid
        generated.append(alpha)
        return unit("caa", alpha)

    def check(rows):
        return float(rows.loc[rows["direction"] == "caa", "ppl"].iloc[0]), 11.0

    chosen, steps = _step_back(check, rows_at, 12, 1.6, unit("caa", 1.6), RunParams())
    # 0.8 and 0.2 are grid alphas: judged from their rows, not the end of the bisection.
    assert [s["alpha"] for s in steps] == [1.6, 0.8, 0.4, 0.2]
    assert generated == [0.4] and chosen == 0.2
