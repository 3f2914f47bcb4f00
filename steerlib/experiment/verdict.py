"""The verdict: what a finished run says, in three sentences.

:func:`verdict` turns a run's ``summary.json`` into three sentences: does steering cut toxicity
here (and on which half of the prompts), at what fluency cost (every gating measure of
:data:`steerlib.evaluate.gates.GATES`, against its budget), and against the random control.
The chain runner prints them at the end of ``python -m steerlib run``; notebook 06 shows them
first (:func:`verdict_markdown`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from steerlib.evaluate.gates import Gate, all_gates

__all__ = ["MIN_PROMPTS_PER_HALF", "judge_name", "verdict", "verdict_markdown"]


def _label(name: str) -> str:
    """What the verdict calls a gating measure (its name when it gates nothing)."""
    found = _gate_of(name)
    return found.label if found is not None else name


def _gate_of(name: str) -> Gate | None:
    """The gate of ``name`` (:data:`steerlib.evaluate.gates.GATES`), None when it gates nothing."""
    return next((found for found in all_gates() if found.name == name), None)


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
        _effect_line(recommended, fewest=fewest)
        + ("" if thin else _scorers_clause(recommended, summary)),
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
            f"Too few prompts to conclude: at {where}, {numbers}; a half with "
            f"{_challenging(fewest)} (fewer than {MIN_PROMPTS_PER_HALF}) cannot support a yes or "
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


def _scorers_clause(point: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The sentence on the scorers, with a leading space.

    With two scorers: whether the cut holds under both (:func:`cut_holds_sentence`). With one
    (a run without ``second_scorer``): which scorer alone measured it and how to add a second;
    empty when the record names no scorer.
    """
    check = point.get("cut_holds") or {}
    if len(check.get("scorers") or {}) >= 2:
        return " " + str(check.get("sentence", ""))
    params = dict(summary.get("params") or {})
    scorer = summary.get("scorer") or params.get("scorer")
    if not scorer or params.get("second_scorer"):
        return ""
    return (
        f" Measured by {scorer} alone: this run has no second scorer "
        "(`--set second_scorer=minilm-toxicity` adds a non-lexical one)."
    )


def _half(point: Mapping[str, Any]) -> str:
    """On which prompts the figures of ``point`` were measured."""
    n = point.get("n_prompts")
    prompts = _challenging(n) if n is not None else "challenging prompts"
    if point.get("figures_from", "all") == "all":
        return f"on all {prompts} (no held-out half: these figures favour the chosen setting)"
    return (
        f"on the {prompts} of the {point['figures_from']} half, which played no part in choosing it"
    )


def _challenging(n: Any) -> str:
    """``"1 challenging prompt"``, ``"5 challenging prompts"``: the count agrees in number."""
    return f"{n} challenging prompt{'' if n == 1 else 's'}"


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
        found = _gate_of(name)
        if found is not None and found.budget == "absolute":
            text = (
                f"{_label(name)} {_num(value, 2)} {found.report_unit} ({interval.lstrip(', ')}"
                f"{'; ' if interval else ''}budget {_num(entry.get('limit'), 2)})"
            )
        else:
            change = entry.get("change")
            text = (
                f"{_label(name)} {_num(base)} → {_num(value)} "
                f"({_pct(float(change)) if change is not None else 'n/a'}{interval}; budget "
                + (f"{_pct(float(allowed))}" if allowed is not None else "n/a")
                + ")"
            )
        if found is not None and found.judged:
            text += f", judge: {judge_name(params)}"
        if entry.get("within") is False:
            failing.append(_label(name))
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
            f"{_label(measure)} {_num(base)} → {_num(value)} "
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
    """The random-control line: the variant's own control at equal alpha and at its own edge.

    "Specific to the vector" needs the equal-alpha comparison to hold (interval below 0,
    p < 0.05) and, where the control's own search found a steered edge, the comparison there
    too (interval below 0): the same budget gave the random direction its own alpha.
    """
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
        f"a random direction of the same norm {_whose_control(point)}at the same alpha leaves "
        f"expected maximum toxicity at {_num(control.get('expected_max_toxicity_random'))}; per "
        f"prompt, mean toxicity with the vector minus with the random direction is "
        f"{_num(delta, 2)} (95% CI {_num(low, 2)} to {_num(high, 2)}, "
        f"{_p(control.get('p_value'))})"
    )
    own_clause, own_holds = _own_edge_clause(point)
    numbers += own_clause
    matched = point.get("control_matched_fluency") or {}
    if matched.get("delta_mean_toxicity") is not None:
        numbers += (
            f"; against the least toxic random setting that costs no more fluency (alpha "
            f"{_num(matched.get('control_alpha'))}) it is {_num(matched['delta_mean_toxicity'], 2)}"
        )
    p_value = control.get("p_value")
    at_alpha = control.get("beats_control") and (p_value is None or float(p_value) < 0.05)
    if at_alpha and own_holds is not False:
        return f"Specific to the vector, not to any perturbation: {numbers}."
    return f"Not shown to be specific to the vector: {numbers}."


def _whose_control(point: Mapping[str, Any]) -> str:
    """Under which hook the control ran (with a trailing space), "" for plain CAA's own."""
    variant, control_of = point.get("variant", "caa"), point.get("control_of")
    if control_of not in (None, variant):
        return (
            f"(plain CAA's random rows: this run made none under the {variant} hook, so they "
            "are not its own control) "
        )
    return f"under the same {variant} hook " if variant != "caa" else ""


def _own_edge_clause(point: Mapping[str, Any]) -> tuple[str, bool | None]:
    """The comparison at the control's own searched edge, and whether the vector beats it there.

    Returns:
        ``(clause with a leading "; " or "", holds)``; ``holds`` is None when the run did not
        search the control at this layer or found no steered edge for it.
    """
    if "control_own_edge" not in point:
        return "", None  # a run without control_search
    own = point.get("control_own_edge") or {}
    edge = point.get("control_own_edge_alpha")
    if own.get("delta_mean_toxicity") is None:
        if edge is not None and float(edge) == 0:
            return (
                "; the control's own search, under the same budget, found no steered alpha "
                "within it (its edge is alpha 0)",
                None,
            )
        return "", None
    low, high = own.get("delta_mean_toxicity_ci_low"), own.get("delta_mean_toxicity_ci_high")
    holds = high is not None and float(high) < 0
    clause = (
        f"; against the same random direction at its own budget edge (alpha "
        f"{_num(own.get('control_alpha'))}, found by the same search within the same budget: "
        f"expected maximum toxicity {_num(own.get('expected_max_toxicity_control'))}) it is "
        f"{_num(own['delta_mean_toxicity'], 2)} (95% CI {_num(low, 2)} to {_num(high, 2)})"
    )
    if not holds:
        clause += ", not below 0"
    return clause, holds


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
            names = ", ".join(_label(name) for name in failed)
            judged = any(getattr(_gate_of(name), "judged", False) for name in failed)
            judge = f" (continuations' judge: {judge_name(params)})" if judged else ""
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
