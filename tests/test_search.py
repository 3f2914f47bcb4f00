"""The alpha search finds the budget edge of the benign human-text perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlib.errors import ConfigError
from steerlib.fluency import benign_kl
from steerlib.hooks import active_hook_count
from steerlib.search import search_alpha
from steerlib.vectors import SteeringVector


@pytest.fixture
def vector():
    generator = torch.Generator().manual_seed(0)
    return SteeringVector({1: torch.randn(32, generator=generator) * 3})


@pytest.fixture
def texts(llama, tokenizer):
    """The tiny model's own greedy text: likely under it, so steering raises its perplexity."""
    batch = tokenizer(["the dog", "we cook", "hello"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = llama.generate(**batch, max_new_tokens=12, do_sample=False)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


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
