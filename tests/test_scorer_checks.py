"""Two scorers in the summary, the cut under both, toxicity strata and side-by-side examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from steerlib.evaluate import metrics
from steerlib.experiment.examples import side_by_side_examples
from steerlib.experiment.report import verdict
from steerlib.experiment.scorer_checks import cut_holds
from steerlib.experiment.strata import MIN_PROMPTS, prompt_strata, strata_table


def sweep_rows(n_prompts: int, alphas: tuple[float, ...], *, seed: int = 0) -> pd.DataFrame:
    """Completions of ``n_prompts`` challenging prompts, 3 samples each, two scorers.

    The main score falls with alpha; the second scorer's falls only for even prompts.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        base = rng.uniform(0.4, 0.9)
        for alpha in alphas:
            for sample in range(3):
                noise = rng.uniform(-0.05, 0.05)
                rows.append(
                    {
                        "subset": "challenging",
                        "prompt_id": f"p{i:02d}",
                        "prompt": f"prompt {i}",
                        "layer": 3,
                        "alpha": alpha,
                        "direction": "caa",
                        "variant": "caa",
                        "sample": sample,
                        "completion": f"text {i} {sample}",
                        "toxicity": float(np.clip(base - 0.3 * alpha + noise, 0, 1)),
                        "toxicity_second": float(
                            np.clip(base - (0.3 * alpha if i % 2 == 0 else 0) + noise, 0, 1)
                        ),
                    }
                )
    return pd.DataFrame(rows)


def test_second_scorer_columns_are_the_first_metrics_on_its_scores():
    sweep = sweep_rows(10, (0.0, 1.0))
    summary = metrics.summarize(sweep.drop(columns="variant"), n_resamples=200)
    alone = metrics.summarize(
        sweep.drop(columns=["variant", "toxicity"]).rename(columns={"toxicity_second": "toxicity"}),
        n_resamples=200,
    )
    for name in ("expected_max_toxicity", "toxicity_probability", "mean_toxicity"):
        for end in ("", "_ci_low", "_ci_high"):
            np.testing.assert_allclose(summary[f"{name}_second{end}"], alone[f"{name}{end}"])
    old = metrics.summarize(sweep.drop(columns=["variant", "toxicity_second"]), n_resamples=200)
    assert not any(c.endswith("_second") for c in old.columns)


def point(alpha: float = 1.0) -> dict:
    return {
        "status": "recommended",
        "layer": 3,
        "alpha": alpha,
        "direction": "caa",
        "subset": "challenging",
        "figures_from": "all",
    }


def test_cut_holds_names_the_scorer_it_fails():
    sweep = sweep_rows(30, (0.0, 1.0))
    summary = metrics.summarize(sweep.drop(columns="variant"), n_resamples=300)
    check = cut_holds(summary, point(), {"": "lexical", "_second": "embedding"})
    assert check["scorers"]["lexical"]["holds"] is True
    assert check["holds_under_all"] is True
    # The second scorer's cut is half as large; with every prompt unchanged it fails.
    flat = sweep.assign(
        toxicity_second=sweep.groupby("prompt_id")["toxicity_second"].transform("max")
    )
    flat_summary = metrics.summarize(flat.drop(columns="variant"), n_resamples=300)
    failed = cut_holds(flat_summary, point(), {"": "lexical", "_second": "embedding"})
    assert failed["scorers"]["embedding"]["holds"] is False
    assert "does not hold under embedding" in failed["sentence"]
    assert cut_holds(summary, {"status": "no admissible steered setting"}, {"": "x"}) == {}


def test_verdict_adds_the_two_scorer_clause_only_with_two_scorers():
    sweep = sweep_rows(30, (0.0, 1.0))
    summary = metrics.summarize(sweep.drop(columns="variant"), n_resamples=300)
    row = summary[(summary["alpha"] == 1.0)].iloc[0]
    base = summary[(summary["alpha"] == 0.0)].iloc[0]
    recommended = {
        **point(),
        "expected_max_toxicity": row["expected_max_toxicity"],
        "expected_max_toxicity_ci": [
            row["expected_max_toxicity_ci_low"],
            row["expected_max_toxicity_ci_high"],
        ],
        "baseline_expected_max_toxicity": base["expected_max_toxicity"],
        "n_prompts": 30,
    }
    one = verdict({"recommended": recommended, "params": {}})
    recommended["cut_holds"] = cut_holds(summary, point(), {"": "a", "_second": "b"})
    two = verdict({"recommended": recommended, "params": {}})
    assert len(one) == len(two) == 3
    assert "both scorers" not in one[0] and "The cut holds under both scorers" in two[0]


def test_a_scorer_without_figures_is_not_measured_rather_than_failed():
    sweep = sweep_rows(30, (0.0, 1.0)).drop(columns="toxicity_second")
    summary = metrics.summarize(sweep.drop(columns="variant"), n_resamples=300)
    check = cut_holds(summary, point(), {"": "lexical", "_second": "embedding"})
    assert check["scorers"]["embedding"]["holds"] is None
    assert check["holds_under_all"] is None
    assert "Not measured under embedding" in check["sentence"]
    assert "does not hold" not in check["sentence"]


def test_thin_evidence_gives_no_scorer_verdict():
    from steerlib.experiment.report import MIN_PROMPTS_PER_HALF

    n = MIN_PROMPTS_PER_HALF - 1
    sweep = sweep_rows(n, (0.0, 1.0))
    summary = metrics.summarize(sweep.drop(columns="variant"), n_resamples=300)
    thin_point = {**point(), "n_prompts": n}
    check = cut_holds(summary, thin_point, {"": "a", "_second": "b"})
    assert all(entry["holds"] is None for entry in check["scorers"].values())
    assert "too few prompts" in check["sentence"] and "holds under" not in check["sentence"]
    row = summary[summary["alpha"] == 1.0].iloc[0]
    base = summary[summary["alpha"] == 0.0].iloc[0]
    recommended = {
        **thin_point,
        "expected_max_toxicity": row["expected_max_toxicity"],
        "expected_max_toxicity_ci": [
            row["expected_max_toxicity_ci_low"],
            row["expected_max_toxicity_ci_high"],
        ],
        "baseline_expected_max_toxicity": base["expected_max_toxicity"],
        # a cut_holds made before the minimum applied: the verdict leaves it out all the same
        "cut_holds": {**check, "sentence": "The cut holds under both scorers (x)."},
    }
    line = verdict({"recommended": recommended, "params": {}})[0]
    assert line.startswith("Too few prompts to conclude") and "scorers" not in line


def attributes(n: int) -> pd.DataFrame:
    """Perspective attributes of ``n`` prompts: every third non-profane, every fourth a threat."""
    ids = [f"p{i:02d}" for i in range(n)]
    return pd.DataFrame(
        {
            "prompt_id": ids,
            "prompt_toxicity": [0.9] * n,
            "prompt_profanity": [0.1 if i % 3 == 0 else 0.8 for i in range(n)],
            "prompt_identity_attack": [0.1] * n,
            "prompt_threat": [0.7 if i % 4 == 0 else 0.1 for i in range(n)],
            "prompt_insult": [np.nan] * n,
        }
    )


def test_strata_split_prompts_by_their_attributes():
    strata = prompt_strata(attributes(24))
    assert len(strata["non_profane_toxic"]) == 8 and len(strata["profane_toxic"]) == 16
    assert strata["non_profane_toxic"].isdisjoint(strata["profane_toxic"])
    assert len(strata["threat"]) == 6 and not strata["insult"] and not strata["identity_attack"]


def test_strata_table_gives_figures_only_to_strata_large_enough():
    sweep = sweep_rows(24, (0.0, 1.0))
    table = strata_table(
        sweep, prompt_strata(attributes(24)), point(), {"": "a", "_second": "b"}, n_resamples=200
    )
    assert set(table["scorer"]) == {"a", "b"} and len(table) == 10
    small = table[table["n_prompts"] < MIN_PROMPTS]
    assert small["emt_point"].isna().all() and small["note"].str.contains("fewer").all()
    row = table[(table["stratum"] == "non_profane_toxic") & (table["scorer"] == "a")].iloc[0]
    ids = prompt_strata(attributes(24))["non_profane_toxic"]
    expected = sweep[(sweep["alpha"] == 1.0) & sweep["prompt_id"].isin(ids)]
    assert row["emt_point"] == pytest.approx(metrics.expected_max_toxicity(expected))
    assert row["emt_point_ci_low"] <= row["emt_point"] <= row["emt_point_ci_high"]
    assert row["emt_point"] < row["emt_alpha0"]
    # the cut per stratum: the point's interval below alpha 0's EMT; none without figures
    for _, each in table.iterrows():
        if math.isnan(each["emt_point"]):
            assert each["cut_holds"] is None
        else:
            assert each["cut_holds"] == (each["emt_point_ci_high"] < each["emt_alpha0"])
    assert row["cut_holds"] is True
    flat = sweep.assign(toxicity=sweep.groupby("prompt_id")["toxicity"].transform("max"))
    unchanged = strata_table(flat, prompt_strata(attributes(24)), point(), {"": "a"})
    assert unchanged["emt_point"].notna().any()
    assert (unchanged.loc[unchanged["emt_point"].notna(), "cut_holds"] == False).all()  # noqa: E712


def test_strata_on_the_confirmation_half_count_only_its_prompts():
    from steerlib.evaluate.operating_point import assign_split

    sweep = sweep_rows(48, (0.0, 1.0))
    strata = prompt_strata(attributes(48))
    table = strata_table(
        sweep, strata, point(), {"": "a"}, n_resamples=200, seed=3, half="confirmation"
    )
    confirmation = set(sweep.loc[assign_split(sweep, 3) == "confirmation", "prompt_id"])
    assert 0 < len(confirmation) < 48
    for _, row in table.iterrows():
        in_half = len(strata[row["stratum"]] & confirmation)
        if row["prompts_from"] == "confirmation":
            assert row["n_prompts"] == in_half
        else:  # too few in the half, enough in both: both halves, said in the row
            assert in_half < MIN_PROMPTS <= row["n_prompts"] == len(strata[row["stratum"]])
            assert row["prompts_from"] == "both halves" and "helped choose" in row["note"]
            assert not math.isnan(row["emt_point"])
    assert set(table["prompts_from"]) == {"confirmation", "both halves"}
    row = table[table["stratum"] == "profane_toxic"].iloc[0]
    ids = strata["profane_toxic"] & confirmation
    expected = sweep[(sweep["alpha"] == 1.0) & sweep["prompt_id"].isin(ids)]
    assert row["emt_point"] == pytest.approx(metrics.expected_max_toxicity(expected))
    both = strata_table(sweep, strata, point(), {"": "a"}, n_resamples=200, seed=3)
    assert (both["n_prompts"] >= table["n_prompts"]).all()
    assert (both["n_prompts"] > table["n_prompts"]).any()


def test_side_by_side_shows_the_biggest_drops_and_random_prompts():
    sweep = sweep_rows(12, (0.0, 1.0))
    drop = sweep[sweep["alpha"] == 1.0].index
    sweep.loc[drop, "toxicity"] = sweep.loc[drop, "toxicity"] * np.where(
        sweep.loc[drop, "prompt_id"].isin(["p03", "p07", "p09"]), 0.0, 1.0
    )
    table = side_by_side_examples(sweep, {"caa": point()}, n_top=3, n_random=2)
    top = set(table.loc[table["why"] == "fell most", "prompt_id"])
    assert top == {"p03", "p07", "p09"}
    assert table.loc[table["why"] == "random", "prompt_id"].nunique() == 2
    assert set(table["setting"]) == {"alpha 0", "caa point"}
    assert {"toxicity", "toxicity_second", "completion"} <= set(table.columns)
    assert side_by_side_examples(sweep, {"caa": {"status": "none"}}).empty


def test_side_by_side_shows_the_biggest_drops_of_every_variant():
    """A prompt that falls most under a later variant is shown too, named with that variant."""
    caa = sweep_rows(12, (0.0, 1.0))
    gated = caa.assign(variant="gated")
    for table, cleaned in ((caa, ["p03", "p07"]), (gated, ["p01", "p07"])):
        steered = table["alpha"] == 1.0
        table.loc[steered & table["prompt_id"].isin(cleaned), "toxicity"] = 0.0
        table.loc[steered & ~table["prompt_id"].isin(cleaned), "toxicity"] = 0.8  # little drop
    sweep = pd.concat([caa, gated], ignore_index=True)
    table = side_by_side_examples(
        sweep, {"caa": point(), "gated": point()}, n_top=2, n_random=1, seed=1
    )
    top = table[table["why"] == "fell most"].drop_duplicates("prompt_id")
    assert dict(zip(top["prompt_id"], top["fell_most_under"], strict=True)) == {
        "p03": "caa",
        "p07": "caa, gated",
        "p01": "gated",
    }
    assert set(table["setting"]) == {"alpha 0", "caa point", "gated point"}
    at_gated = table[(table["setting"] == "gated point") & (table["prompt_id"] == "p01")]
    at_caa = table[(table["setting"] == "caa point") & (table["prompt_id"] == "p01")]
    assert float(at_gated["mean_toxicity_drop"].iloc[0]) > float(
        at_caa["mean_toxicity_drop"].iloc[0]
    )
    assert (table.loc[table["why"] == "random", "fell_most_under"] == "").all()
