"""Step 05's variant sweeps and the unit families one engine call makes.

A :class:`VariantSweep` is one steering variant's part of the sweep: its vectors and the
steering it is generated with, built once by :func:`variant_sweeps`. A :class:`UnitFamily`
is what one engine call makes for it: the grid (:func:`grid_family`) or one layer's searched
alpha (:func:`searched_family`). :func:`generate_family` is the one code path that generates
and scores them, in one process (:func:`steerlib.experiment.sweep.sweep_step`) and in the
torchrun workers that share the units out (:mod:`steerlib.experiment.workers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib.experiment.plan import SweepPlan, variant_prefix
from steerlib.experiment.run import Run
from steerlib.experiment.steps import eval_prompts, score
from steerlib.experiment.timings import phase
from steerlib.generate.generation import DecodingSettings

__all__ = [
    "UnitFamily",
    "VariantSweep",
    "direction_only",
    "family_keys",
    "generate_family",
    "grid_family",
    "searched_family",
    "searched_setting",
    "sweep_inputs",
    "variant_sweeps",
]


@dataclass(frozen=True)
class VariantSweep:
    """One steering variant's part of step 05: what its engine calls, search and KL get.

    Attributes:
        name: The variant (``"caa"``: plain addition).
        vectors: ``{direction: vector}`` swept for it (``"random"``: its matched control).
        steer: The ``variant`` and ``probe`` keyword arguments of the engine, the alpha search
            and the benign KL.
    """

    name: str
    vectors: dict[str, Any]
    steer: dict[str, Any]

    @property
    def prefix(self) -> str:
        """The key prefix of its grid units (see :func:`variant_prefix`)."""
        return variant_prefix(self.name)


@dataclass(frozen=True)
class UnitFamily:
    """The units one engine call makes: a variant's layers x alphas under one key prefix.

    Attributes:
        sweep: The variant.
        layers: Steered layers.
        alphas: Its alphas (the grid's, or one layer's searched alpha).
        folder: Where its unit files go (``sweep_parts/`` or ``sweep_parts/search/``).
        prefix: Prefix of its unit keys.
    """

    sweep: VariantSweep
    layers: list[int]
    alphas: list[float]
    folder: Path
    prefix: str


def sweep_inputs(run: Run) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The sweep's inputs: prompts, baseline and ``{direction: vector}``.

    Raises:
        DataError: A step before the sweep has not finished; the message names its notebook.
    """
    from steerlib.steer.vectors import SteeringVector

    prompts = pd.read_parquet(run.require("prompts"))
    baseline = pd.read_parquet(run.require("baseline"))
    vectors = {"caa": SteeringVector.load(run.require("vectors"))}
    if run.params.random_control:
        vectors["random"] = SteeringVector.load(run.require("control_vectors"))
    return prompts, baseline, vectors


def variant_sweeps(run: Run, plan: SweepPlan, vectors: dict[str, Any]) -> list[VariantSweep]:
    """Each variant of ``plan`` with its vectors and steering arguments, in the plan's order.

    A gated or clamped variant needs the run's probe and the CAA vector's clamp levels
    (:func:`steerlib.experiment.steps.variant_inputs`, which fits and saves a missing probe);
    the CAA vector with the clamp levels is then every variant's. Each variant's matched
    control is the random direction under the same hook: gated with the same probe, clamped
    to the levels of the random direction's own projections, multilayer over the same span.
    """
    from steerlib.experiment.steps import variant_inputs
    from steerlib.steer.operators import OPERATORS
    from steerlib.steer.variants import variant

    probe = None
    ops = [OPERATORS[name] for name in plan.variants]
    clamped = any(op.needs_clamp_levels for op in ops)
    if clamped or any(op.needs_probe for op in ops):
        probe, caa = variant_inputs(run, vectors["caa"])
        vectors = {**vectors, "caa": caa}
        if "random" in vectors and clamped:
            _, random = variant_inputs(run, vectors["random"])
            vectors["random"] = random
    sweeps = []
    for name in plan.variants:
        chosen = variant(name, multilayer_span=run.params.multilayer_span)
        sweeps.append(
            VariantSweep(
                name=name,
                vectors={d: vectors[d] for d in plan.directions_of(name)},
                steer={"variant": None if name == "caa" else chosen, "probe": probe},
            )
        )
    return sweeps


def direction_only(sweep: VariantSweep, direction: str) -> VariantSweep:
    """``sweep`` with ``direction``'s vector alone (the random control at its own edge)."""
    return VariantSweep(sweep.name, {direction: sweep.vectors[direction]}, sweep.steer)


def grid_family(run: Run, plan: SweepPlan, sweep: VariantSweep) -> UnitFamily:
    """The grid units of ``sweep``: every layer x the grid's steered alphas."""
    return UnitFamily(sweep, plan.layers, plan.alphas, run.paths.sweep_parts, sweep.prefix)


def family_keys(
    run: Run, tokenizer: Any, prompts: pd.DataFrame, family: UnitFamily, sizes: Any
) -> list[str]:
    """The keys of ``family``'s units, as :func:`generate_family` names them."""
    from steerlib.generate.partition import sweep_units

    decoding = DecodingSettings.of(run.params)
    units = sweep_units(
        eval_prompts(prompts),
        layers=family.layers,
        directions=list(family.sweep.vectors),
        tokens_per_unit=sizes.tokens_per_unit,
        alphas=family.alphas,
        samples_per_prompt=decoding.samples_per_prompt,
        max_new_tokens=decoding.max_new_tokens,
        tokenizer=tokenizer,
        prompt_format=decoding.prompt_format,
        key_prefix=family.prefix,
    )
    return [unit.key for unit in units]


def generate_family(
    run: Run,
    model: Any,
    tokenizer: Any,
    prompts: pd.DataFrame,
    family: UnitFamily,
    sizes: Any,
    *,
    done: set[str],
    write: Callable[[Path, pd.DataFrame], None],
    progress: bool = True,
) -> None:
    """Generate ``family``'s units not in ``done``; hand each, scored, to ``write``.

    ``write(path, table)`` gets the unit's file (``<folder>/<key>.parquet``) and its rows with
    the scores and the ``variant`` column.
    """
    from steerlib.generate.engine import run_sweep as engine_sweep

    def on_unit(unit: Any, table: pd.DataFrame) -> None:
        with phase("toxicity scoring"):
            scored = score(run, table).assign(variant=family.sweep.name)
        write(family.folder / f"{unit.key}.parquet", scored)

    engine_sweep(
        model,
        tokenizer,
        eval_prompts(prompts),
        family.sweep.vectors,
        layers=family.layers,
        alphas=family.alphas,
        settings=DecodingSettings.of(run.params),
        tokens_per_unit=sizes.tokens_per_unit,
        max_batch_rows=sizes.max_batch_rows,
        done=done,
        on_unit=on_unit,
        progress=progress,
        key_prefix=family.prefix,
        **family.sweep.steer,
    )


def searched_setting(
    alpha: float, grid: list[float], variant: str = "caa"
) -> tuple[float, str] | None:
    """The alpha a layer's edge is generated at and its units' key prefix; None: no units.

    An edge at alpha 0 or on a grid alpha generates nothing (those rows exist). Variants other
    than ``"caa"`` have their name in front (``<variant>-search-a...``).
    """
    alpha = round(alpha, 4)
    if alpha <= 0 or any(abs(alpha - a) < 1e-6 for a in grid):
        return None
    return alpha, f"{variant_prefix(variant)}search-a{alpha:g}-"


def searched_family(run: Run, sweep: VariantSweep, layer: int, edge: float) -> UnitFamily | None:
    """The units of ``layer`` at its searched ``edge`` for ``sweep``; None: no units."""
    setting = searched_setting(edge, run.params.alphas, sweep.name)
    if setting is None:
        return None
    alpha, prefix = setting
    return UnitFamily(sweep, [layer], [alpha], run.paths.search_parts, prefix)
