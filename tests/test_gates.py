"""The gating measures are one table: a new gate is one entry there plus its computation."""

from __future__ import annotations

import dataclasses

import pytest
from test_operating_point import CURSED, FLOOR, kl_of, make_sweep

from steerlib.errors import ConfigError
from steerlib.evaluate import gates, metrics
from steerlib.evaluate import operating_point as op
from steerlib.experiment import report

REPEATS = gates.Gate(
    "repeat_rate",
    words="the share of repeated 4-grams in text sampled on the held-out benign texts",
    label="repeated 4-grams on held-out benign text",
    header="repeats",
    source="held_out",
    budget="absolute",
    parameter="max_repeat_rate",
    unit="of 4-grams",
    report_unit="of 4-grams",
)
"""A made-up held-out measure with a budget of its own, declared only in this test."""


def _summary(rates: dict[float, float]):
    """The CURSED sweep with ``repeat_rate`` in its kl table (``rates``: caa alpha -> rate)."""
    kl = kl_of(CURSED)
    kl["repeat_rate"] = [
        rates.get(alpha, 0.0) if direction == "caa" else 0.0
        for direction, alpha in kl[["direction", "alpha"]].itertuples(index=False)
    ]
    kl["repeat_rate_ci_low"], kl["repeat_rate_ci_high"] = (
        kl["repeat_rate"] - 0.01,
        kl["repeat_rate"],
    )
    return metrics.summarize(make_sweep(CURSED), n_resamples=200, kl=kl, floor=FLOOR)


def test_the_table_declares_todays_gates_in_check_order() -> None:
    names = [found.name for found in gates.GATES]
    assert names == ["human_perplexity", "perplexity", "kl_benign"]
    assert gates.budget_parameters() == ("max_perplexity_increase", "max_kl_benign")
    assert gates.held_out_columns()[:2] == ("kl_benign", "human_perplexity")
    assert gates.gate("kl_benign").limit_value({"max_perplexity_increase": 0.1}) == (
        pytest.approx(0.0953, abs=1e-4)
    )
    with pytest.raises(ConfigError, match="not a gating measure"):
        gates.gate("toxicity")
    with pytest.raises(ConfigError, match="lower-is-better"):
        dataclasses.replace(REPEATS, better="higher")  # type: ignore[arg-type]


def test_a_new_gate_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gates, "GATES", (*gates.GATES, REPEATS))
    assert gates.budget_parameters()[-1] == "max_repeat_rate"
    summary = _summary({1.0: 0.02, 2.0: 0.30})
    assert {"repeat_rate", "repeat_rate_ci_low", "repeat_rate_ci_high"} <= set(summary.columns)

    table = op.admissibility(summary, max_repeat_rate=0.1)
    assert (
        table["fluency_checked"] == "human_perplexity; perplexity; kl_benign; repeat_rate"
    ).all()
    two = table[(table["direction"] == "caa") & (table["alpha"] == 2.0)]
    assert not two["admissible"].any() and (two["fluency_failed"] == "repeat_rate").all()
    assert (two["repeat_rate_budget"] == 0.1).all()

    point = op.recommend_operating_point(summary, max_repeat_rate=0.1)
    assert point["status"] == "recommended" and point["alpha"] == 1.0  # alpha 2 over budget
    assert point["checks"]["max_repeat_rate"] == 0.1
    assert "repeated 4-grams in text sampled" in point["rule"] and "0.1 of 4-grams" in point["rule"]
    entry = point["fluency_budget"]["repeat_rate"]
    assert entry["value"] == pytest.approx(0.02) and entry["limit"] == 0.1 and entry["within"]
    assert point["repeat_rate_ci"] == pytest.approx([0.01, 0.02])
    assert point["selection"]["repeat_rate_limit"] == 0.1
    line = report.verdict({"recommended": point, "params": {"model": "m"}})[1]
    assert "repeated 4-grams on held-out benign text 0.02 of 4-grams" in line

    loose = op.recommend_operating_point(summary, max_repeat_rate=0.5)
    assert loose["checks"]["max_repeat_rate"] == 0.5
    assert loose["fluency_budget"]["repeat_rate"]["within"]


def test_a_budget_that_names_no_gate_is_refused() -> None:
    summary = _summary({})
    with pytest.raises(ConfigError, match=r"max_repeat_rate.*not budget parameters"):
        op.admissibility(summary, max_repeat_rate=0.1)
    with pytest.raises(ConfigError, match="declare the gate"):
        op.recommend_operating_point(summary, max_repeat_rate=0.1)


def test_a_gate_without_a_budget_says_which_parameter_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gates, "GATES", (*gates.GATES, REPEATS))
    with pytest.raises(ConfigError, match="set max_repeat_rate"):
        op.recommend_operating_point(_summary({1.0: 0.02}))
