"""The report's tables: step 06's products as pandas ``Styler`` objects a reader can scan.

Numbers get readable formats by what their column holds, headers short labels (the gating
measures' from :data:`steerlib.evaluate.gates.GATES`), and alpha 0 is shown once per subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from steerlib.evaluate.controls import tradeoff_rows
from steerlib.evaluate.gates import all_gates, held_out_gates, subset_gates
from steerlib.generate.steered import is_unsteered

__all__ = [
    "admissibility_table",
    "confirmation_table",
    "control_table",
    "examples_table",
    "format_value",
    "scorer_table",
    "scorer_validity_table",
    "settings_table",
    "side_by_side_table",
    "strata_view",
    "variants_table",
]


_LABELS = {
    "expected_max_toxicity": "EMT",
    "toxicity_probability": "tox. prob.",
    "mean_toxicity": "mean tox.",
    "mean_toxicity_ci": "mean tox. 95% CI",
    "expected_max_toxicity_ci": "EMT 95% CI",
    "benign_perplexity": "benign ppl",
    "distinct_2": "distinct-2",
    "distinct_2_ratio": "distinct-2 / alpha 0",
    "floor_share": "at floor",
    "floor_share_increase": "floor rise",
    "fluency": "fluency",
    "fluency_limit": "limit",
    "inadmissible_because": "fails",
}


def format_value(column: str, value: Any) -> str:
    """One cell, formatted by what its column holds."""
    if isinstance(value, list | tuple | np.ndarray):
        if len(value) == 2:
            return f"{format_value(column, value[0])}–{format_value(column, value[1])}"
        return ", ".join(str(v) for v in value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if not isinstance(value, float | np.floating):
        return str(value)
    value = float(value)
    if column == "alpha" or column.endswith("_alpha"):
        return f"{value:g}"
    if "p_value" in column or "q_value" in column:
        return f"{value:.2g}"
    if "perplexity" in column or column in ("fluency", "fluency_limit"):
        return f"{value:,.1f}" if abs(value) < 1e4 else f"{value:,.0f}"
    if column == "n" or column.startswith("n_"):
        return f"{value:,.0f}"
    return f"{value:.3f}"


def _styled(table: pd.DataFrame, caption: str | None = None) -> Any:
    """A table with its numbers formatted, no index, readable headers, wrapped text."""
    table = table.reset_index(drop=True)
    formats = {c: (lambda v, c=c: format_value(c, v)) for c in table.columns}
    labels = {**_LABELS, **{found.name: found.header for found in all_gates()}}
    styler = (
        table.style.format(formats)
        .hide(axis="index")
        .relabel_index([labels.get(c, c.replace("_", " ")) for c in table.columns], axis=1)
        .set_table_attributes('style="display: block; overflow-x: auto; max-width: 100%;"')
        .set_table_styles(
            [
                {"selector": "th", "props": "text-align: left; white-space: nowrap;"},
                {"selector": "td", "props": "text-align: right; padding: 2px 8px;"},
            ]
        )
    )
    if caption:
        styler = styler.set_caption(caption)
    return styler


def _one_unsteered(rows: pd.DataFrame) -> pd.DataFrame:
    """Alpha 0 once per subset: the unsteered rows, labelled, then the steered rows."""
    alpha = rows["alpha"].astype(float)
    zero = rows[np.isclose(alpha, 0.0)]
    # An alpha-0 row of a steered layer carries the held-out fluency measures; "none" may not.
    zero = zero.assign(_unsteered=is_unsteered(zero)).sort_values("_unsteered", kind="stable")
    zero = zero.drop(columns="_unsteered")
    unsteered = zero.drop_duplicates("subset")
    unsteered = unsteered.assign(direction="unsteered", layer=pd.NA)
    steered = rows[~np.isclose(alpha, 0.0) & ~is_unsteered(rows)]
    steered = steered.sort_values(["direction", "layer", "alpha"], kind="stable")
    return pd.concat([unsteered, steered], ignore_index=True)


def settings_table(summary: pd.DataFrame, *, split: str = "all") -> Any:
    """One row per setting: challenging toxicity beside benign fluency, alpha 0 once.

    Args:
        summary: Step 06's summary table (``Analysis.summary`` or ``summary.parquet``).
        split: Half of the prompts to show (``all``, ``selection`` or ``confirmation``).
    """
    table = summary[summary["split"] == split] if "split" in summary.columns else summary
    rows = tradeoff_rows(table, cost="perplexity")
    rows = _one_unsteered(rows)
    if "mean_toxicity_ci" in rows.columns:
        rows = rows.assign(mean_toxicity_ci=rows["mean_toxicity_ci"].map(_pair))
    columns = [
        "direction",
        "layer",
        "alpha",
        "expected_max_toxicity",
        "toxicity_probability",
        "mean_toxicity",
        "mean_toxicity_ci",
        *(f"benign_{found.name}" for found in subset_gates()),
        *(found.name for found in held_out_gates()),
        "distinct_2",
        "admissible",
    ]
    shown = rows[[c for c in columns if c in rows.columns]]
    return _styled(
        shown,
        f"Challenging prompts ({split}): toxicity; benign text: fluency. One row per setting.",
    )


def _pair(value: Any) -> Any:
    """A confidence interval as a 2-list (parquet gives arrays, JSON lists)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [float(v) for v in value]


def admissibility_table(summary: pd.DataFrame, *, split: str = "selection") -> Any:
    """The operating-point checks of every challenging steered setting on ``split``."""
    table = summary[(summary["split"] == split) & (summary["subset"] == "challenging")]
    if table.empty:
        table = summary[(summary["split"] == "all") & (summary["subset"] == "challenging")]
    rows = _one_unsteered(table)
    columns = [
        "direction",
        "layer",
        "alpha",
        "expected_max_toxicity",
        "fluency_measure",
        "fluency",
        "fluency_limit",
        "distinct_2_ratio",
        "floor_share",
        "floor_share_increase",
        "admissible",
        "inadmissible_because",
    ]
    return _styled(rows[[c for c in columns if c in rows.columns]])


def _with_ci_column(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each metric's interval in one column after the metric (EMT, mean tox.)."""
    table = table.copy()
    for metric in ("expected_max_toxicity", "mean_toxicity"):
        bounds = [f"{metric}_ci_low", f"{metric}_ci_high"]
        if set(bounds) <= set(table.columns) and metric in table.columns:
            table.insert(
                list(table.columns).index(metric) + 1,
                f"{metric}_ci",
                table[bounds].to_numpy().tolist(),
            )
            table = table.drop(columns=bounds)
    return table


def confirmation_table(table: pd.DataFrame) -> Any:
    """``Analysis.confirmation`` (alpha 0, the point, the random control), formatted."""
    if table.empty:
        return table
    table = _with_ci_column(table)
    hidden = ["split", "direction", "n_prompts"]
    n = table["n_prompts"].iloc[0] if "n_prompts" in table.columns else None
    half = table["split"].iloc[0] if "split" in table.columns else "all"
    caption = f"{half} half" + (f", {n} prompts per subset" if n is not None else "")
    return _styled(table.drop(columns=hidden, errors="ignore"), caption)


def control_table(control: pd.DataFrame, *, subset: str = "challenging") -> Any:
    """CAA against the random control on ``subset``, the columns a reader compares.

    Works for both comparisons of step 06: at equal alpha (``Analysis.control``) and at equal
    fluency (``Analysis.control_matched``, which adds ``control_alpha``).
    """
    if control.empty:
        return control
    rows = control[control["subset"] == subset] if "subset" in control.columns else control
    rows = rows[~np.isclose(rows["alpha"].astype(float), 0.0)].copy()
    for metric in ("mean_toxicity", "expected_max_toxicity"):
        low, high = f"delta_{metric}_ci_low", f"delta_{metric}_ci_high"
        if {low, high} <= set(rows.columns):
            rows[f"delta_{metric}_ci"] = [
                [a, b] for a, b in zip(rows.pop(low), rows.pop(high), strict=True)
            ]
    other = "control" if "mean_toxicity_control" in rows.columns else "random"
    columns = [
        "layer",
        "alpha",
        "control_alpha",
        "perplexity_caa",
        "perplexity_control",
        "mean_toxicity_caa",
        f"mean_toxicity_{other}",
        "delta_mean_toxicity",
        "delta_mean_toxicity_ci",
        "expected_max_toxicity_caa",
        f"expected_max_toxicity_{other}",
        "delta_expected_max_toxicity",
        "delta_expected_max_toxicity_ci",
        "p_value",
        "q_value",
        "beats_control",
    ]
    shown = rows.sort_values(["layer", "alpha"])[[c for c in columns if c in rows.columns]]
    renamed = {
        c: c.replace("mean_toxicity", "mean tox.").replace("expected_max_toxicity", "EMT")
        for c in shown.columns
    }
    styler = _styled(shown)
    return styler.relabel_index([renamed[c].replace("_", " ") for c in shown.columns], axis=1)


def variants_table(variants: pd.DataFrame) -> Any:
    """``Analysis.variants``: each steering variant's operating point, side by side, formatted.

    An empty table (a run of plain CAA only) is returned as it is; the notebook then shows no
    section.
    """
    if variants.empty:
        return variants
    table = _with_ci_column(variants)
    half = table["figures_from"].dropna()
    caption = f"figures from the {half.iloc[0]} half" if len(half) else None
    return _styled(table.drop(columns=["figures_from"], errors="ignore"), caption)


def scorer_table(validity: Mapping[str, Any]) -> Any:
    """The scorer against Perspective labels, one row per kind of text."""
    table = pd.DataFrame(validity).T.rename_axis("texts").reset_index()
    return _styled(table)


def scorer_validity_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """Each scorer against Perspective on held-out RTP texts, overall and per profanity stratum.

    Returns:
        One row per (scorer, stratum) with ``auc``, ``precision``, ``recall``, ``n`` and
        ``n_toxic``; empty when the run's prompts carry no Perspective labels.
    """
    by_scorer = dict(record.get("scorer_validity_by_scorer") or {})
    by_scorer.pop("texts", None)
    rows = [
        {"scorer": name, "stratum": stratum, **metrics}
        for name, strata in by_scorer.items()
        for stratum, metrics in strata.items()
    ]
    return pd.DataFrame(rows)


def strata_view(strata: pd.DataFrame, halves: str = "both halves") -> Any:
    """:attr:`Analysis.strata`, formatted: EMT at alpha 0 and at the point with intervals.

    Args:
        strata: The strata table.
        halves: Which prompts it counts (``summary.json``'s ``strata.halves``), for the caption.
    """
    if strata.empty:
        return strata
    table = strata.copy()
    for label in ("alpha0", "point"):
        table[f"EMT {label}"] = [
            "" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(
                table[f"emt_{label}"],
                table[f"emt_{label}_ci_low"],
                table[f"emt_{label}_ci_high"],
                strict=True,
            )
        ]
    columns = ["stratum", "scorer", "n_prompts", "EMT alpha0", "EMT point", "note"]
    if "cut_holds" in table.columns:  # strata made before these columns had none
        table["cut holds"] = [{True: "yes", False: "no"}.get(v, "") for v in table["cut_holds"]]
        columns[5:5] = ["cut holds", "prompts_from"]
    shown = table[[c for c in columns if c in table.columns]]
    return _styled(shown, f"EMT per stratum of the challenging prompts, {halves}, 95% CI")


def side_by_side_table(examples: pd.DataFrame) -> Any:
    """:attr:`Analysis.side_by_side`, formatted: each prompt once, its settings below it."""
    if examples.empty:
        return examples
    indexed = examples.drop(columns=["prompt_id"]).set_index(["prompt", "why", "setting"])
    formats = {c: (lambda v, c=c: format_value(c, v)) for c in indexed.columns}
    return indexed.style.format(formats).set_table_styles(
        [
            {"selector": "td", "props": "white-space: pre-wrap; text-align: left;"},
            {"selector": "th", "props": "text-align: left; vertical-align: top;"},
        ]
    )


def examples_table(examples: pd.DataFrame) -> Any:
    """:func:`example_completions`, formatted: each prompt once, completions in full."""
    if examples.empty:
        return examples
    indexed = examples.set_index(["prompt", "layer", "alpha"])
    formats = {c: (lambda v, c=c: format_value(c, v)) for c in indexed.columns}
    return (
        indexed.style.format(formats)
        .format_index(lambda v: f"{v:g}" if isinstance(v, float) else str(v), level=2)
        .set_table_styles(
            [
                {"selector": "td", "props": "white-space: pre-wrap; text-align: left;"},
                {"selector": "th", "props": "text-align: left; vertical-align: top;"},
            ]
        )
    )
