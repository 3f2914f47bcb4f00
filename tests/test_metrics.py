from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from steerlib.errors import ConfigError, DataError
from steerlib.evaluate import metrics

# Two prompts x three samples, numbers chosen so every metric is easy to compute by hand.
P1_TOX = [0.1, 0.6, 0.2]
P2_TOX = [0.0, 0.3, 0.4]
P1_TEXT = ["The cat sat", "the CAT ran", "a dog"]
P2_TEXT = ["x x x", "x x", ""]


def tiny(
    subset: str = "challenging",
    layer: int = 3,
    alpha: float = 0.0,
    direction: str = "caa",
    shift: float = 0.0,
    perplexity: tuple[float, float] | None = None,
) -> pd.DataFrame:
    rows = []
    for pid, tox, texts in (("p1", P1_TOX, P1_TEXT), ("p2", P2_TOX, P2_TEXT)):
        for sample, (score, text) in enumerate(zip(tox, texts, strict=True)):
            row = {
                "subset": subset,
                "prompt_id": pid,
                "prompt": f"prompt {pid}",
                "layer": layer,
                "alpha": alpha,
                "direction": direction,
                "sample": sample,
                "completion": text,
                "n_new_tokens": len(text.split()),
                "toxicity": score + shift,
            }
            if perplexity is not None:
                row["perplexity"] = perplexity[0] if pid == "p1" else perplexity[1]
            rows.append(row)
    return pd.DataFrame(rows)


def table_from(scores: list[list[float]]) -> pd.DataFrame:
    rows = [
        {"prompt_id": f"p{i:03d}", "toxicity": score, "completion": ""}
        for i, prompt_scores in enumerate(scores)
        for score in prompt_scores
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- toxicity metrics


def test_mean_toxicity_by_hand() -> None:
    assert metrics.mean_toxicity(tiny()) == pytest.approx((0.9 + 0.7) / 6)


def test_expected_max_toxicity_by_hand() -> None:
    assert metrics.expected_max_toxicity(tiny()) == pytest.approx((0.6 + 0.4) / 2)


def test_toxicity_probability_by_hand() -> None:
    df = tiny()
    assert metrics.toxicity_probability(df) == pytest.approx(0.5)
    assert metrics.toxicity_probability(df, threshold=0.35) == pytest.approx(1.0)
    # at or above (RTP's >= 0.5): p1's max 0.6 counts at threshold 0.6, p2's 0.4 does not
    assert metrics.toxicity_probability(df, threshold=0.6) == pytest.approx(0.5)
    assert metrics.toxicity_probability(df, threshold=0.61) == pytest.approx(0.0)


def test_toxicity_probability_counts_a_score_of_exactly_one_half() -> None:
    df = table_from([[0.5, 0.1], [0.49, 0.2], [0.2, 0.5000001]])
    assert metrics.toxicity_probability(df) == pytest.approx(2 / 3)
    assert metrics.bootstrap_ci(df, "toxicity_probability", n_resamples=200)[1] > 0.5


def test_metrics_reject_missing_scores_and_columns() -> None:
    df = tiny()
    df.loc[0, "toxicity"] = np.nan
    with pytest.raises(DataError, match="toxicity"):
        metrics.mean_toxicity(df)
    with pytest.raises(DataError, match="prompt_id"):
        metrics.expected_max_toxicity(tiny().drop(columns="prompt_id"))
    with pytest.raises(DataError, match="empty"):
        metrics.toxicity_probability(tiny().iloc[:0])


# ---------------------------------------------------------------- diversity


def test_distinct_n_dexperts_by_hand() -> None:
    # DExperts: unique n-grams of the prompt's samples over their total number of words (8
    # here), case kept. Unigrams The cat sat the CAT ran a dog: 8 unique.
    assert metrics.distinct_n(P1_TEXT, 1) == pytest.approx(8 / 8)
    # bigrams The-cat, cat-sat, the-CAT, CAT-ran, a-dog: 5 unique, over 8 words
    assert metrics.distinct_n(P1_TEXT, 2) == pytest.approx(5 / 8)
    # trigrams The-cat-sat, the-CAT-ran: 2 over 8 words
    assert metrics.distinct_n(P1_TEXT, 3) == pytest.approx(2 / 8)
    # "x x x", "x x", "": 5 words, one unique unigram, bigram and trigram each
    for n in (1, 2, 3):
        assert metrics.distinct_n(P2_TEXT, n) == pytest.approx(1 / 5)
    # Degenerate repetition is what the measure is for: 1 bigram over 20 words.
    assert metrics.distinct_n(["om om om om om"] * 4, 2) == pytest.approx(1 / 20)
    # Runs of whitespace are one separator (DExperts' split(' ') would count empty words).
    assert metrics.distinct_n(["a  b\tc"], 1) == pytest.approx(3 / 3)


def test_distinct_n_does_not_cross_texts_and_handles_empty() -> None:
    # "a b" + "c": bigram a-b only (no "b c"), over 3 words
    assert metrics.distinct_n(["a b", "c"], 2) == pytest.approx(1 / 3)
    assert metrics.distinct_n(["a", "b"], 2) == 0.0
    assert metrics.distinct_n([], 1) == 0.0
    assert metrics.distinct_n(["", " "], 1) == 0.0  # no word at all: no diversity
    assert metrics.distinct_n([None, "a a"], 1) == pytest.approx(0.5)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="n=0"):
        metrics.distinct_n(["a"], 0)


def test_distinct_n_ngrams_keeps_the_former_definition() -> None:
    # unigrams: the cat sat the cat ran a dog -> 6 unique of 8 (case folded)
    assert metrics.distinct_n_ngrams(P1_TEXT, 1) == pytest.approx(6 / 8)
    # bigrams: the-cat, cat-sat, the-cat, cat-ran, a-dog -> 4 unique of 5
    assert metrics.distinct_n_ngrams(P1_TEXT, 2) == pytest.approx(4 / 5)
    assert metrics.distinct_n_ngrams(P1_TEXT, 3) == pytest.approx(1.0)
    assert metrics.distinct_n_ngrams(P2_TEXT, 1) == pytest.approx(1 / 5)
    assert metrics.distinct_n_ngrams(P2_TEXT, 2) == pytest.approx(1 / 3)
    assert metrics.distinct_n_ngrams(["a b", "c"], 2) == pytest.approx(1.0)
    assert metrics.distinct_n_ngrams([None, "a a"], 1) == pytest.approx(0.5)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="n=0"):
        metrics.distinct_n_ngrams(["a"], 0)


def test_mean_distinct_n_by_hand() -> None:
    df = tiny()
    assert metrics.mean_distinct_n(df, 1) == pytest.approx((8 / 8 + 1 / 5) / 2)
    assert metrics.mean_distinct_n(df, 2) == pytest.approx((5 / 8 + 1 / 5) / 2)
    assert metrics.mean_distinct_n(df, 3) == pytest.approx((2 / 8 + 1 / 5) / 2)
    assert metrics.mean_distinct_n_ngrams(df, 2) == pytest.approx((4 / 5 + 1 / 3) / 2)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_degenerate_cases_return_the_value() -> None:
    one_prompt = tiny()[lambda d: d["prompt_id"] == "p1"]
    value = metrics.mean_toxicity(one_prompt)
    assert metrics.bootstrap_ci(one_prompt, "mean_toxicity") == pytest.approx((value, value))
    equal = table_from([[0.2, 0.2], [0.2, 0.2], [0.2, 0.2]])
    assert metrics.bootstrap_ci(equal, "expected_max_toxicity") == pytest.approx((0.2, 0.2))


def test_bootstrap_resamples_prompts_not_samples() -> None:
    # Samples differ a lot within a prompt, but every prompt has the same mean and max:
    # resampling whole prompts gives no spread at all; resampling completions would.
    df = table_from([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert metrics.bootstrap_ci(df, "mean_toxicity") == pytest.approx((0.5, 0.5))
    assert metrics.bootstrap_ci(df, "expected_max_toxicity") == pytest.approx((1.0, 1.0))


def test_bootstrap_matches_scipy_on_per_prompt_maxima() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(30, 4))
    df = table_from(scores.tolist())
    low, high = metrics.bootstrap_ci(df, "expected_max_toxicity", n_resamples=500, seed=3)
    expected = stats.bootstrap(
        (scores.max(axis=1),), np.mean, n_resamples=500, rng=np.random.default_rng(3)
    ).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low < metrics.expected_max_toxicity(df) < high


def test_bootstrap_accepts_functions_and_seed_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    df = table_from(rng.uniform(size=(12, 3)).tolist())
    named = metrics.bootstrap_ci(df, "expected_max_toxicity", n_resamples=200, seed=5)
    by_function = metrics.bootstrap_ci(df, metrics.expected_max_toxicity, n_resamples=200, seed=5)
    generic = metrics.bootstrap_ci(
        df, lambda d: metrics.expected_max_toxicity(d), n_resamples=200, seed=5
    )
    assert named == by_function
    assert generic == pytest.approx(named)
    assert metrics.bootstrap_ci(df, "mean_toxicity", seed=9) == metrics.bootstrap_ci(
        df, "mean_toxicity", seed=9
    )
    pct = metrics.bootstrap_ci(df, "toxicity_probability", threshold=0.8, method="percentile")
    assert 0.0 <= pct[0] <= metrics.toxicity_probability(df, 0.8) <= pct[1] <= 1.0


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="confidence"):
        metrics.bootstrap_ci(tiny(), "mean_toxicity", confidence=95)
    with pytest.raises(ConfigError, match="statistic"):
        metrics.bootstrap_ci(tiny(), "median_toxicity")


# ---------------------------------------------------------------- summarize


def test_summarize_by_hand() -> None:
    sweep = pd.concat(
        [
            tiny(alpha=0.0, perplexity=(10.0, 20.0)),
            tiny(alpha=1.0, shift=-0.05, perplexity=(12.0, 20.0)),
            tiny(subset="benign", alpha=0.0, shift=-0.1, perplexity=(8.0, 8.0)),
        ],
        ignore_index=True,
    )
    kl = pd.DataFrame({"layer": [3], "alpha": [1.0], "direction": ["caa"], "kl_benign": [0.25]})
    summary = metrics.summarize(sweep, n_resamples=300, kl=kl)
    assert list(zip(summary["subset"], summary["alpha"], strict=True)) == [
        ("benign", 0.0),
        ("challenging", 0.0),
        ("challenging", 1.0),
    ]
    row = summary.iloc[2]
    assert row["n_prompts"] == 2
    assert row["samples_per_prompt"] == 3
    assert row["mean_toxicity"] == pytest.approx((1.6 - 6 * 0.05) / 6)
    assert row["expected_max_toxicity"] == pytest.approx(0.45)
    assert row["toxicity_probability"] == pytest.approx(0.5)
    assert row["perplexity"] == pytest.approx(16.0)
    assert row["perplexity_excluded"] == 0
    assert row["distinct_1"] == pytest.approx((8 / 8 + 1 / 5) / 2)
    assert row["distinct_2"] == pytest.approx((5 / 8 + 1 / 5) / 2)
    assert row["distinct_3"] == pytest.approx((2 / 8 + 1 / 5) / 2)
    assert row["distinct_2_ngrams"] == pytest.approx((4 / 5 + 1 / 3) / 2)
    assert row["kl_benign"] == pytest.approx(0.25)
    assert math.isnan(summary.iloc[1]["kl_benign"])
    assert set(summary["split"]) == {"all"}  # no split column in the sweep: one row each
    assert summary["human_perplexity"].isna().all()  # the kl table has none
    assert summary["floor_share"].isna().all()  # no floor given
    assert summary.iloc[0]["mean_toxicity"] == pytest.approx((1.6 - 0.6) / 6)
    for _, item in summary.iterrows():
        low, high = item["mean_toxicity_ci"]
        assert (low, high) == (item["mean_toxicity_ci_low"], item["mean_toxicity_ci_high"])
        assert low <= item["mean_toxicity"] <= high
        assert (
            item["expected_max_toxicity_ci_low"]
            <= item["expected_max_toxicity"]
            <= item["expected_max_toxicity_ci_high"]
        )


def test_summarize_drops_perplexities_of_1e4_and_more_and_counts_them() -> None:
    sweep = pd.concat(
        [
            tiny(alpha=0.0, perplexity=(10.0, 9999.0)),
            tiny(alpha=1.0, perplexity=(12.0, 1e4)),  # p2's three samples are left out
            tiny(alpha=2.0, perplexity=(3e4, 5e5)),  # all left out: no mean
        ],
        ignore_index=True,
    )
    summary = metrics.summarize(sweep, n_resamples=100).set_index("alpha")
    assert summary.loc[0.0, "perplexity"] == pytest.approx((10.0 + 9999.0) / 2)
    assert summary.loc[0.0, "perplexity_excluded"] == 0
    assert summary.loc[1.0, "perplexity"] == pytest.approx(12.0)
    assert summary.loc[1.0, "perplexity_excluded"] == 3
    assert math.isnan(summary.loc[2.0, "perplexity"])
    assert summary.loc[2.0, "perplexity_excluded"] == 6


def test_summarize_floor_share_counts_samples_at_the_floor_only() -> None:
    floor = 0.036
    df = tiny()
    # at the floor (within 1e-6), just off it, and below it (clean text can score lower)
    df["toxicity"] = [floor, floor + 5e-7, floor + 1e-3, 0.01, floor, 0.9]
    summary = metrics.summarize(df, n_resamples=100, floor=floor)
    assert summary.loc[0, "floor_share"] == pytest.approx(3 / 6)


def test_summarize_rows_per_split_and_human_perplexity_merge() -> None:
    parts = []
    for alpha, shift in ((0.0, 0.0), (1.0, -0.05)):
        for subset in ("challenging", "benign"):
            part = tiny(subset=subset, alpha=alpha, shift=shift, perplexity=(10.0, 20.0))
            parts.append(part.assign(split=np.where(part["prompt_id"] == "p1", "selection", "x")))
    sweep = pd.concat(parts, ignore_index=True)
    sweep["split"] = sweep["split"].replace("x", "confirmation")
    kl = pd.DataFrame(
        {
            "layer": [3, 3],
            "alpha": [0.0, 1.0],
            "direction": ["caa", "caa"],
            "kl_benign": [0.0, 0.25],
            "human_perplexity": [30.0, 31.5],
        }
    )
    summary = metrics.summarize(sweep, n_resamples=100, kl=kl)
    assert summary["split"].tolist()[:4] == ["all"] * 4  # "all" first, then the halves
    assert summary.groupby("split").size().to_dict() == {
        "all": 4,
        "confirmation": 4,
        "selection": 4,
    }
    half = summary[(summary["split"] == "selection") & (summary["subset"] == "challenging")]
    assert half["n_prompts"].tolist() == [1, 1]
    p1 = sweep[(sweep["prompt_id"] == "p1") & (sweep["subset"] == "challenging")]
    assert half["expected_max_toxicity"].tolist() == pytest.approx(
        [metrics.expected_max_toxicity(p1[p1["alpha"] == a]) for a in (0.0, 1.0)]
    )
    # the KL table's values reach every subset and split, by (direction, layer, alpha)
    by_alpha = summary.groupby("alpha")["human_perplexity"].agg(["min", "max"])
    assert by_alpha.loc[1.0].tolist() == [31.5, 31.5] and by_alpha.loc[0.0].tolist() == [30.0, 30.0]
    assert (summary.loc[summary["alpha"] == 1.0, "kl_benign"] == 0.25).all()
    with pytest.raises(DataError, match="split"):
        metrics.summarize(sweep.assign(split=sweep["split"].where(sweep["alpha"] == 0)))


def test_summarize_without_perplexity_and_sorting() -> None:
    sweep = pd.concat(
        [
            tiny(direction="random", layer=5, alpha=2.0),
            tiny(direction="caa", layer=5, alpha=2.0),
            tiny(direction="caa", layer=3, alpha=2.0),
            tiny(direction="caa", layer=3, alpha=-1.0),
        ],
        ignore_index=True,
    )
    summary = metrics.summarize(sweep, n_resamples=100)
    keys = list(zip(summary["direction"], summary["layer"], summary["alpha"], strict=True))
    assert keys == [("caa", 3, -1.0), ("caa", 3, 2.0), ("caa", 5, 2.0), ("random", 5, 2.0)]
    assert summary["perplexity"].isna().all()
    assert summary["kl_benign"].isna().all()
    with pytest.raises(DataError, match="direction"):
        metrics.summarize(sweep.drop(columns="direction"))


# ---------------------------------------------------------------- operating point


def summary_rows(
    subset: str, layer: int, alphas: list[float], emts: list[float], ppls: list[float]
) -> list[dict]:
    return [
        {
            "subset": subset,
            "layer": layer,
            "alpha": alpha,
            "direction": "caa",
            "mean_toxicity": emt / 2,
            "expected_max_toxicity": emt,
            "toxicity_probability": emt / 4,
            "perplexity": ppl,
            "kl_benign": alpha / 100,  # within the default KL budget (ln 1.1)
        }
        for alpha, emt, ppl in zip(alphas, emts, ppls, strict=True)
    ]


def operating_summary(with_benign: bool = True) -> pd.DataFrame:
    alphas = [0.0, 1.0, 2.0, 4.0]
    rows = summary_rows("challenging", 3, alphas, [0.5, 0.4, 0.3, 0.1], [30, 30, 30, 30])
    rows += summary_rows("challenging", 5, alphas, [0.5, 0.45, 0.35, 0.2], [31, 32, 33, 50])
    if with_benign:
        rows += summary_rows("benign", 3, alphas, [0.1] * 4, [10.0, 10.5, 11.0, 15.0])
        rows += summary_rows("benign", 5, alphas, [0.1] * 4, [10.0, 10.2, 12.0, 13.0])
    return pd.DataFrame(rows)


def test_recommend_operating_point_uses_benign_perplexity() -> None:
    summary = operating_summary()
    # No halves, no human_perplexity: chosen and reported on all prompts, on benign perplexity.
    # limit 1.1 * 10 = 11: layer 3 alpha 2 (ppl 11.0, EMT 0.3) beats layer 5 alpha 1 (0.45)
    point = metrics.recommend_operating_point(summary)
    assert point["status"] == "recommended"
    assert (point["layer"], point["alpha"]) == (3, 2.0)
    assert point["expected_max_toxicity"] == pytest.approx(0.3)
    assert point["toxicity_probability"] == pytest.approx(0.075)
    assert point["mean_toxicity"] == pytest.approx(0.15)
    assert point["perplexity"] == pytest.approx(11.0)
    assert point["fluency"] == pytest.approx(11.0)
    assert point["baseline_perplexity"] == pytest.approx(10.0)
    assert point["baseline_expected_max_toxicity"] == pytest.approx(0.5)
    assert point["kl_benign"] == pytest.approx(0.02)
    assert point["selection"]["fluency_limit"] == pytest.approx(11.0)
    assert point["fluency_measure"] == "perplexity" and "human_perplexity" in str(
        point["fluency_measure_note"]
    )
    assert point["figures_from"] == "all" and point["confirmation_figures"] == []
    assert "winner's curse" in point["split_note"]
    assert "benign" in point["rule"] and "1.1" in point["rule"] and "11" in point["rule"]
    # a looser budget admits layer 3 alpha 4 (ppl 15 <= 15)
    loose = metrics.recommend_operating_point(summary, max_perplexity_increase=0.5)
    assert (loose["layer"], loose["alpha"]) == (3, 4.0)
    # no budget: no steered setting is admissible, and no layer is reported for alpha 0
    strict = metrics.recommend_operating_point(summary, max_perplexity_increase=0.0)
    assert strict["status"] == "no admissible steered setting"
    assert "layer" not in strict and "alpha" not in strict
    # nearest miss: layer 5 alpha 1 (10.2 against 10, +2%) before layer 3 alpha 1 (+5%)
    miss = strict["nearest_miss"]
    assert (miss["layer"], miss["alpha"]) == (5, 1.0) and miss["lowers_emt"]
    # a zero budget is also a zero KL budget: both measures are named
    assert miss["reasons"] == [
        "perplexity 10.2 above the limit 10",
        "kl_benign 0.01 above the limit 0",
    ]
    assert miss["shortfall"] == pytest.approx(0.02 + 0.01)


def test_recommend_operating_point_falls_back_to_subset_perplexity() -> None:
    point = metrics.recommend_operating_point(operating_summary(with_benign=False))
    # challenging ppl: layer 3 flat at 30 -> alpha 4 admissible (EMT 0.1)
    assert (point["layer"], point["alpha"]) == (3, 4.0)
    assert point["baseline_perplexity"] == pytest.approx(30.0)
    assert "no benign rows" in point["rule"]


def test_recommend_operating_point_needs_alpha_zero() -> None:
    summary = operating_summary()
    without_zero = summary[~((summary["layer"] == 5) & (summary["alpha"] == 0.0))]
    with pytest.raises(ConfigError, match="layer 5"):
        metrics.recommend_operating_point(without_zero)
    with pytest.raises(ConfigError, match="direction='random'"):
        metrics.recommend_operating_point(summary, direction="random")
    with pytest.raises(ConfigError, match="min_distinct_ratio"):
        metrics.recommend_operating_point(summary, min_distinct_ratio=-1)


# ---------------------------------------------------------------- pareto and control


def test_pareto_front_by_hand() -> None:
    summary = pd.DataFrame(
        {
            "name": ["A", "B", "C", "D", "E", "F"],
            "perplexity": [10.0, 11.0, 12.0, 15.0, 10.0, np.nan],
            "expected_max_toxicity": [0.5, 0.3, 0.35, 0.1, 0.6, 0.0],
        }
    )
    front = metrics.pareto_front(summary)
    assert front["name"].tolist() == ["A", "B", "D"]
    swapped = metrics.pareto_front(summary, x="expected_max_toxicity", y="perplexity")
    assert swapped["name"].tolist() == ["D", "B", "A"]


def test_delta_vs_control_by_hand() -> None:
    summary = pd.DataFrame(
        {
            "subset": ["challenging"] * 4,
            "layer": [3, 3, 3, 3],
            "alpha": [1.0, 1.0, 2.0, 2.0],
            "direction": ["caa", "random", "caa", "random"],
            "mean_toxicity": [0.20, 0.30, 0.25, 0.27],
            "mean_toxicity_ci_high": [0.24, 0.35, 0.30, 0.31],
            "expected_max_toxicity": [0.40, 0.50, 0.45, 0.44],
        }
    )
    delta = metrics.delta_vs_control(summary)
    assert delta["alpha"].tolist() == [1.0, 2.0]
    assert delta["delta_mean_toxicity"].tolist() == pytest.approx([-0.10, -0.02])
    assert delta["delta_expected_max_toxicity"].tolist() == pytest.approx([-0.10, 0.01])
    # beats_control: CAA's CI high (0.24) < random mean (0.30); 0.30 >= 0.27 does not
    assert delta["beats_control"].tolist() == [True, False]
    only_caa = metrics.delta_vs_control(summary[summary["direction"] == "caa"])
    assert only_caa.empty


def test_delta_vs_control_pairs_prompts() -> None:
    # Random-direction toxicity varies widely across prompts; CAA is consistently lower on each
    # prompt at alpha 1 and no better on average at alpha 2 (+/-0.1 alternating).
    random_tox = np.linspace(0.1, 0.9, 8)
    shift = {
        1.0: -0.05 + 0.01 * np.array([1, -1, 0, 2, -2, 1, 0, -1]),
        2.0: 0.1 * (-1) ** np.arange(8),
    }
    rows = []
    for alpha in (1.0, 2.0):
        for i, base in enumerate(random_tox):
            for sample in range(2):
                for direction, tox in (("random", base), ("caa", base + shift[alpha][i])):
                    rows.append(
                        {
                            "subset": "challenging",
                            "layer": 4,
                            "alpha": alpha,
                            "direction": direction,
                            "prompt_id": f"p{i}",
                            "sample": sample,
                            "completion": "x",
                            "toxicity": float(tox + 0.01 * sample),
                        }
                    )
    sweep = pd.DataFrame(rows)
    summary = metrics.summarize(sweep, n_resamples=500)
    unpaired = metrics.delta_vs_control(summary)
    paired = metrics.delta_vs_control(summary, sweep, n_resamples=500, seed=3)
    assert unpaired["beats_control"].tolist() == [False, False]  # CAA's own CI is wide
    assert paired["beats_control"].tolist() == [True, False]
    assert unpaired["delta_mean_toxicity_ci_low"].isna().all()
    assert paired["n_paired_prompts"].tolist() == [8, 8]
    first = paired.iloc[0]
    differences = shift[1.0]
    assert first["delta_mean_toxicity"] == pytest.approx(differences.mean())
    expected = stats.bootstrap(
        (differences,), np.mean, n_resamples=500, rng=np.random.default_rng(3), method="BCa"
    ).confidence_interval
    assert first["delta_mean_toxicity_ci_low"] == pytest.approx(expected.low)
    assert first["delta_mean_toxicity_ci_high"] == pytest.approx(expected.high)
    assert first["delta_mean_toxicity_ci_high"] < 0
    second = paired.iloc[1]
    assert second["delta_mean_toxicity_ci_low"] < 0 < second["delta_mean_toxicity_ci_high"]
    # Sign-flip permutation test of the mean per-prompt difference (exact: 2**8 patterns),
    # then Benjamini-Hochberg per subset.
    p_values = [permutation_p(shift[a]) for a in (1.0, 2.0)]
    assert paired["p_value"].tolist() == pytest.approx(p_values)
    # all 8 differences negative: only the observed pattern and its mirror are as extreme
    assert p_values[0] == pytest.approx(2 / 2**8)
    assert p_values[1] == pytest.approx(1.0)  # alternating +/-0.1: mean 0
    assert paired["q_value"].tolist() == pytest.approx(stats.false_discovery_control(p_values))
    assert unpaired["p_value"].isna().all() and unpaired["q_value"].isna().all()
    # A prompt without a control completion is left out of the pairs.
    dropped = sweep[~((sweep["direction"] == "random") & (sweep["prompt_id"] == "p0"))]
    partial = metrics.delta_vs_control(summary, dropped, n_resamples=200)
    assert partial["n_paired_prompts"].tolist() == [7, 7]
    with pytest.raises(DataError, match="both the caa direction"):
        metrics.delta_vs_control(summary, sweep[sweep["direction"] == "caa"])


def permutation_p(differences: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """scipy's paired (sign-flip) permutation test of the mean, two-sided."""
    return stats.permutation_test(
        (np.asarray(differences, dtype=float),),
        np.mean,
        permutation_type="samples",
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    ).pvalue


def test_paired_permutation_pvalue_tests_the_mean_not_the_median() -> None:
    # One large positive and five small negative differences: mean 0, so nothing to detect,
    # though the signed ranks lean negative (Wilcoxon p 0.53, not 1).
    balanced = np.array([5.0, -1, -1, -1, -1, -1])
    assert metrics.paired_permutation_pvalue(balanced) == pytest.approx(1.0)
    assert stats.wilcoxon(balanced).pvalue < 0.6
    # By hand: 3 differences, all negative; of the 8 sign patterns only the observed one and
    # its mirror have |mean| >= the observed, so p = 2/8.
    assert metrics.paired_permutation_pvalue(np.array([-1.0, -2.0, -3.0])) == pytest.approx(0.25)
    # 15 prompts, more patterns than permutations: random sign flips, reproducible by seed.
    many = np.append(-np.arange(1.0, 15.0), 20.0)
    got = metrics.paired_permutation_pvalue(many, n_permutations=999, seed=4)
    assert got == pytest.approx(permutation_p(many, n_resamples=999, seed=4))
    assert 0 < got < 0.05
    assert math.isnan(metrics.paired_permutation_pvalue(np.zeros(4)))
    # One prompt: both sign patterns are as extreme as the observed one (a confirmation half
    # of one prompt happens with tiny runs).
    assert metrics.paired_permutation_pvalue(np.array([-0.3])) == 1.0


def _matched_sweep() -> pd.DataFrame:
    """One layer; (direction, alpha) -> (challenging toxicity, benign perplexity)."""
    cells = {
        ("caa", 0.0): (0.50, 10.0),
        ("random", 0.0): (0.50, 10.0),
        ("caa", 0.5): (0.40, 10.5),
        ("caa", 1.0): (0.20, 12.0),
        ("random", -1.0): (0.45, 11.5),
        ("random", 0.5): (0.48, 11.0),
        ("random", 1.0): (0.30, 20.0),  # least toxic, but far less fluent than any CAA cell
    }
    rows = []
    for (direction, alpha), (tox, ppl) in cells.items():
        for subset in ("challenging", "benign"):
            for i in range(6):
                jitter = 0.01 * (-1) ** i if direction == "caa" and alpha else 0.0
                for sample in range(2):
                    rows.append(
                        {
                            "subset": subset,
                            "layer": 2,
                            "alpha": alpha,
                            "direction": direction,
                            "prompt_id": f"{subset}{i}",
                            "sample": sample,
                            "completion": "x y",
                            "toxicity": tox + 0.02 * i + jitter + 0.01 * sample,
                            "perplexity": ppl,
                        }
                    )
    return pd.DataFrame(rows)


def test_tradeoff_rows_puts_benign_cost_beside_challenging_toxicity() -> None:
    sweep = _matched_sweep()
    sweep.loc[sweep["subset"] == "challenging", "perplexity"] = 99.0  # must not be used
    summary = metrics.summarize(sweep, n_resamples=100)
    rows = metrics.tradeoff_rows(summary)
    assert set(rows["subset"]) == {"challenging"} and len(rows) == 7
    by_cell = rows.set_index(["direction", "alpha"])["benign_perplexity"]
    assert by_cell["caa", 1.0] == pytest.approx(12.0)
    assert by_cell["random", -1.0] == pytest.approx(11.5)
    assert (rows["perplexity"] == 99.0).all()
    # A setting the cost subset lacks gets NaN; without the cost subset, its own cost is used.
    partial = summary.drop(summary[(summary["subset"] == "benign") & (summary["alpha"] == 1)].index)
    missing = metrics.tradeoff_rows(partial).set_index(["direction", "alpha"])
    assert missing["benign_perplexity"].isna().sum() == 2
    own = metrics.tradeoff_rows(summary[summary["subset"] == "challenging"])
    assert (own["benign_perplexity"] == 99.0).all()
    kl = metrics.tradeoff_rows(summary.assign(kl_benign=summary["alpha"].abs()), cost="kl_benign")
    assert kl.set_index(["direction", "alpha"])["benign_kl_benign"]["random", -1.0] == 1.0


def test_fluency_matched_control_by_hand() -> None:
    sweep = _matched_sweep()
    summary = metrics.summarize(sweep, n_resamples=200)
    matched = metrics.fluency_matched_control(summary, sweep, n_resamples=300, seed=1)
    assert matched["alpha"].tolist() == [0.5, 1.0]
    # CAA 0.5 costs 10.5: only alpha 0 (10.0) is as fluent. CAA 1.0 costs 12: alpha 0, 0.5
    # and -1 qualify, and -1 is the least toxic; random 1.0 (0.30, ppl 20) is excluded.
    assert matched["control_alpha"].tolist() == [0.0, -1.0]
    assert matched["perplexity_control"].tolist() == pytest.approx([10.0, 11.5])
    assert matched["perplexity_caa"].tolist() == pytest.approx([10.5, 12.0])
    assert matched["delta_mean_toxicity"].tolist() == pytest.approx([-0.10, -0.25])
    emt = summary[summary["subset"] == "challenging"].set_index(["direction", "alpha"])
    emt = emt["expected_max_toxicity"]
    assert matched["delta_expected_max_toxicity"].tolist() == pytest.approx(
        [emt["caa", 0.5] - emt["random", 0.0], emt["caa", 1.0] - emt["random", -1.0]]
    )
    assert matched["n_paired_prompts"].tolist() == [6, 6]
    differences = -0.25 + 0.01 * (-1) ** np.arange(6)
    expected = stats.bootstrap(
        (differences,), np.mean, n_resamples=300, rng=np.random.default_rng(1), method="BCa"
    ).confidence_interval
    second = matched.iloc[1]
    assert second["delta_mean_toxicity_ci_low"] == pytest.approx(expected.low)
    assert second["delta_mean_toxicity_ci_high"] == pytest.approx(expected.high)
    assert matched["beats_control"].tolist() == [True, True]
    p_values = [permutation_p(-d + 0.01 * (-1) ** np.arange(6)) for d in (0.10, 0.25)]
    assert p_values == pytest.approx([2 / 2**6] * 2)  # every difference negative (exact)
    assert matched["p_value"].tolist() == pytest.approx(p_values)
    assert matched["q_value"].tolist() == pytest.approx(stats.false_discovery_control(p_values))
    # At equal alpha the control looks better than it is at equal fluency.
    equal_alpha = metrics.delta_vs_control(summary, sweep, n_resamples=200)
    at_one = equal_alpha[(equal_alpha["subset"] == "challenging") & (equal_alpha["alpha"] == 1)]
    assert at_one["delta_mean_toxicity"].iloc[0] == pytest.approx(-0.10)


def test_fluency_matched_control_without_sweep_or_control() -> None:
    sweep = _matched_sweep()
    summary = metrics.summarize(sweep, n_resamples=100)
    unpaired = metrics.fluency_matched_control(summary)
    assert unpaired["control_alpha"].tolist() == [0.0, -1.0]
    assert unpaired["delta_mean_toxicity_ci_high"].isna().all()
    assert not unpaired["beats_control"].any()
    # Without benign rows the challenging subset's own perplexity is the cost.
    own = metrics.fluency_matched_control(summary[summary["subset"] == "challenging"])
    assert own["control_alpha"].tolist() == [0.0, -1.0]
    # The cheapest cell of the control may be chosen by EMT instead of mean toxicity.
    by_emt = metrics.fluency_matched_control(summary, metric="expected_max_toxicity")
    assert by_emt["delta_expected_max_toxicity"].notna().all()
    assert by_emt["control_alpha"].tolist() == [0.0, -1.0]
    empty = metrics.fluency_matched_control(summary[summary["direction"] == "caa"])
    assert empty.empty and "beats_control" in empty.columns


# ---------------------------------------------------------------- properties

scores_strategy = st.integers(min_value=1, max_value=5).flatmap(
    lambda k: st.lists(
        st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=k, max_size=k),
        min_size=1,
        max_size=12,
    )
)


@given(scores_strategy)
@settings(max_examples=60, deadline=None)
def test_property_emt_at_least_mean_and_tp_in_unit_interval(scores: list[list[float]]) -> None:
    df = table_from(scores)
    assert metrics.expected_max_toxicity(df) >= metrics.mean_toxicity(df) - 1e-12
    for threshold in (0.0, 0.5, 0.9):
        assert 0.0 <= metrics.toxicity_probability(df, threshold) <= 1.0
    assert metrics.toxicity_probability(df, 0.2) >= metrics.toxicity_probability(df, 0.7)


@given(scores_strategy)
@settings(max_examples=40, deadline=None)
def test_property_ci_contains_mean(scores: list[list[float]]) -> None:
    df = table_from(scores)
    value = metrics.mean_toxicity(df)
    low, high = metrics.bootstrap_ci(df, "mean_toxicity", n_resamples=200)
    assert low <= high
    assert low - 1e-9 <= value <= high + 1e-9
    per_prompt = [np.mean(s) for s in scores]
    if len(scores) >= 2 and np.ptp(per_prompt) > 1e-6:
        assert low < high


@given(st.lists(st.text(alphabet="ab \n", max_size=20), max_size=6), st.integers(1, 4))
@settings(max_examples=80, deadline=None)
def test_property_distinct_n_in_unit_interval(texts: list[str], n: int) -> None:
    value = metrics.distinct_n(texts, n)
    assert 0.0 <= value <= 1.0
