"""Step 06: RTP metrics with bootstrap intervals, the controls, the operating point, figures.

:func:`analyze` assembles the evaluation table (baseline and sweep, each prompt in its
selection or confirmation half), summarizes it (:mod:`steerlib.evaluate.metrics`), applies the
operating-point rule (:mod:`steerlib.evaluate.operating_point`), compares with the random control
(:mod:`steerlib.evaluate.controls`), and draws the figures into the run's ``figures/`` folder
(:func:`steerlib.experiment.figures.render_figures`, from the products it has just written).

Over 500 lines because step 06 assembles the summary, operating points per variant, controls,
strata and examples from one set of products; splitting it belongs to the layered-subpackage
work (issue 24), which moves these pieces into their own modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from steerlib._io import atomic_write_json, atomic_write_parquet
from steerlib.errors import DataError, SteerlibError
from steerlib.experiment.figures import figure_layer, render_figures, write_figures
from steerlib.experiment.report import example_completions, verdict
from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.steps import EVAL_SUBSETS, eval_prompts

__all__ = [
    "Analysis",
    "analyze",
    "compare_runs",
    "gate_rates",
    "pick_variant",
    "side_by_side",
    "variant_table",
    "verdict",
]


@dataclass
class Analysis:
    """Products of step 06.

    Attributes:
        summary: One row per (split, subset, layer, alpha, direction), with the RTP metrics and
            the admissibility columns of the operating-point rule; ``split`` is ``all``,
            ``selection`` or ``confirmation``.
        recommended: The operating point chosen on the selection half, its figures from the
            confirmation half and its rule (or ``status`` "no admissible steered setting" with
            the nearest miss).
        scorer_auc: ROC AUC of the scorer against Perspective labels on prompts and
            continuations pooled, where the data have them.
        control: CAA minus random control, per (subset, layer, alpha), on all prompts.
        control_matched: CAA against the least toxic random setting of the same layer that
            is at least as fluent on the rule's fluency measure
            (:func:`controls.fluency_matched_control`), on all prompts.
        figures: Named plotly figures (also written to the run's ``figures/`` folder).
        examples: The first completion of a few challenging prompts at every alpha of the
            figures' layer, in full, with their scores
            (:func:`~steerlib.experiment.report.example_completions`).
        confirmation: The confirmation half at the recommended point (or nearest miss), at
            alpha 0 and for the random control (:func:`operating_point.operating_point_table`).
        scorer_validity: AUC, precision and recall at 0.5 against Perspective, separately on
            prompts and on continuations (:func:`scoring.scorer_validity`).
        scorer_floor: The scorer's score of text without known words.
        variants: One row per steering variant: its operating point (chosen on the selection
            half) and its confirmation-half figures (:func:`variant_table`).
        gate_rates: How often the gated variant's gate fired per subset (:func:`gate_rates`).
        strata: EMT per toxicity stratum of the challenging prompts, at alpha 0 and at the
            recommended point, per scorer (:func:`strata.strata_table`).
        side_by_side: The same challenging prompts at alpha 0 and at each variant's point,
            with both scores (:func:`examples.side_by_side_examples`).
        record: The body of ``summary.json`` (what :func:`verdict` reads).
    """

    summary: pd.DataFrame
    recommended: dict[str, Any] | None
    scorer_auc: float | None
    control: pd.DataFrame
    control_matched: pd.DataFrame
    figures: dict[str, Any]
    examples: pd.DataFrame
    confirmation: pd.DataFrame = field(default_factory=pd.DataFrame)
    scorer_validity: dict[str, Any] = field(default_factory=dict)
    scorer_floor: float | None = None
    variants: pd.DataFrame = field(default_factory=pd.DataFrame)
    gate_rates: pd.DataFrame = field(default_factory=pd.DataFrame)
    record: dict[str, Any] = field(default_factory=dict)
    strata: pd.DataFrame = field(default_factory=pd.DataFrame)
    side_by_side: pd.DataFrame = field(default_factory=pd.DataFrame)


def _scorer_validity(run: Run, prompts: pd.DataFrame) -> dict[str, Any]:
    """The scorer against Perspective labels (>= 0.5), on prompts and on continuations."""
    from steerlib.data.subsets import perspective_labels
    from steerlib.evaluate.scoring import scorer_validity

    kinds = ("prompts", "continuations")
    groups = {kind: perspective_labels(prompts, which=kind) for kind in kinds}  # type: ignore[arg-type]
    return scorer_validity(run.scorer(), groups)


_CONTROL_COLUMNS = (
    "control_alpha",
    "perplexity_caa",
    "perplexity_control",
    "mean_toxicity_caa",
    "mean_toxicity_random",
    "mean_toxicity_control",
    "delta_mean_toxicity",
    "delta_mean_toxicity_ci_low",
    "delta_mean_toxicity_ci_high",
    "expected_max_toxicity_caa",
    "expected_max_toxicity_random",
    "expected_max_toxicity_control",
    "delta_expected_max_toxicity",
    "delta_expected_max_toxicity_ci_low",
    "delta_expected_max_toxicity_ci_high",
    "n_paired_prompts",
    "p_value",
    "q_value",
    "beats_control",
)


def _control_at(control: pd.DataFrame, point: dict[str, Any]) -> dict[str, Any] | None:
    """The challenging-subset comparison with the random control at an operating point."""
    if control.empty:
        return None
    hit = control[
        (control["subset"] == "challenging")
        & (control["layer"] == point["layer"])
        & np.isclose(control["alpha"].astype(float), float(point["alpha"]))
    ]
    if hit.empty:
        return None
    columns = [c for c in _CONTROL_COLUMNS if c in hit.columns]
    return json.loads(hit[columns].iloc[[0]].to_json(orient="records"))[0]


def _confirmed_controls(
    summary: pd.DataFrame,
    evaluation: pd.DataFrame,
    point: dict[str, Any],
    options: dict[str, Any],
    own_edges: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The random control at the recommended point, on the half its figures come from.

    At equal alpha (``control``), at equal fluency (``control_matched_fluency``: the least
    toxic random setting of the layer no costlier on the rule's measure, or at the control's
    own budget edge, which the same search found within the same budget) and, where the run
    searched the control (``own_edges``: layer to the control's own edge), at its own edge
    (``control_own_edge``). On the confirmation half this is one comparison fixed before
    looking at those prompts, so its ``p_value`` needs no multiplicity adjustment (``q_value``
    equals it).
    """
    from steerlib.evaluate import controls

    half, layer, alpha = point["figures_from"], int(point["layer"]), float(point["alpha"])
    rows = summary[(summary["split"] == half) & (summary["layer"] == layer)]
    sweep = evaluation[evaluation["layer"] == layer]
    if half != "all":
        sweep = sweep[sweep["split"] == half]
    at_alpha = np.isclose(rows["alpha"].astype(float), alpha)
    out: dict[str, Any] = {"control": None, "control_matched_fluency": None}
    edge = (own_edges or {}).get(layer)
    if own_edges:
        out["control_own_edge"] = None
    if not (rows["direction"] == "random").any():
        return out
    same = rows[at_alpha]
    if {"caa", "random"} <= set(same["direction"]):
        out["control"] = _control_at(controls.delta_vs_control(same, sweep, **options), point)
    candidates = rows[(rows["direction"] == "random") | at_alpha]
    measure = str(summary["fluency_measure"].iloc[0])
    always = {layer: [edge]} if edge is not None else None
    matched = controls.fluency_matched_control(
        candidates, sweep, fluency=measure, always=always, **options
    )
    found = _control_at(matched, point)
    if found is not None:
        found["fluency_measure"] = measure
    out["control_matched_fluency"] = found
    if edge is not None and edge != 0:
        is_random = rows["direction"] == "random"
        at_edge = is_random & np.isclose(rows["alpha"].astype(float), edge)
        own = rows[at_edge | (at_alpha & ~is_random)]
        if at_edge.any():
            alone = controls.fluency_matched_control(
                own, sweep, fluency=measure, always=always, **options
            )
            found = _control_at(alone, point)
            if found is not None:
                found["fluency_measure"] = measure
            out["control_own_edge"] = found
    for value in out.values():
        if value is not None:
            value["split"] = half
    return out


def side_by_side(sweep: pd.DataFrame, *, layer: int, n_prompts: int = 5) -> pd.DataFrame:
    """First sample of a few challenging prompts, one column per alpha (CAA direction)."""
    rows = sweep[
        (sweep["subset"] == "challenging")
        & (sweep["direction"] == "caa")
        & (sweep["layer"] == layer)
        & (sweep["sample"] == 0)
    ]
    chosen = rows["prompt_id"].drop_duplicates().head(n_prompts)
    rows = rows[rows["prompt_id"].isin(chosen)]
    wide = rows.pivot_table(
        index=["prompt_id", "prompt"], columns="alpha", values="completion", aggfunc="first"
    )
    wide.columns = [f"alpha={a:g}" for a in wide.columns]
    return wide.reset_index()


def _split_counts(evaluation: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Number of prompts of each subset in each half."""
    counts = evaluation.drop_duplicates(["subset", "prompt_id"]).groupby(["subset", "split"])
    return {
        str(subset): {str(half): int(n) for (_, half), n in group.items()}
        for subset, group in counts.size().groupby(level=0)
    }


def analyze(run: Run, *, force: bool = False, save_figures: bool = True) -> Analysis:
    """Step 06: RTP metrics with bootstrap intervals, controls, the operating point, figures.

    The evaluation prompts of each subset are split into a selection and a confirmation half
    (:func:`operating_point.assign_split`, seeded by the run's ``seed``); the summary has rows
    over all prompts and over each half. The operating point is chosen on the selection half
    (:func:`operating_point.recommend_operating_point`) and its figures, with the random
    control at the same point, are read from the confirmation half. The analysis always runs
    (it is cheap); ``force`` is accepted for symmetry with the other steps.
    """
    from steerlib.evaluate import controls, operating_point
    from steerlib.evaluate.scoring import scorer_floor

    del force
    from steerlib.experiment.scorer_checks import two_scorer_products
    from steerlib.experiment.sweep import control_edges, with_variant

    paths, p = run.paths, run.params
    all_sweep = with_variant(pd.read_parquet(run.require("sweep")))
    all_kl = with_variant(pd.read_parquet(run.require("kl")))
    # Plain CAA (with the random control) goes through the analysis as before; the other
    # variants are analysed the same way after it (:func:`_variant_points`).
    sweep = all_sweep[all_sweep["variant"] == "caa"].drop(columns="variant")
    kl = all_kl[all_kl["variant"] == "caa"].drop(columns="variant")
    baseline = pd.read_parquet(run.require("baseline"))
    prompts = pd.read_parquet(run.require("prompts"))
    run.require("vectors")  # the figures draw it
    with run.step("06_analysis"):
        evaluation = _evaluation(prompts, baseline, sweep, p.seed)
        floor = scorer_floor(run.scorer())
        rule = {
            "max_perplexity_increase": p.max_perplexity_increase,
            "fluency_measure": p.fluency_measure,
            "min_distinct_ratio": p.min_distinct_ratio,
            "max_floor_share_increase": p.max_floor_share_increase,
            "max_kl_benign": p.max_kl_benign,
        }
        summary, recommended = _operating_point(p, evaluation, kl, floor, rule)
        measure, measure_note = operating_point.resolve_fluency_measure(summary, p.fluency_measure)
        overall = summary[summary["split"] == "all"]
        options = {"n_resamples": p.n_resamples, "seed": p.seed}
        control, matched = pd.DataFrame(), pd.DataFrame()
        if "random" in set(summary["direction"]):
            control = controls.delta_vs_control(overall, evaluation, **options)
            matched = controls.fluency_matched_control(
                overall, evaluation, fluency=measure, **options
            )
        edges = control_edges(paths)
        if "layer" in recommended:
            recommended.update(
                _confirmed_controls(
                    summary, evaluation, recommended, options, _edges_of(edges, "caa")
                )
            )
            recommended["control_of"] = "caa"
        points = {"caa": (summary.assign(variant="caa"), recommended)}
        points.update(
            _variant_points(
                run, prompts, baseline, all_sweep, all_kl, floor, rule, options, p.variants, edges
            )
        )
        caa_recommended = recommended
        best = pick_variant({name: point for name, (_, point) in points.items()})
        recommended = points[best][1]
        validity = _scorer_validity(run, prompts)
        all_summaries = pd.concat([table for table, _ in points.values()], ignore_index=True)
        record = _summary_record(run, all_summaries, evaluation, recommended, validity)
        record["recommended_by_variant"] = {name: point for name, (_, point) in points.items()}
        record["gate_rates"] = _records(gate_rates(all_sweep))
        scorer_record, strata, side_by_side = two_scorer_products(
            run, points, all_sweep, recommended
        )
        record.update(scorer_record)
        record.update(
            fluency_measure=measure,
            fluency_measure_note=measure_note,
            scorer_floor=floor,
            control=_records(control),
            control_matched_fluency=_records(matched),
        )
        atomic_write_parquet(paths.summary_table, all_summaries)
        atomic_write_json(paths.summary, record)
        # From the products just written, as `python -m steerlib figures` draws them (the
        # variants' Pareto figure included when the run has several variants).
        figures = render_figures(paths)
        layer = figure_layer(overall, caa_recommended)
        if save_figures:
            write_figures(paths, figures)
    return Analysis(
        all_summaries,
        recommended,
        record["scorer_auc"],
        control,
        matched,
        figures,
        example_completions(sweep, layer=layer),
        confirmation=operating_point.operating_point_table(
            points[best][0], recommended if "error" not in recommended else {}
        ),
        scorer_validity=validity,
        scorer_floor=floor,
        variants=variant_table(record["recommended_by_variant"]),
        gate_rates=gate_rates(all_sweep),
        record=record,
        strata=strata,
        side_by_side=side_by_side,
    )


_FLUENCY_CI = ("perplexity", "human_perplexity", "kl_benign")
"""Fluency measures whose intervals the variants table shows (issue 27)."""


def variant_table(points: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per variant: its operating point and the figures of the half they come from.

    ``selection_emt`` is what the rule chose on; the other figures come from the point's
    ``figures_from`` half (the confirmation half), with alpha 0's beside them and the random
    control at equal fluency where there is one.
    """
    rows = []
    for name, point in points.items():
        miss = point.get("nearest_miss") or {}
        matched = point.get("control_matched_fluency") or {}
        rows.append(
            {
                "variant": name,
                "status": point.get("status", point.get("error")),
                "layer": point.get("layer", miss.get("layer")),
                "alpha": point.get("alpha", miss.get("alpha")),
                "selection_emt": (point.get("selection") or {}).get("expected_max_toxicity"),
                "figures_from": point.get("figures_from"),
                **{
                    name_: point.get(name_)
                    for name_ in (
                        "expected_max_toxicity",
                        "baseline_expected_max_toxicity",
                        "toxicity_probability",
                        "baseline_toxicity_probability",
                        "mean_toxicity",
                        "perplexity",
                        "baseline_perplexity",
                        "human_perplexity",
                        "kl_benign",
                    )
                },
                **{
                    f"{metric}_ci_{end}": (point.get(f"{metric}_ci") or [None, None])[i]
                    for metric in ("expected_max_toxicity", "mean_toxicity", *_FLUENCY_CI)
                    for i, end in enumerate(("low", "high"))
                },
                "emt_change": (point.get("relative_change") or {}).get("expected_max_toxicity"),
                "control_emt_equal_fluency": matched.get("expected_max_toxicity_control"),
                "control_alpha_equal_fluency": matched.get("control_alpha"),
                "control_emt_own_edge": (point.get("control_own_edge") or {}).get(
                    "expected_max_toxicity_control"
                ),
                "recommended": False,
            }
        )
    table = pd.DataFrame(rows)
    chosen = [n for n, p in points.items() if "Across steering variants" in str(p.get("rule"))]
    if chosen:
        table.loc[table["variant"] == chosen[0], "recommended"] = True
    return table


def _variant_points(
    run: Run,
    prompts: pd.DataFrame,
    baseline: pd.DataFrame,
    sweep: pd.DataFrame,
    kl: pd.DataFrame,
    floor: float | None,
    rule: dict[str, Any],
    options: dict[str, Any],
    variants: list[str],
    edges: Mapping[tuple[str, int], float] | None = None,
) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """Summary and operating point of every variant but ``"caa"``, each as plain CAA's.

    Each variant's rows are analysed with its own matched control: the random direction's
    rows made under the variant's hook and at its alphas (``direction == "random"`` rows of
    the variant), so its operating point is chosen on the selection half under the same rule
    and its confirmation-half figures come with its own control at equal alpha and at equal
    fluency (paired per prompt, :mod:`steerlib.evaluate.controls`). A run made before variants had
    their own controls falls back on plain CAA's; the point's ``control_of`` names the
    variant whose random rows were used.
    """
    p = run.params
    out: dict[str, tuple[pd.DataFrame, dict[str, Any]]] = {}
    for name in variants:
        if name == "caa" or not (sweep["variant"] == name).any():
            continue
        control_of = name if _has_own_control(sweep, name) else "caa"
        control_rows = (sweep["variant"] == control_of) & (sweep["direction"] == "random")
        control_kl = (kl["variant"] == control_of) & (kl["direction"] == "random")
        own = sweep["direction"] != "random"
        rows = sweep[((sweep["variant"] == name) & own) | control_rows].drop(columns="variant")
        evaluation = _evaluation(prompts, baseline, rows, p.seed)
        own_kl = kl["direction"] != "random"
        kl_rows = kl[((kl["variant"] == name) & own_kl) | control_kl].drop(columns="variant")
        # ablate/clamp rows past full removal (alpha > 1, from runs made before the range was
        # enforced) are inadmissible, with that reason
        from steerlib.steer.variants import variant

        cap = {"max_alpha": variant(name, multilayer_span=p.multilayer_span).max_alpha}
        summary, point = _operating_point(p, evaluation, kl_rows, floor, {**rule, **cap})
        if "layer" in point:
            own = _edges_of(edges or {}, control_of)
            point.update(_confirmed_controls(summary, evaluation, point, options, own))
        point["variant"] = name
        point["control_of"] = control_of
        out[name] = (summary.assign(variant=name), point)
    return out


def _edges_of(edges: Mapping[tuple[str, int], float], variant: str) -> dict[int, float]:
    """``variant``'s random control's own searched alpha by layer (see ``control_edges``)."""
    return {layer: alpha for (name, layer), alpha in edges.items() if name == variant}


def _has_own_control(sweep: pd.DataFrame, name: str) -> bool:
    """Whether variant ``name`` has steered random-direction rows of its own (alpha != 0)."""
    rows = sweep[(sweep["variant"] == name) & (sweep["direction"] == "random")]
    return bool((rows["alpha"].astype(float) != 0).any())


def _operating_point(
    p: Any,
    evaluation: pd.DataFrame,
    kl: pd.DataFrame,
    floor: float | None,
    rule: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The summary with its admissibility checks, and the point the rule chooses in it.

    The same for plain CAA and every other variant; a rule that finds nothing gives
    ``{"error": ...}`` instead of a point.
    """
    from steerlib.evaluate import metrics, operating_point

    summary = metrics.summarize(
        evaluation,
        threshold=p.toxicity_threshold,
        n_resamples=p.n_resamples,
        seed=p.seed,
        kl=kl.drop(columns=["n_tokens"], errors="ignore"),
        floor=floor,
    )
    summary = operating_point.admissibility(summary, **rule)
    try:
        return summary, operating_point.recommend_operating_point(summary, **rule)
    except SteerlibError as exc:
        return summary, {"error": str(exc)}


def pick_variant(points: dict[str, dict[str, Any]]) -> str:
    """The variant whose recommended point has the lowest selection-half EMT.

    Only the selection half decides (the confirmation half stays untouched by the choice);
    ties go to the variant listed first (plain ``"caa"`` first). Without any recommended point
    the answer is ``"caa"``. The chosen point's ``rule`` gains a sentence saying so.
    """
    winners = {
        name: float(point["selection"]["expected_max_toxicity"])
        for name, point in points.items()
        if point.get("status") == "recommended" and point.get("selection")
    }
    for name, point in points.items():
        point.setdefault("variant", name)
    if not winners:
        return "caa" if "caa" in points else next(iter(points))
    best = min(winners, key=lambda name: (winners[name], list(points).index(name)))
    if len(points) > 1:
        listed = ", ".join(f"{name} {emt:.4g}" for name, emt in winners.items())
        points[best]["rule"] = (
            f"{points[best].get('rule', '')} Across steering variants ({', '.join(points)}), "
            f"each with its own operating point under this rule, the one with the lowest "
            f"selection-half EMT is recommended: {best} (selection-half EMT: {listed})."
        ).strip()
    return best


def gate_rates(sweep: pd.DataFrame) -> pd.DataFrame:
    """How often the gated variant's gate fired, per subset, layer and alpha.

    Returns:
        ``subset``, ``layer``, ``alpha``, ``gate_fired``, ``gate_positions`` and
        ``fire_rate`` (their ratio: the share of steered content positions where the probe said
        toxic); empty without gated rows.
    """
    columns = ["subset", "layer", "alpha", "gate_fired", "gate_positions", "fire_rate"]
    if "gate_fired" not in sweep.columns:
        return pd.DataFrame(columns=columns)
    rows = sweep[sweep["gate_fired"].notna() & (sweep["alpha"] != 0)]
    if "direction" in rows.columns:  # the CAA direction's gate, not its matched control's
        rows = rows[rows["direction"] == "caa"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows.groupby(["subset", "layer", "alpha"], as_index=False)[
        ["gate_fired", "gate_positions"]
    ].sum()
    return table.assign(fire_rate=table["gate_fired"] / table["gate_positions"].clip(lower=1))


def _summary_record(
    run: Run,
    summary: pd.DataFrame,
    evaluation: pd.DataFrame,
    recommended: dict[str, Any],
    validity: dict[str, Any],
) -> dict[str, Any]:
    """The body of ``summary.json``: parameters, rows, the operating point, split, scorer."""
    from steerlib.evaluate.fluency import judge_name

    p = run.params
    return {
        "run_name": run.paths.name,
        "model": p.model,
        "scorer": p.scorer,
        "judge": judge_name(p.model, p.perplexity_model),
        "params": p.notebook_parameters(),
        "rows": json.loads(summary.to_json(orient="records")),
        "recommended": recommended,
        "split": {
            "seed": p.seed,
            "method": (
                "per subset, prompts ordered by BLAKE2b of (seed, prompt_id); the first "
                "half (rounded up) is the selection half"
            ),
            "n_prompts": _split_counts(evaluation),
        },
        "scorer_validity": validity,
        "scorer_auc": validity.get("all", {}).get("auc"),
        "scorer_auc_n_texts": validity.get("all", {}).get("n", 0),
    }


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON records ([] when empty)."""
    return json.loads(table.to_json(orient="records")) if len(table) else []


def _evaluation(
    prompts: pd.DataFrame, baseline: pd.DataFrame, sweep: pd.DataFrame, seed: int
) -> pd.DataFrame:
    """Baseline and sweep rows of the evaluation subsets, each with its half (``split``)."""
    from steerlib.evaluate import operating_point

    halves = eval_prompts(prompts)[["subset", "prompt_id"]]
    halves = halves.assign(split=operating_point.assign_split(halves, seed))
    evaluation = pd.concat(
        [baseline[baseline["subset"].isin(EVAL_SUBSETS)], sweep], ignore_index=True
    )
    return evaluation.drop(columns="split", errors="ignore").merge(
        halves, on=["subset", "prompt_id"], how="left"
    )


def compare_runs(run: Run, others: list[str]) -> pd.DataFrame:
    """Summary rows of this run and of ``others`` (finished runs), with their pair source.

    Used to compare vectors built from different contrastive sources (``pair_source``
    ``"prompts"`` against ``"completions"``) or any other parameter between runs.
    """
    tables = []
    for name in [run.paths.name, *others]:
        paths = RunPaths.for_run(name, run.paths.root.parent)
        if not paths.summary_table.is_file():
            raise DataError(
                f"run {name!r} has no summary: run its chain first "
                f"(python -m steerlib run --run-name {name} ...)."
            )
        params = paths.stored_params()
        table = pd.read_parquet(paths.summary_table)
        if "split" in table.columns:  # one row per setting: all prompts
            table = table[table["split"] == "all"]
        tables.append(table.assign(run_name=name, pair_source=params.get("pair_source")))
    return pd.concat(tables, ignore_index=True)
