"""Step 05: the steering sweep, written unit by unit.

:func:`sweep_step` runs the step in one process: every variant's grid units
(:mod:`~steerlib.experiment.families`), then the alpha searches
(:mod:`~steerlib.experiment.alpha_search`), the sweep table, and the KL pass
(:mod:`~steerlib.experiment.kl_pass`). What the sweep covers is
:mod:`~steerlib.experiment.plan`; its unit files on disk, their settings and checksums are
:mod:`~steerlib.experiment.unit_files`. The torchrun workers (:mod:`steerlib.experiment.workers`)
share out the same units. Every name of those modules that callers use stays importable here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet
from steerlib.experiment.alpha_search import _step_back as _step_back
from steerlib.experiment.alpha_search import _write_trace as _write_trace
from steerlib.experiment.alpha_search import (
    alpha_search_table,
    control_edges,
    edge_key,
    grid_rows,
    held_out_prefixes,
    search_edge,
    search_texts,
    searched_alphas,
    searched_directions,
)
from steerlib.experiment.families import (
    UnitFamily,
    VariantSweep,
    direction_only,
    family_keys,
    generate_family,
    grid_family,
    searched_family,
    searched_setting,
    sweep_inputs,
    variant_sweeps,
)
from steerlib.experiment.kl_pass import KL_RESAMPLES, kl_passes, kl_table
from steerlib.experiment.plan import SweepPlan, sweep_plan, variant_prefix, with_variant
from steerlib.experiment.run import Run
from steerlib.experiment.steps import EVAL_SUBSETS
from steerlib.experiment.timings import GRID_PHASE, phase, recording
from steerlib.experiment.unit_files import (
    check_unit_settings,
    generation_settings,
    prepare_units,
    read_unit,
    saved_units,
    stamp_old_units,
    starts_afresh,
    unit_sizes,
)
from steerlib.generate.steered import STEERED_COLUMN

_grid_rows = grid_rows  # the old private names, which tests import from here

__all__ = [
    "KL_RESAMPLES",
    "SweepPlan",
    "UnitFamily",
    "VariantSweep",
    "alpha_search_table",
    "check_unit_settings",
    "control_edges",
    "direction_only",
    "edge_key",
    "family_keys",
    "generate_family",
    "generation_settings",
    "grid_family",
    "held_out_prefixes",
    "prepare_units",
    "read_unit",
    "run_sweep",
    "saved_units",
    "search_edge",
    "search_texts",
    "searched_directions",
    "searched_family",
    "searched_setting",
    "stamp_old_units",
    "starts_afresh",
    "sweep_inputs",
    "sweep_plan",
    "sweep_step",
    "unit_sizes",
    "variant_prefix",
    "variant_sweeps",
    "with_variant",
]


def sweep_step(
    run: Run, *, force: bool = False, edges: Mapping[tuple[str, int], Any] | None = None
) -> pd.DataFrame:
    """Step 05: every (variant, layer, alpha, direction) on both subsets, written unit by unit.

    The step drives the sweep engine (:func:`steerlib.generate.engine.run_sweep`, public as
    ``steerlib.run_sweep``); it was itself called ``run_sweep`` before (a deprecated alias).

    Each unit of the sweep engine is scored and written to ``sweep_parts/<key>.parquet``
    atomically as soon as it is generated; a re-run skips the units already on disk, and the
    seeds derive from the unit keys, so a resumed sweep equals an uninterrupted one.

    Alpha 0 is the unsteered model whatever the layer or direction, so it is not generated
    again: its rows are step 02's completions, repeated under every (direction, layer). That
    saves one alpha's share of the sweep, and every layer is compared against the same
    unsteered samples.

    Args:
        run: The run.
        force: Recompute the step (the saved units go).
        edges: Alpha searches already made, by ``(variant, layer)``
            (:class:`~steerlib.evaluate.search.AlphaSearch`; the torchrun workers share them out);
            the others are searched here.
    """
    from steerlib.data.subsets import held_out_halves
    from steerlib.models.layers import num_layers

    paths, p = run.paths, run.params
    if not force and run.done("05_sweep", paths.sweep, paths.kl):
        return pd.read_parquet(paths.sweep)
    fresh = starts_afresh(run, force=force)
    prompts, baseline, vectors = sweep_inputs(run)
    with run.step("05_sweep"), recording(paths, "05_sweep"):
        with phase("setup"):
            model, tokenizer = run.model()
            vectors["caa"].check_compatible(model)
            plan = sweep_plan(p, num_layers(model))
            sweeps = variant_sweeps(run, plan, vectors)
            prepare_units(run, fresh=fresh)
            saved = saved_units(paths.sweep_parts, plan.alphas)
            sizes = unit_sizes(run, model, tokenizer, prompts)
        counts = {"rows": sum(len(table) for table in saved.values())}

        def write(path: Path, table: pd.DataFrame) -> None:
            atomic_write_parquet(path, table)
            saved[path.stem] = table
            counts["rows"] += len(table)
            paths.set_status("05_sweep", "partial", rows=counts["rows"], units_done=path.stem)

        with phase(GRID_PHASE):
            for sweep in sweeps if plan.alphas else []:
                family = grid_family(run, plan, sweep)
                # ``set(saved)`` is a copy: ``write`` adds to ``saved`` as units finish.
                generate_family(
                    run, model, tokenizer, prompts, family, sizes, done=set(saved), write=write
                )
        held_out = held_out_halves(prompts[prompts["role"] == "kl_benign"], p.seed)
        searches = len(plan.layers) * sum(len(searched_directions(run, s)) for s in sweeps)
        bases: dict[Any, Any] = {}  # the search texts' unsteered passes, for every search
        with phase("alpha search", total=searches if p.alpha_search else None):
            searched = (
                pd.concat(
                    [
                        searched_alphas(
                            run,
                            model,
                            tokenizer,
                            prompts,
                            sweep,
                            plan,
                            search_texts(prompts, p.seed),
                            sizes,
                            edges or {},
                            baseline=baseline,
                            grid=grid_rows(saved),
                            bases=bases,
                        )
                        for sweep in sweeps
                    ],
                    ignore_index=True,
                )
                if p.alpha_search
                else pd.DataFrame()
            )
        bases.clear()
        with phase("assembly"):
            table = _sweep_table(saved, searched, baseline, plan, p.alphas)
            atomic_write_parquet(paths.sweep, table)
        passes = sum(kl_passes(held_out, plan, searched, sweep) for sweep in sweeps)
        with phase("KL pass", total=passes):
            kl = pd.concat(
                [kl_table(run, held_out, plan, searched, sweep) for sweep in sweeps],
                ignore_index=True,
            )
            atomic_write_parquet(paths.kl, kl)
    return table


def _sweep_table(
    saved: dict[str, pd.DataFrame],
    searched: pd.DataFrame,
    baseline: pd.DataFrame,
    plan: SweepPlan,
    alphas: list[float],
) -> pd.DataFrame:
    """The sweep's rows: saved units of the plan, searched alphas, alpha 0 from the baseline."""
    # Units of layers, directions or variants the run no longer asks for stay on disk, unused.
    parts = []
    for _, table in sorted(saved.items()):
        table = with_variant(table)
        parts.append(
            table[
                table["layer"].isin(plan.layers)
                & table["direction"].isin(plan.directions)
                & table["variant"].isin(plan.variants)
            ]
        )
    if len(searched):
        parts.append(with_variant(searched))
    if 0 in alphas:
        unsteered = baseline[baseline["subset"].isin(EVAL_SUBSETS)]
        # Alpha 0 of a steered setting (steered=True), though generated without steering.
        setting = {"alpha": 0.0, STEERED_COLUMN: True}
        parts += [
            unsteered.assign(layer=int(layer), direction=direction, variant=variant, **setting)
            for variant in plan.variants
            for direction in plan.directions_of(variant)
            for layer in plan.layers
        ]
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(
        ["variant", "subset", "direction", "layer", "alpha", "prompt_id", "sample"], kind="stable"
    ).reset_index(drop=True)


def run_sweep(
    run: Run, *, force: bool = False, edges: Mapping[tuple[str, int], Any] | None = None
) -> pd.DataFrame:
    """Deprecated name of :func:`sweep_step` (step 05); kept for one release.

    ``steerlib.run_sweep`` is the sweep engine (:func:`steerlib.generate.engine.run_sweep`),
    a different function; the step was renamed so that the two names say different things.
    """
    warnings.warn(
        "steerlib.experiment.sweep.run_sweep (step 05) is renamed sweep_step: call "
        "steerlib.pipeline.sweep_step(run) or steerlib.experiment.sweep.sweep_step(run); the old "
        "name goes in the next release (steerlib.run_sweep, the sweep engine, is unchanged).",
        DeprecationWarning,
        stacklevel=2,
    )
    return sweep_step(run, force=force, edges=edges)
