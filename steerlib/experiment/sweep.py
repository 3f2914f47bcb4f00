"""Step 05: the steering sweep, written unit by unit, and its plan.

:func:`sweep_plan` says which layers, directions and alphas a run's sweep covers and how it
is cut into units; the sweep step and ``python -m steerlib status`` both use it. The units
are written to ``sweep_parts/`` as they finish, with the generation settings they were made
with (``sweep_parts/settings.json``): a resumed or extended sweep refuses units made with
other settings. The step's helpers (:func:`variant_sweeps`, :func:`grid_family`,
:func:`search_edge`, :func:`searched_family`, :func:`generate_family`) serve both one process
(:func:`run_sweep`) and the torchrun workers that share the units out
(:mod:`steerlib.experiment.workers`).

Over 500 lines because the grid, each variant's alpha search with its step back and its
control's own search, and the KL pass are one resumable step; splitting it belongs to the
layered-subpackage work (issue 24), which moves these pieces into their own modules.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet, read_checked_parquet
from steerlib.errors import ConfigError
from steerlib.evaluate.admissibility import kl_budget
from steerlib.experiment.config import RunParams, short_repr
from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.steps import EVAL_SUBSETS, eval_prompts, score
from steerlib.generate.generation import DecodingSettings

__all__ = [
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
    "unit_sizes",
    "variant_prefix",
    "variant_sweeps",
    "with_variant",
]


@dataclass(frozen=True)
class SweepPlan:
    """What a run's sweep covers.

    Attributes:
        layers: Steered layers (``"all"`` and negative indices resolved).
        directions: Vector names: ``"caa"``, and ``"random"`` with the random control.
        alphas: The steered alphas of the grid (alpha 0 comes from the baseline).
        variants: Steering variants (:mod:`steerlib.steer.variants`); each runs with its own
            random control (its ``"random"`` direction, under its own hook).
    """

    layers: list[int]
    directions: list[str]
    alphas: list[float]
    variants: tuple[str, ...] = ("caa",)

    def directions_of(self, variant: str) -> list[str]:
        """The directions swept for ``variant``: every variant has its matched control."""
        del variant
        return self.directions

    def units(self, prompts: pd.DataFrame, params: RunParams, tokenizer: Any = None) -> list[Any]:
        """The sweep's units over the evaluation rows of ``prompts`` (the engine's partition).

        Unit keys do not depend on prompt lengths, so ``tokenizer`` may be left out to count
        or name units without loading one.
        """
        from steerlib.generate.partition import sweep_units

        rows = prompts[prompts["role"].isin(EVAL_SUBSETS)] if "role" in prompts else prompts
        return [
            unit
            for variant in self.variants
            for unit in sweep_units(
                rows,
                layers=self.layers,
                directions=self.directions_of(variant),
                alphas=self.alphas,
                samples_per_prompt=params.samples_per_prompt,
                max_new_tokens=params.max_new_tokens,
                tokenizer=tokenizer,
                prompt_format=params.prompt_format if tokenizer is not None else "raw",
                key_prefix=variant_prefix(variant),
            )
        ]


def sweep_plan(params: RunParams, num_layers: int) -> SweepPlan:
    """The sweep of ``params`` on a model with ``num_layers`` layers.

    Raises:
        ConfigError: A layer out of range.
    """
    from steerlib.models.layers import resolve_layers

    return SweepPlan(
        layers=resolve_layers(num_layers, params.layers),
        directions=["caa", "random"] if params.random_control else ["caa"],
        alphas=[float(alpha) for alpha in params.alphas if alpha != 0],
        variants=tuple(params.variants),
    )


def variant_prefix(variant: str) -> str:
    """Prefix of a variant's unit keys: ``"<variant>-"``, none for ``"caa"`` (old keys)."""
    return "" if variant == "caa" else f"{variant}-"


def generation_settings(params: RunParams) -> dict[str, Any]:
    """What shapes a sweep unit's rows besides its direction, layer and alphas."""
    values = params.notebook_parameters()
    return {
        "model": values["model"],
        **DecodingSettings.of(params).as_kwargs(),
        "scorer": values["scorer"],
        "perplexity_model": values["perplexity_model"],
    }


def check_unit_settings(paths: RunPaths, params: RunParams) -> None:
    """Refuse to resume units made with other generation settings; record them otherwise.

    A sweep whose units predate the record (made before settings were stored) adopts the
    current settings.

    Raises:
        ConfigError: One line naming each differing setting, with both values.
    """
    wanted = generation_settings(params)
    recorded = paths.read_unit_settings()
    if recorded is not None:
        differ = [k for k in wanted if k in recorded and recorded[k] != wanted[k]]
        if differ:
            listed = ", ".join(
                f"{k} {short_repr(recorded[k], 60)} -> {short_repr(wanted[k], 60)}" for k in differ
            )
            raise ConfigError(
                f"the saved sweep units of run {paths.name!r} were made with other settings "
                f"({listed}): rerun the sweep with force=True (`python -m steerlib run "
                "--force`) or use a new run_name."
            )
    if recorded != wanted:
        paths.sweep_parts.mkdir(parents=True, exist_ok=True)
        paths.write_unit_settings(wanted)


# -- 05 sweep --------------------------------------------------------------------------------
# The helpers below are step 05's one code path: :func:`run_sweep` calls them in one process,
# and the torchrun workers (:mod:`steerlib.experiment.workers`) share out the same units.
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
    from steerlib.steer.variants import variant

    probe = None
    if set(plan.variants) & {"gated", "clamp"}:
        probe, caa = variant_inputs(run, vectors["caa"])
        vectors = {**vectors, "caa": caa}
        if "random" in vectors and "clamp" in plan.variants:
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


def starts_afresh(run: Run, *, force: bool = False) -> bool:
    """Whether the saved units must go: ``force``, or a stale sweep that may not resume."""
    record = run.paths.read_status().get("05_sweep", {})
    return force or (record.get("state") == "stale" and not record.get("resume", False))


def prepare_units(run: Run, *, fresh: bool) -> None:
    """Remove the saved units when ``fresh``; check (or record) the settings of the rest."""
    if fresh and run.paths.sweep_parts.exists():
        shutil.rmtree(run.paths.sweep_parts)
    check_unit_settings(run.paths, run.params)


def unit_sizes(run: Run, model: Any, tokenizer: Any, prompts: pd.DataFrame) -> Any:
    """The step's unit and batch sizes (:func:`steerlib.generate.engine.sweep_sizes`), chosen once.

    Every engine call of the step gets them, so its units are named alike however many calls
    (or workers) make them; on a CPU they are the engine's fixed defaults.
    """
    from steerlib.generate.engine import sweep_sizes

    return sweep_sizes(
        model,
        tokenizer,
        eval_prompts(prompts),
        max_new_tokens=run.params.max_new_tokens,
        prompt_format=run.params.prompt_format,
    )


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
        scored = score(run, table).assign(variant=family.sweep.name)
        write(family.folder / f"{unit.key}.parquet", scored)

    engine_sweep(
        model,
        tokenizer,
        eval_prompts(prompts),
        family.sweep.vectors,
        layers=family.layers,
        alphas=family.alphas,
        **DecodingSettings.of(run.params).as_kwargs(),
        tokens_per_unit=sizes.tokens_per_unit,
        max_batch_rows=sizes.max_batch_rows,
        done=done,
        on_unit=on_unit,
        progress=progress,
        key_prefix=family.prefix,
        **family.sweep.steer,
    )


def held_out_prefixes(run: Run, texts: list[str], sweep: VariantSweep) -> list[str | None] | None:
    """The prompt part of each held-out text, for a variant judged teacher-forced; else None.

    A variant that steers generated positions only (``caa_generated``) is judged with its own
    positions (:func:`steerlib.evaluate.fluency.benign_kl`): each text's prompt (the ``prompt`` of
    the
    row of ``prompts.parquet`` whose :func:`~steerlib.data.subsets.pair_texts` text it is) is left
    unsteered. A text found in no row gets ``None`` (split at half its tokens).
    """
    from steerlib.data.subsets import pair_texts

    chosen = sweep.steer.get("variant")
    if chosen is None or chosen.positions != "generated":
        return None
    prompts = pd.read_parquet(run.require("prompts"))
    prompt_of = dict(zip(pair_texts(prompts), prompts["prompt"], strict=True))
    return [prompt_of.get(text) for text in texts]


def search_edge(
    run: Run,
    model: Any,
    tokenizer: Any,
    kl_texts: list[str],
    sweep: VariantSweep,
    layer: int,
    direction: str = "caa",
) -> Any:
    """The budget edge of ``layer`` for ``sweep``'s variant (the run's rule, on ``direction``).

    See :func:`steerlib.evaluate.search.search_alpha`; ``ablate`` and ``clamp`` are searched on
    ``[0, 1]``, ``caa_generated`` teacher-forced (:func:`held_out_prefixes`). The random
    direction (``direction="random"``, :func:`searched_directions`) is searched exactly as
    the CAA vector: same hook (gated probe, its own clamp level, multilayer span), budget
    (KL included), texts and cap.
    """
    from steerlib.evaluate.search import search_alpha

    p = run.params
    return search_alpha(
        model,
        tokenizer,
        kl_texts,
        sweep.vectors[direction],
        layer,
        max_increase=p.max_perplexity_increase,
        start=max((a for a in p.alphas if a > 0), default=1.0),
        units=p.units,
        prefixes=held_out_prefixes(run, kl_texts, sweep),
        max_kl=kl_budget(p.max_perplexity_increase, p.max_kl_benign),
        **sweep.steer,
    )


def searched_directions(run: Run, sweep: VariantSweep) -> list[str]:
    """The directions whose budget edge is searched for ``sweep``.

    ``"caa"``, and ``"random"`` with ``control_search`` (and the random control).
    """
    chosen = ["caa"]
    if run.params.control_search and "random" in sweep.vectors:
        chosen.append("random")
    return chosen


def edge_key(variant: str, layer: int, direction: str = "caa") -> tuple[Any, ...]:
    """The key of an alpha search in ``edges`` (:func:`run_sweep`).

    ``(variant, layer)`` for the CAA vector, ``(variant, layer, direction)`` for another one.
    """
    return (variant, layer) if direction == "caa" else (variant, layer, direction)


def direction_only(sweep: VariantSweep, direction: str) -> VariantSweep:
    """``sweep`` with ``direction``'s vector alone (the random control at its own edge)."""
    return VariantSweep(sweep.name, {direction: sweep.vectors[direction]}, sweep.steer)


def search_texts(prompts: pd.DataFrame, seed: int) -> list[str]:
    """The search half of the held-out benign texts (see ``held_out_halves``)."""
    from steerlib.data.subsets import held_out_halves

    texts, halves = held_out_halves(prompts[prompts["role"] == "kl_benign"], seed)
    return [text for text, half in zip(texts, halves, strict=True) if half == "selection"]


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


def run_sweep(
    run: Run, *, force: bool = False, edges: Mapping[tuple[str, int], Any] | None = None
) -> pd.DataFrame:
    """Step 05: every (variant, layer, alpha, direction) on both subsets, written unit by unit.

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
    with run.step("05_sweep"):
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

        for sweep in sweeps if plan.alphas else []:
            family = grid_family(run, plan, sweep)
            # ``set(saved)`` is a copy: ``write`` adds to ``saved`` as units finish.
            generate_family(
                run, model, tokenizer, prompts, family, sizes, done=set(saved), write=write
            )
        held_out = held_out_halves(prompts[prompts["role"] == "kl_benign"], p.seed)
        searched = (
            pd.concat(
                [
                    _searched_alphas(
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
                        grid=_grid_rows(saved),
                    )
                    for sweep in sweeps
                ],
                ignore_index=True,
            )
            if p.alpha_search
            else pd.DataFrame()
        )
        table = _sweep_table(saved, searched, baseline, plan, p.alphas)
        atomic_write_parquet(paths.sweep, table)
        kl = pd.concat(
            [_kl_table(run, held_out, plan, searched, sweep) for sweep in sweeps],
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
        parts += [
            unsteered.assign(layer=int(layer), direction=direction, alpha=0.0, variant=variant)
            for variant in plan.variants
            for direction in plan.directions_of(variant)
            for layer in plan.layers
        ]
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(
        ["variant", "subset", "direction", "layer", "alpha", "prompt_id", "sample"], kind="stable"
    ).reset_index(drop=True)


def with_variant(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``variant`` column; rows of runs made before variants read as ``caa``."""
    if "variant" not in table.columns:
        return table.assign(variant="caa")
    return table.assign(variant=table["variant"].fillna("caa"))


KL_RESAMPLES = 2000
"""Bootstrap resamples of the held-out texts' intervals (fixed: step 05 does not read
``n_resamples``, so changing it does not redo the sweep)."""


def _kl_table(
    run: Run,
    held_out: tuple[list[str], list[str]],
    plan: SweepPlan,
    searched: pd.DataFrame,
    sweep: VariantSweep,
) -> pd.DataFrame:
    """Benign KL and human-text perplexity of ``sweep``'s variant, with intervals.

    At every grid setting and every searched alpha; on all held-out texts and on each half
    (``split``: the search half is ``"selection"``, the report half ``"confirmation"``).
    """
    from steerlib.evaluate.fluency import benign_kl

    model, tokenizer = run.model()
    texts, halves = held_out
    options = {
        "units": run.params.units,
        "prefixes": held_out_prefixes(run, texts, sweep),
        "halves": halves,
        "n_resamples": KL_RESAMPLES,
        "seed": run.params.seed,
        **sweep.steer,
    }
    kl = benign_kl(
        model,
        tokenizer,
        texts,
        sweep.vectors,
        layers=plan.layers,
        alphas=run.params.alphas,
        **options,
    )
    if len(searched):
        searched = with_variant(searched)
        searched = searched[searched["variant"] == sweep.name]
    extra = (
        searched[["layer", "alpha"]].drop_duplicates().itertuples(index=False)
        if len(searched)
        else []
    )
    tables = [kl] + [
        benign_kl(
            model, tokenizer, texts, sweep.vectors, layers=[int(layer)], alphas=[alpha], **options
        )
        for layer, alpha in extra
    ]
    return pd.concat(tables, ignore_index=True).assign(variant=sweep.name)


def _searched_alphas(
    run: Run,
    model: Any,
    tokenizer: Any,
    prompts: pd.DataFrame,
    sweep: VariantSweep,
    plan: SweepPlan,
    kl_texts: list[str],
    sizes: Any,
    edges: Mapping[tuple[Any, ...], Any],
    baseline: pd.DataFrame | None = None,
    grid: Callable[[str, int, float], pd.DataFrame | None] | None = None,
) -> pd.DataFrame:
    """Search each layer's budget edge for ``sweep``'s variant, then generate it at that alpha.

    The edge is found on the CAA vector with the steered model's perplexity (and KL) on the
    search half of the held-out benign texts (:func:`search_edge`; one given in ``edges`` is
    taken as found); the variant's random control is generated at the same alpha under the
    same hook, so every searched setting has its matched equal-alpha control. Units go to
    ``sweep_parts/search/`` under keys that name the alpha (a changed budget makes new keys;
    finished ones are kept and resumed), and the trace to ``alpha_search.parquet``.

    **Step back.** The edge is then checked against the benign continuations of the selection
    half (their mean perplexity under the judge, against alpha 0's from ``baseline``, budget
    ``max_perplexity_increase``). When it breaks the budget, the search bisects between 0
    (within budget by definition) and the edge: it generates the midpoint, keeps it as the new
    lower end when within budget and as the new upper end otherwise, ``search_step_backs``
    times; the layer's chosen alpha is the last lower end (0: none found). Every alpha
    generated stays in the sweep (the rule judges each), and the trace records each check
    (``stage`` ``"step_back"``, ``benign_continuation_perplexity`` and its ``benign_budget``).
    An edge or midpoint on a grid alpha is judged from its grid rows (``grid``).

    **The control's own search** (``control_search``, :func:`searched_directions`): the
    variant's random direction is searched the same way (same hook, budget, texts, cap and
    step back, judged on its own rows) and generated alone at its own edge, so the analysis
    can compare each variant with its control at equal alpha and at the control's own budget
    edge. The trace's ``direction`` column says which vector each row searched.

    Returns:
        The scored rows at the searched alphas (none for a layer whose edge is alpha 0 or
        coincides with a grid alpha). Every variant has its own search and its own random
        control. Variants other than ``"caa"`` write their units and trace rows under their
        name (``<variant>-search-a...``).
    """
    paths, p = run.paths, run.params
    traces: list[pd.DataFrame] = []
    tables: dict[str, pd.DataFrame] = {}  # by unit key: an alpha reached twice counts once
    paths.search_parts.mkdir(parents=True, exist_ok=True)
    check = _continuation_check(run, prompts, baseline) if p.search_step_backs else None

    def generator(direction: str) -> Callable[[int, float], pd.DataFrame | None]:
        # The CAA edge brings its equal-alpha control; the control's own edge comes alone.
        family_of = sweep if direction == "caa" else direction_only(sweep, direction)

        def generate_at(layer: int, alpha: float) -> pd.DataFrame | None:
            family = searched_family(run, family_of, layer, alpha)
            if family is None:  # alpha 0 (nothing to judge) or a grid alpha (its grid rows)
                return grid(sweep.name, layer, alpha) if grid is not None and alpha > 0 else None
            pattern = f"{family.prefix}{direction}-L{layer}-*.parquet"
            if direction == "caa":
                pattern = f"{family.prefix}*-L{layer}-*.parquet"
            found = sorted(paths.search_parts.glob(pattern))
            saved = {path.stem: read_unit(path) for path in found}

            def write(path: Path, table: pd.DataFrame, saved: dict = saved) -> None:
                atomic_write_parquet(path, table)
                saved[path.stem] = table

            generate_family(
                run, model, tokenizer, prompts, family, sizes, done=set(saved), write=write
            )
            rows = {k: with_variant(t).assign(variant=sweep.name) for k, t in saved.items()}
            tables.update(rows)
            return pd.concat(rows.values(), ignore_index=True)

        return generate_at

    for direction in searched_directions(run, sweep):
        generate_at = generator(direction)
        for layer in plan.layers:
            found = edges.get(edge_key(sweep.name, layer, direction))
            if found is None:
                found = search_edge(run, model, tokenizer, kl_texts, sweep, layer, direction)
            rows = generate_at(layer, found.alpha)
            chosen, steps = found.alpha, []
            if check is not None and rows is not None:

                def judge(rows: pd.DataFrame, direction: str = direction) -> tuple[float, float]:
                    return check(rows, direction)

                chosen, steps = _step_back(judge, generate_at, layer, found.alpha, rows, p)
            labels = {
                "layer": layer,
                "chosen": chosen,
                "budget": found.budget,
                "variant": sweep.name,
                "direction": direction,
            }
            traces.append(found.trace.assign(**labels, stage="search"))
            if steps:
                traces.append(pd.DataFrame(steps).assign(**labels))
    _write_trace(paths, sweep.name, pd.concat(traces, ignore_index=True))
    return pd.concat(tables.values(), ignore_index=True) if tables else pd.DataFrame()


def _grid_rows(
    saved: Mapping[str, pd.DataFrame],
) -> Callable[[str, int, float], pd.DataFrame | None]:
    """``(variant, layer, alpha) -> rows`` of the saved grid units there (None: none)."""

    def rows_at(variant: str, layer: int, alpha: float) -> pd.DataFrame | None:
        parts = []
        for table in saved.values():
            table = with_variant(table)
            at = (
                (table["variant"] == variant)
                & (table["layer"] == layer)
                & ((table["alpha"].astype(float) - alpha).abs() < 1e-6)
            )
            if at.any():
                parts.append(table[at])
        return pd.concat(parts, ignore_index=True) if parts else None

    return rows_at


def _continuation_check(
    run: Run, prompts: pd.DataFrame, baseline: pd.DataFrame | None
) -> Callable[..., tuple[float, float]] | None:
    """``(rows, direction) -> (benign continuation perplexity, its budget)``, selection half.

    Judged on ``direction``'s rows (default ``"caa"``). None without a baseline with
    perplexities (nothing to compare with).
    """
    from steerlib.evaluate.metrics import PERPLEXITY_CAP
    from steerlib.evaluate.operating_point import assign_split

    if baseline is None or "perplexity" not in baseline.columns:
        return None
    benign = eval_prompts(prompts)
    benign = benign[benign["subset"] == "benign"][["subset", "prompt_id"]]
    if benign.empty:
        return None
    selection = set(benign["prompt_id"][assign_split(benign, run.params.seed) == "selection"])

    def mean_ppl(rows: pd.DataFrame) -> float:
        picked = rows[(rows["subset"] == "benign") & rows["prompt_id"].isin(selection)]
        ppl = pd.to_numeric(picked["perplexity"], errors="coerce").astype(float)
        kept = ppl[ppl < PERPLEXITY_CAP]
        return float(kept.mean()) if len(kept) else float("nan")

    budget = (1.0 + run.params.max_perplexity_increase) * mean_ppl(baseline)

    def check(rows: pd.DataFrame, direction: str = "caa") -> tuple[float, float]:
        judged = rows[rows["direction"] == direction] if "direction" in rows.columns else rows
        return mean_ppl(judged), budget

    return check


def _step_back(
    check: Callable[[pd.DataFrame], tuple[float, float]],
    generate_at: Callable[[int, float], pd.DataFrame | None],
    layer: int,
    edge: float,
    rows: pd.DataFrame,
    p: RunParams,
) -> tuple[float, list[dict[str, Any]]]:
    """Bisect down from ``edge`` while its benign continuations break the budget.

    Returns:
        The chosen alpha and one trace record per alpha checked.
    """
    value, budget = check(rows)
    steps = [_step(edge, value, budget)]
    if math.isnan(value) or value <= budget:  # nothing to judge, or within budget
        return edge, steps
    low, high = 0.0, edge
    for _ in range(p.search_step_backs):
        middle = round((low + high) / 2, 4)
        if middle <= low or middle >= high:
            break
        found = generate_at(layer, middle)  # a grid alpha: its saved grid rows
        if found is None:  # nothing to judge it on
            break
        value, budget = check(found)
        steps.append(_step(middle, value, budget))
        low, high = (middle, high) if value <= budget else (low, middle)
    return low, steps


def _step(alpha: float, value: float, budget: float) -> dict[str, Any]:
    return {
        "alpha": alpha,
        "benign_continuation_perplexity": value,
        "benign_budget": budget,
        "stage": "step_back",
    }


def _write_trace(paths: RunPaths, variant: str, trace: pd.DataFrame) -> None:
    """Replace ``variant``'s rows of ``alpha_search.parquet`` (variants are searched in turn)."""
    if paths.alpha_search.is_file():
        kept = with_variant(pd.read_parquet(paths.alpha_search))
        trace = pd.concat([kept[kept["variant"] != variant], trace], ignore_index=True)
    atomic_write_parquet(paths.alpha_search, trace)


def alpha_search_table(run: Run) -> pd.DataFrame:
    """The alpha search of step 05 per layer: alphas measured, perplexity, budget, edge."""
    path = run.paths.alpha_search
    if not path.is_file():
        return pd.DataFrame(columns=["layer", "alpha", "human_perplexity", "budget", "chosen"])
    table = with_variant(pd.read_parquet(path))
    columns = ["variant", "layer", "alpha", "human_perplexity", "kl_benign", "budget", "chosen"]
    extra = ["direction", "stage", "benign_continuation_perplexity", "benign_budget"]
    return table[columns + [c for c in extra if c in table.columns]]


def control_edges(paths: RunPaths) -> dict[tuple[str, int], float]:
    """The random control's own searched alpha (after its step back), by (variant, layer).

    Read from the alpha search's trace (``direction == "random"``); empty for a run made
    without ``control_search``.
    """
    if not paths.alpha_search.is_file():
        return {}
    table = with_variant(pd.read_parquet(paths.alpha_search))
    if "direction" not in table.columns:
        return {}
    rows = table[table["direction"] == "random"].drop_duplicates(["variant", "layer"])
    return {
        (str(row.variant), int(row.layer)): float(row.chosen)
        for row in rows.itertuples(index=False)
    }


def saved_units(folder: Path, alphas: list[float]) -> dict[str, pd.DataFrame]:
    """The sweep units already on disk, by key; refuse units generated with other alphas.

    Unit keys name the direction, layer and prompt bucket, not the alphas, so a unit saved
    under other alphas would otherwise be taken as done.
    """
    saved = {path.stem: read_unit(path) for path in sorted(folder.glob("*.parquet"))}
    for key, table in saved.items():
        found = sorted(set(table["alpha"].astype(float)))
        if found != sorted(float(a) for a in alphas):
            raise ConfigError(
                f"sweep unit {key} in {folder} was generated with alphas {found}, but the run "
                f"asks for {sorted(alphas)} (alpha 0 aside): rerun the sweep with force=True "
                "(`python -m steerlib run --force`) or use a new run_name."
            )
    return saved


def read_unit(path: Path, *, required: bool = True) -> pd.DataFrame:
    """A saved sweep unit, its checksum verified (:func:`~steerlib._io.read_checked_parquet`).

    Args:
        path: The unit.
        required: Refuse a unit without a checksum; False for the units of a run made before
            units carried one (:meth:`~steerlib.experiment.runs.RunPaths.made_before_checksums`).

    Raises:
        DamagedRunError: The unit is truncated, edited, or has no checksum; one line saying to
            delete it (only that unit is generated again).
    """
    return read_checked_parquet(
        path,
        "sweep unit",
        "delete it and run the same command again (only that unit is generated again)",
        required=required,
    )


def stamp_old_units(paths: RunPaths) -> int:
    """Give the saved units of a run made before units carried checksums their checksum.

    Called by the chain runner, holding the run's lock, before the run's steps: afterwards the
    run's units are checked like any other run's. Nothing happens to a run recorded with
    checksums (:meth:`~steerlib.experiment.runs.RunPaths.made_before_checksums`).

    Returns:
        How many units were stamped.

    Raises:
        DamagedRunError: A unit is not a readable parquet file (truncated).
    """
    import pyarrow.parquet as pq

    from steerlib._io import CHECKSUM_KEY

    if not paths.made_before_checksums() or not paths.sweep_parts.is_dir():
        return 0
    stamped = 0
    for part in sorted(paths.sweep_parts.rglob("*.parquet")):
        table = read_unit(part, required=False)
        if CHECKSUM_KEY not in (pq.read_schema(part).metadata or {}):
            atomic_write_parquet(part, table)
            stamped += 1
    return stamped
