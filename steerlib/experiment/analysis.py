"""Step 06: RTP metrics with bootstrap intervals, the controls, the operating point, figures.

:func:`analyze` assembles the evaluation table (baseline and sweep, each prompt in its
selection or confirmation half; :mod:`steerlib.experiment.evaluation`), summarizes it
(:mod:`steerlib.evaluate.metrics`), applies the operating-point rule
(:mod:`steerlib.evaluate.operating_point`) to plain CAA and every other variant
(:mod:`steerlib.experiment.variant_points`), compares with the random control
(:mod:`steerlib.evaluate.controls`, :mod:`steerlib.experiment.point_controls`), and draws the
figures into the run's ``figures/`` folder (:func:`steerlib.experiment.figures.render_figures`,
from the products it has just written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_json, atomic_write_parquet
from steerlib.errors import DataError
from steerlib.experiment.evaluation import (
    analysis_rule,
    evaluation_table,
    operating_point_for,
    split_counts,
)
from steerlib.experiment.examples import example_completions
from steerlib.experiment.figures import figure_layer, render_figures, write_figures
from steerlib.experiment.point_controls import confirmed_controls
from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.variant_points import (
    edges_of,
    gate_rates,
    pick_variant,
    variant_points,
    variant_table,
)
from steerlib.experiment.verdict import verdict

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

_confirmed_controls = confirmed_controls  # the name tests and older callers use


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
            (:func:`~steerlib.experiment.examples.example_completions`).
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


def analyze(run: Run, *, force: bool = False, save_figures: bool = True) -> Analysis:
    """Step 06: RTP metrics with bootstrap intervals, controls, the operating point, figures.

    The evaluation prompts of each subset are split into a selection and a confirmation half
    (:func:`operating_point.assign_split`, seeded by the run's ``seed``); the summary has rows
    over all prompts and over each half. The operating point is chosen on the selection half
    (:func:`operating_point.recommend_operating_point`) and its figures, with the random
    control at the same point, are read from the confirmation half. The analysis always runs
    (it is cheap); ``force`` is accepted for symmetry with the other steps.
    """
    from steerlib.evaluate import operating_point
    from steerlib.evaluate.scoring import scorer_floor
    from steerlib.experiment.scorer_checks import two_scorer_products
    from steerlib.experiment.sweep import control_edges

    del force
    paths, p = run.paths, run.params
    all_sweep, all_kl, baseline, prompts = _products(run)
    # Plain CAA (with the random control) goes through the analysis as before; the other
    # variants are analysed the same way after it (:func:`variant_points`).
    sweep = all_sweep[all_sweep["variant"] == "caa"].drop(columns="variant")
    kl = all_kl[all_kl["variant"] == "caa"].drop(columns="variant")
    with run.step("06_analysis"):
        evaluation = evaluation_table(prompts, baseline, sweep, p.seed)
        floor = scorer_floor(run.scorer())
        rule = analysis_rule(p)
        summary, recommended = operating_point_for(p, evaluation, kl, floor, rule)
        measure, measure_note = operating_point.resolve_fluency_measure(summary, p.fluency_measure)
        overall = summary[summary["split"] == "all"]
        options = {"n_resamples": p.n_resamples, "seed": p.seed}
        control, matched = _controls(overall, evaluation, measure, options)
        edges = control_edges(paths)
        if "layer" in recommended:
            own = edges_of(edges, "caa")
            recommended.update(confirmed_controls(summary, evaluation, recommended, options, own))
            recommended["control_of"] = "caa"
        points = {"caa": (summary.assign(variant="caa"), recommended)}
        points.update(
            variant_points(
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


def _products(run: Run) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The products step 06 reads: sweep and kl (each with ``variant``), baseline, prompts."""
    from steerlib.experiment.sweep import with_variant

    all_sweep = with_variant(pd.read_parquet(run.require("sweep")))
    all_kl = with_variant(pd.read_parquet(run.require("kl")))
    baseline = pd.read_parquet(run.require("baseline"))
    prompts = pd.read_parquet(run.require("prompts"))
    run.require("vectors")  # the figures draw it
    return all_sweep, all_kl, baseline, prompts


def _controls(
    overall: pd.DataFrame, evaluation: pd.DataFrame, measure: str, options: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CAA against the random control on all prompts: at equal alpha, and at equal fluency."""
    from steerlib.evaluate import controls

    if "random" not in set(overall["direction"]):
        return pd.DataFrame(), pd.DataFrame()
    control = controls.delta_vs_control(overall, evaluation, **options)
    matched = controls.fluency_matched_control(overall, evaluation, fluency=measure, **options)
    return control, matched


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
            "n_prompts": split_counts(evaluation),
        },
        "scorer_validity": validity,
        "scorer_auc": validity.get("all", {}).get("auc"),
        "scorer_auc_n_texts": validity.get("all", {}).get("n", 0),
    }


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON records ([] when empty)."""
    return json.loads(table.to_json(orient="records")) if len(table) else []


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
