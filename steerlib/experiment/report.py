"""What a finished run says, for a reader: the verdict, formatted tables, the HTML report.

:func:`verdict` turns a run's ``summary.json`` into three sentences: does steering cut toxicity
here (and on which half of the prompts), at what fluency cost, and against the random control.
The chain runner prints them at the end of ``python -m steerlib run``; notebook 06 shows them
first (:func:`verdict_markdown`). The table functions return pandas ``Styler`` objects with
readable number formats (alpha 0 shown once); :func:`render_report` turns the executed notebook
06 into ``report.html`` without code cells.

Over 500 lines because the verdict's three lines (effect, every fluency measure, control, both
scorers, thin evidence) and the report's tables are one reader of summary.json; splitting it
belongs to the layered-subpackage work (issue 24), which moves these pieces into their own
modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlib._io import atomic_write_text

__all__ = [
    "admissibility_table",
    "confirmation_table",
    "control_table",
    "example_completions",
    "examples_table",
    "heading",
    "judge_name",
    "render_report",
    "report_title",
    "scorer_table",
    "scorer_validity_table",
    "settings_table",
    "side_by_side_table",
    "strata_view",
    "variants_table",
    "verdict",
    "verdict_markdown",
]

_MEASURES = {
    "human_perplexity": "perplexity on held-out benign text",
    "perplexity": "perplexity of benign continuations",
    "kl_benign": "KL on held-out benign text",
}


def _num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _pct(value: float) -> str:
    """A relative change as a signed percentage (``+10%``, ``-23%``)."""
    return f"{value * 100:+.0f}%"


def _p(value: Any) -> str:
    return "p n/a" if value is None else f"p = {float(value):.2g}"


def verdict(summary: Mapping[str, Any]) -> list[str]:
    """The result of a run in three lines: effect, fluency cost, random control.

    Reads the record of ``summary.json`` (what step 06 writes): its ``recommended`` entry (the
    operating point chosen on the selection half, figures from the confirmation half, the
    random control there) and its parameters.

    Args:
        summary: The ``summary.json`` record.

    Returns:
        Three sentences. With a recommended setting: (1) whether it lowers the challenging
        subset's expected maximum toxicity, by how much and on which prompts; (2) the fluency
        cost against the budget; (3) the comparison with a random direction of the same norm.
        Without one: (1) that steering is not recommended here (alpha 0) and why; (2) the
        nearest miss and the checks it fails; (3) what to change to try again.

    Example:
        >>> record = json.loads(paths.summary.read_text())  # doctest: +SKIP
        >>> for line in verdict(record):  # doctest: +SKIP
        ...     print(line)
    """
    recommended = dict(summary.get("recommended") or {})
    params = dict(summary.get("params") or {})
    if "error" in recommended:
        return [
            f"No verdict: the operating-point rule could not run ({recommended['error']}).",
            "Fluency cost: not assessed.",
            "Random control: not compared.",
        ]
    if "layer" not in recommended:
        return _no_point_lines(recommended, params)
    fewest = _fewest_prompts(summary, recommended)
    thin = fewest is not None and fewest < MIN_PROMPTS_PER_HALF
    return [
        _effect_line(recommended, fewest=fewest) + ("" if thin else _scorers_clause(recommended)),
        _budget_line(recommended, params)
        if recommended.get("fluency_budget")
        else _cost_line(recommended),
        _control_line(recommended, params),
    ]


MIN_PROMPTS_PER_HALF = 5
"""Fewest challenging prompts per half (selection and confirmation) for a Yes or No verdict.

The verdict rests on a 95% percentile-bootstrap interval over prompts. Resampling n prompts
gives at most C(2n-1, n) distinct resamples (1, 3, 10, 35, 126 for n = 1..5), and a 95%
interval needs at least 1 / 0.025 = 40 distinct values for its 2.5% and 97.5% ends to be
distinct quantiles, so n = 5 is the smallest half whose interval can mean what it says (with 1
prompt it has zero width: "95% CI 0.0239–0.0239"). Below it the verdict says the evidence is
too thin instead of Yes or No."""


def _fewest_prompts(summary: Mapping[str, Any], point: Mapping[str, Any]) -> int | None:
    """The fewest challenging prompts in a half the verdict rests on (None when unrecorded)."""
    counts = (summary.get("split") or {}).get("n_prompts", {}).get("challenging", {}) or {}
    found = [int(n) for n in counts.values() if isinstance(n, int | float)]
    if point.get("n_prompts") is not None:
        found.append(int(point["n_prompts"]))
    return min(found) if found else None


def _effect_line(point: Mapping[str, Any], *, fewest: int | None = None) -> str:
    emt, base = point.get("expected_max_toxicity"), point.get("baseline_expected_max_toxicity")
    where = f"layer {point['layer']}, alpha {float(point['alpha']):.3g}"
    if point.get("variant", "caa") != "caa":
        where = f"the {point['variant']} variant at {where}"
    if emt is None or base is None:
        return (
            f"Not confirmed: {where} was chosen on the selection half, but the "
            f"{point.get('figures_from', 'confirmation')} half has no figures for it "
            f"({point.get('split_note') or 'generate that setting there to confirm it'})."
        )
    ci = point.get("expected_max_toxicity_ci") or [None, None]
    change = float(emt) / float(base) - 1 if base else math.nan
    numbers = (
        f"expected maximum toxicity {_num(base)} → {_num(emt)} ({_pct(change)}, 95% CI "
        f"{_num(ci[0])}–{_num(ci[1])}"
    )
    tp, tp_base = point.get("toxicity_probability"), point.get("baseline_toxicity_probability")
    if tp is not None and tp_base is not None:
        numbers += f"; toxicity probability {_num(tp_base, 2)} → {_num(tp, 2)}"
    numbers += f") {_half(point)}"
    if fewest is not None and fewest < MIN_PROMPTS_PER_HALF:
        return (
            f"Too few prompts to conclude: at {where}, {numbers}; a half with {fewest} "
            f"challenging prompts (fewer than {MIN_PROMPTS_PER_HALF}) cannot support a yes or "
            "no: raise n_prompts."
        )
    if float(emt) >= float(base):
        return f"No, steering does not cut toxicity here: at {where}, {numbers}."
    if ci[1] is not None and float(ci[1]) >= float(base):
        return (
            f"Not conclusively: {where} lowers {numbers}, but the interval reaches the unsteered "
            "value."
        )
    return f"Yes, steering cuts toxicity here: {where} lowers {numbers}."


def _scorers_clause(point: Mapping[str, Any]) -> str:
    """The sentence on both scorers (with a leading space) when the run had two, else empty."""
    check = point.get("cut_holds") or {}
    if len(check.get("scorers") or {}) < 2:
        return ""
    return " " + str(check.get("sentence", ""))


def _half(point: Mapping[str, Any]) -> str:
    """On which prompts the figures of ``point`` were measured."""
    n = point.get("n_prompts")
    prompts = f"{n} challenging prompts" if n is not None else "challenging prompts"
    if point.get("figures_from", "all") == "all":
        return f"on all {prompts} (no held-out half: these figures favour the chosen setting)"
    return (
        f"on the {prompts} of the {point['figures_from']} half, which played no part in choosing it"
    )


def judge_name(params: Mapping[str, Any]) -> str:
    """The model that judged continuation perplexity, or "self-judged" for the steered one's."""
    judge, model = params.get("perplexity_model"), params.get("model")
    if judge in (None, "", model):
        return f"self-judged (the steered model's own weights, {model or 'the model'})"
    return str(judge)


def _budget_line(point: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The fluency line of a run that checks every measure: each with change, CI and budget."""
    budget = dict(point.get("fluency_budget") or {})
    allowed = (point.get("checks") or {}).get("max_perplexity_increase")
    parts, failing = [], []
    for name, entry in budget.items():
        value, base, ci = entry.get("value"), entry.get("baseline"), entry.get("ci")
        interval = f", 95% CI {_num(ci[0])}–{_num(ci[1])}" if ci else ""
        if name == "kl_benign":
            text = (
                f"{_MEASURES[name]} {_num(value, 2)} nats/token ({interval.lstrip(', ')}"
                f"{'; ' if interval else ''}budget {_num(entry.get('limit'), 2)})"
            )
        else:
            change = entry.get("change")
            text = (
                f"{_MEASURES.get(name, name)} {_num(base)} → {_num(value)} "
                f"({_pct(float(change)) if change is not None else 'n/a'}{interval}; budget "
                + (f"{_pct(float(allowed))}" if allowed is not None else "n/a")
                + ")"
            )
        if name == "perplexity":
            text += f", judge: {judge_name(params)}"
        if entry.get("within") is False:
            failing.append(_MEASURES.get(name, name))
            text += " — over budget"
        parts.append(text)
    ratio = point.get("distinct_2_ratio")
    if ratio is not None:
        parts.append(f"distinct-2 ×{float(ratio):.2f} of alpha 0's")
    half = point.get("figures_from", "confirmation")
    where = f" on the {half} half" if half != "all" else ""
    verdict = (
        f"fails on {', '.join(failing)}{where} (the rule checked the selection half)"
        if failing
        else f"every measure within budget{where}"
    )
    return "Fluency cost: " + "; ".join(parts) + f". {verdict[0].upper()}{verdict[1:]}."


def _cost_line(point: Mapping[str, Any]) -> str:
    measure = str(point.get("fluency_measure") or "perplexity")
    value, base = point.get("fluency"), point.get("baseline_fluency")
    budget = (point.get("checks") or {}).get("max_perplexity_increase")
    parts = []
    if value is not None and base is not None and base:
        parts.append(
            f"{_MEASURES.get(measure, measure)} {_num(base)} → {_num(value)} "
            f"({_pct(float(value) / float(base) - 1)}"
            + (f", budget {_pct(float(budget))})" if budget is not None else ")")
        )
    if measure != "perplexity":
        ppl, ppl_base = point.get("perplexity"), point.get("baseline_perplexity")
        if ppl is not None and ppl_base is not None:
            parts.append(f"benign continuations' perplexity {_num(ppl_base)} → {_num(ppl)}")
    ratio = point.get("distinct_2_ratio")
    if ratio is not None:
        parts.append(f"distinct-2 ×{float(ratio):.2f} of alpha 0's")
    if not parts:
        return "Fluency cost: not measured at this setting."
    return "Fluency cost: " + "; ".join(parts) + "."


def _control_line(point: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    control = point.get("control")
    if not control:
        if params.get("random_control") is False:
            return (
                "Random control: none in this run (random_control false), so a generic effect "
                "of perturbing the activations is not ruled out."
            )
        return "Random control: no random direction was measured at this setting."
    delta = control.get("delta_mean_toxicity")
    low = control.get("delta_mean_toxicity_ci_low")
    high = control.get("delta_mean_toxicity_ci_high")
    numbers = (
        f"a random direction of the same norm at the same alpha leaves expected maximum "
        f"toxicity at {_num(control.get('expected_max_toxicity_random'))}; per prompt, mean "
        f"toxicity with the vector minus with the random direction is {_num(delta, 2)} (95% CI "
        f"{_num(low, 2)} to {_num(high, 2)}, {_p(control.get('p_value'))})"
    )
    matched = point.get("control_matched_fluency") or {}
    if matched.get("delta_mean_toxicity") is not None:
        numbers += (
            f"; against the least toxic random setting that costs no more fluency (alpha "
            f"{_num(matched.get('control_alpha'))}) it is {_num(matched['delta_mean_toxicity'], 2)}"
        )
    p_value = control.get("p_value")
    if control.get("beats_control") and (p_value is None or float(p_value) < 0.05):
        return f"Specific to the vector, not to any perturbation: {numbers}."
    return f"Not shown to be specific to the vector: {numbers}."


def _no_point_lines(recommended: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    reason = recommended.get("reason") or "no steered setting met the rule"
    first = (
        "No steering recommended here: the rule keeps the unsteered model (alpha 0) because "
        f"{reason} (checked on the {recommended.get('selected_on', 'selection')} half of the "
        "prompts)."
    )
    miss = recommended.get("nearest_miss")
    if miss:
        lowers = (
            f"lowers expected maximum toxicity {_num(miss.get('baseline_expected_max_toxicity'))}"
            f" → {_num(miss.get('expected_max_toxicity'))}"
            if miss.get("lowers_emt")
            else "does not lower toxicity"
        )
        second = (
            f"Nearest miss: layer {miss['layer']}, alpha {float(miss['alpha']):.3g} {lowers} but "
            f"fails: {'; '.join(miss.get('reasons') or ['a check'])}."
        )
        failed = (miss.get("fluency_failed") or []) if isinstance(miss, Mapping) else []
        if failed:
            names = ", ".join(_MEASURES.get(name, name) for name in failed)
            judge = (
                f" (continuations' judge: {judge_name(params)})" if "perplexity" in failed else ""
            )
            second += f" Fluency measures over budget: {names}{judge}."
    else:
        second = "Nearest miss: none (the run has no steered setting to compare)."
    budget = (recommended.get("checks") or {}).get("max_perplexity_increase")
    if budget is None:
        budget = params.get("max_perplexity_increase")
    third = (
        "To accept more fluency cost, raise max_perplexity_increase (now "
        f"{_num(budget)}; `python -m steerlib run --set max_perplexity_increase=...` redoes "
        "only what depends on it), or sweep smaller alphas or other layers; the random control "
        "is compared only at a recommended setting."
    )
    return [first, second, third]


def verdict_markdown(summary: Mapping[str, Any]) -> str:
    """:func:`verdict` as a Markdown list, for notebook 06 and the report's first screen."""
    return "\n".join(f"- {line}" for line in verdict(summary))


def report_title(run_name: str) -> str:
    """The report's page title."""
    return f"steerlib report — {run_name}"


def heading(summary: Mapping[str, Any]) -> str:
    """The report's heading in Markdown: its title and what the run measured, in one line."""
    params = dict(summary.get("params") or {})
    counts = (summary.get("split") or {}).get("n_prompts", {}).get("challenging", {})
    facts = [f"model `{summary.get('model', params.get('model'))}`"]
    facts.append(f"scorer `{summary.get('scorer', params.get('scorer'))}`")
    if params.get("layers") is not None:
        facts.append(f"layers {params['layers']}")
    if counts:
        halves = " + ".join(f"{n} {half}" for half, n in sorted(counts.items(), reverse=True))
        facts.append(f"{sum(counts.values())} challenging prompts ({halves})")
    if params.get("samples_per_prompt"):
        facts.append(
            f"{params['samples_per_prompt']} samples of {params.get('max_new_tokens')} tokens "
            "per prompt"
        )
    title = report_title(str(summary.get("run_name", params.get("run_name", "run"))))
    return f"# {title}\n\n" + " · ".join(facts)


# -- tables ------------------------------------------------------------------------------------

_TOXICITY = (
    "mean_toxicity",
    "expected_max_toxicity",
    "toxicity_probability",
    "mean_toxicity_ci_low",
    "mean_toxicity_ci_high",
)
_LABELS = {
    "expected_max_toxicity": "EMT",
    "toxicity_probability": "tox. prob.",
    "mean_toxicity": "mean tox.",
    "mean_toxicity_ci": "mean tox. 95% CI",
    "expected_max_toxicity_ci": "EMT 95% CI",
    "benign_perplexity": "benign ppl",
    "perplexity": "ppl",
    "human_perplexity": "held-out ppl",
    "kl_benign": "KL benign",
    "distinct_2": "distinct-2",
    "distinct_2_ratio": "distinct-2 / alpha 0",
    "floor_share": "at floor",
    "floor_share_increase": "floor rise",
    "fluency": "fluency",
    "fluency_limit": "limit",
    "inadmissible_because": "fails",
}


def _format_value(column: str, value: Any) -> str:
    """One cell, formatted by what its column holds."""
    if isinstance(value, list | tuple | np.ndarray):
        if len(value) == 2:
            return f"{_format_value(column, value[0])}–{_format_value(column, value[1])}"
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
    formats = {c: (lambda v, c=c: _format_value(c, v)) for c in table.columns}
    styler = (
        table.style.format(formats)
        .hide(axis="index")
        .relabel_index([_LABELS.get(c, c.replace("_", " ")) for c in table.columns], axis=1)
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
    zero = zero.sort_values("direction", key=lambda d: d == "none", kind="stable")
    unsteered = zero.drop_duplicates("subset")
    unsteered = unsteered.assign(direction="unsteered", layer=pd.NA)
    steered = rows[~np.isclose(alpha, 0.0) & (rows["direction"] != "none")]
    steered = steered.sort_values(["direction", "layer", "alpha"], kind="stable")
    return pd.concat([unsteered, steered], ignore_index=True)


def settings_table(summary: pd.DataFrame, *, split: str = "all") -> Any:
    """One row per setting: challenging toxicity beside benign fluency, alpha 0 once.

    Args:
        summary: Step 06's summary table (``Analysis.summary`` or ``summary.parquet``).
        split: Half of the prompts to show (``all``, ``selection`` or ``confirmation``).
    """
    from steerlib.evaluate.controls import tradeoff_rows

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
        "benign_perplexity",
        "human_perplexity",
        "kl_benign",
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
    shown = table[["stratum", "scorer", "n_prompts", "EMT alpha0", "EMT point", "note"]]
    return _styled(shown, f"EMT per stratum of the challenging prompts, {halves}, 95% CI")


def side_by_side_table(examples: pd.DataFrame) -> Any:
    """:attr:`Analysis.side_by_side`, formatted: each prompt once, its settings below it."""
    if examples.empty:
        return examples
    indexed = examples.drop(columns=["prompt_id"]).set_index(["prompt", "why", "setting"])
    formats = {c: (lambda v, c=c: _format_value(c, v)) for c in indexed.columns}
    return indexed.style.format(formats).set_table_styles(
        [
            {"selector": "td", "props": "white-space: pre-wrap; text-align: left;"},
            {"selector": "th", "props": "text-align: left; vertical-align: top;"},
        ]
    )


def example_completions(
    sweep: pd.DataFrame, *, layer: int, n_prompts: int = 5, direction: str = "caa"
) -> pd.DataFrame:
    """First sample of a few challenging prompts at every alpha of ``layer``, in full.

    Returns:
        One row per (prompt, alpha): ``prompt``, ``layer``, ``alpha``, ``direction``,
        ``completion``, ``toxicity`` and ``perplexity`` (when scored).
    """
    rows = sweep[
        (sweep["subset"] == "challenging")
        & (sweep["direction"] == direction)
        & (sweep["layer"] == layer)
        & (sweep["sample"] == 0)
    ]
    chosen = rows["prompt_id"].drop_duplicates().head(n_prompts)
    rows = rows[rows["prompt_id"].isin(chosen)]
    columns = ["prompt", "layer", "alpha", "direction", "completion", "toxicity", "perplexity"]
    rows = rows.assign(_order=rows["prompt_id"].map({p: i for i, p in enumerate(chosen)}))
    rows = rows.sort_values(["_order", "alpha"], kind="stable")
    return rows[[c for c in columns if c in rows.columns]].reset_index(drop=True)


def examples_table(examples: pd.DataFrame) -> Any:
    """:func:`example_completions`, formatted: each prompt once, completions in full."""
    if examples.empty:
        return examples
    indexed = examples.set_index(["prompt", "layer", "alpha"])
    formats = {c: (lambda v, c=c: _format_value(c, v)) for c in indexed.columns}
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


# -- the HTML page -----------------------------------------------------------------------------

_HIDDEN_TAGS = ("parameters", "injected-parameters", "remove-cell")
"""Cells left out of the report whole."""
_HIDDEN_OUTPUT_TAGS = ("remove-output",)
"""Cells whose outputs (setup notes, progress bars) are left out of the report."""


def render_report(executed: Path, dest: Path, *, title: str | None = None) -> Path:
    """Render an executed notebook to a standalone HTML page without code.

    Inputs and prompts are left out (``exclude_input``, ``exclude_input_prompt``,
    ``exclude_output_prompt``), as are cells tagged ``parameters``, ``injected-parameters`` or
    ``remove-cell`` and the outputs of cells tagged ``remove-output``.

    Args:
        executed: The executed notebook (papermill's output).
        dest: The HTML file to write.
        title: Page title (default: ``steerlib report — <run>`` for a run's own copy,
            ``<run>/notebooks/06_analysis.ipynb``; else the notebook's ``title`` metadata, else
            its file name).

    Returns:
        ``dest``.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    executed = Path(executed)
    if title is None and executed.parent.name == "notebooks":
        title = report_title(executed.parent.parent.name)
    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = set(_HIDDEN_TAGS)
    config.TagRemovePreprocessor.remove_all_outputs_tags = set(_HIDDEN_OUTPUT_TAGS)
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(
        config=config,
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    notebook = nbformat.read(executed, as_version=4)
    name = title or notebook.metadata.get("title") or Path(executed).stem
    notebook.metadata["title"] = name
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": name}})
    return atomic_write_text(dest, body)
