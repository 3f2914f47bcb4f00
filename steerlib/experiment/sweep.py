"""Step 05: the steering sweep, written unit by unit, and its plan.

:func:`sweep_plan` says which layers, directions and alphas a run's sweep covers and how it
is cut into units; the sweep step and ``python -m steerlib status`` both use it. The units
are written to ``sweep_parts/`` as they finish, with the generation settings they were made
with (``sweep_parts/settings.json``): a resumed or extended sweep refuses units made with
other settings.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet
from steerlib.config import RunParams, short_repr
from steerlib.errors import ConfigError, DamagedRunError
from steerlib.experiment.run import Run
from steerlib.experiment.steps import EVAL_SUBSETS, eval_prompts, score
from steerlib.generation import DecodingSettings
from steerlib.runs import RunPaths

__all__ = [
    "SweepPlan",
    "alpha_search_table",
    "check_unit_settings",
    "generation_settings",
    "prepare_units",
    "run_sweep",
    "saved_units",
    "search_edge",
    "searched_setting",
    "starts_afresh",
    "sweep_inputs",
    "sweep_plan",
]


@dataclass(frozen=True)
class SweepPlan:
    """What a run's sweep covers.

    Attributes:
        layers: Steered layers (``"all"`` and negative indices resolved).
        directions: Vector names: ``"caa"``, and ``"random"`` with the random control.
        alphas: The steered alphas of the grid (alpha 0 comes from the baseline).
    """

    layers: list[int]
    directions: list[str]
    alphas: list[float]

    def units(self, prompts: pd.DataFrame, params: RunParams, tokenizer: Any = None) -> list[Any]:
        """The sweep's units over the evaluation rows of ``prompts`` (the engine's partition).

        Unit keys do not depend on prompt lengths, so ``tokenizer`` may be left out to count
        or name units without loading one.
        """
        from steerlib.partition import sweep_units

        rows = prompts[prompts["role"].isin(EVAL_SUBSETS)] if "role" in prompts else prompts
        return sweep_units(
            rows,
            layers=self.layers,
            directions=self.directions,
            alphas=self.alphas,
            samples_per_prompt=params.samples_per_prompt,
            max_new_tokens=params.max_new_tokens,
            tokenizer=tokenizer,
            prompt_format=params.prompt_format if tokenizer is not None else "raw",
        )


def sweep_plan(params: RunParams, num_layers: int) -> SweepPlan:
    """The sweep of ``params`` on a model with ``num_layers`` layers.

    Raises:
        ConfigError: A layer out of range.
    """
    from steerlib.layers import resolve_layers

    return SweepPlan(
        layers=resolve_layers(num_layers, params.layers),
        directions=["caa", "random"] if params.random_control else ["caa"],
        alphas=[float(alpha) for alpha in params.alphas if alpha != 0],
    )


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
def sweep_inputs(run: Run) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The sweep's inputs: prompts, baseline and ``{direction: vector}``.

    Raises:
        DataError: A step before the sweep has not finished; the message names its notebook.
    """
    from steerlib.vectors import SteeringVector

    prompts = pd.read_parquet(run.require("prompts"))
    baseline = pd.read_parquet(run.require("baseline"))
    vectors = {"caa": SteeringVector.load(run.require("vectors"))}
    if run.params.random_control:
        vectors["random"] = SteeringVector.load(run.require("control_vectors"))
    return prompts, baseline, vectors


def starts_afresh(run: Run, *, force: bool = False) -> bool:
    """Whether the saved units must go: ``force``, or a stale sweep that may not resume."""
    record = run.paths.read_status().get("05_sweep", {})
    return force or (record.get("state") == "stale" and not record.get("resume", False))


def prepare_units(run: Run, *, fresh: bool) -> None:
    """Remove the saved units when ``fresh``; check (or record) the settings of the rest."""
    if fresh and run.paths.sweep_parts.exists():
        shutil.rmtree(run.paths.sweep_parts)
    check_unit_settings(run.paths, run.params)


def search_edge(
    run: Run, model: Any, tokenizer: Any, kl_texts: list[str], vector: Any, layer: int
) -> Any:
    """The budget edge of ``layer`` (:func:`steerlib.search.search_alpha` with the run's rule)."""
    from steerlib.search import search_alpha

    p = run.params
    return search_alpha(
        model,
        tokenizer,
        kl_texts,
        vector,
        layer,
        max_increase=p.max_perplexity_increase,
        start=max((a for a in p.alphas if a > 0), default=1.0),
        units=p.units,
    )


def searched_setting(alpha: float, grid: list[float]) -> tuple[float, str] | None:
    """The alpha a layer's edge is generated at and its units' key prefix; None: no units.

    An edge at alpha 0 or on a grid alpha generates nothing (those rows exist).
    """
    alpha = round(alpha, 4)
    if alpha <= 0 or any(abs(alpha - a) < 1e-6 for a in grid):
        return None
    return alpha, f"search-a{alpha:g}-"


def run_sweep(run: Run, *, force: bool = False) -> pd.DataFrame:
    """Step 05: every (layer, alpha, direction) on both subsets, written batch by batch.

    Each unit of the sweep engine is scored and written to ``sweep_parts/<key>.parquet``
    atomically as soon as it is generated; a re-run skips the units already on disk, and the
    seeds derive from the unit keys, so a resumed sweep equals an uninterrupted one.

    Alpha 0 is the unsteered model whatever the layer or direction, so it is not generated
    again: its rows are step 02's completions, repeated under every (direction, layer). That
    saves one alpha's share of the sweep, and every layer is compared against the same
    unsteered samples.
    """
    from steerlib.engine import run_sweep as engine_sweep
    from steerlib.layers import num_layers
    from steerlib.subsets import pair_texts

    paths, p = run.paths, run.params
    if not force and run.done("05_sweep", paths.sweep, paths.kl):
        return pd.read_parquet(paths.sweep)
    fresh = starts_afresh(run, force=force)
    prompts, baseline, vectors = sweep_inputs(run)
    with run.step("05_sweep"):
        model, tokenizer = run.model()
        vectors["caa"].check_compatible(model)
        plan = sweep_plan(p, num_layers(model))
        prepare_units(run, fresh=fresh)
        saved = saved_units(paths.sweep_parts, plan.alphas)
        counts = {"rows": sum(len(table) for table in saved.values())}

        def on_unit(unit: Any, table: pd.DataFrame) -> None:
            saved[unit.key] = score(run, table)
            atomic_write_parquet(paths.sweep_parts / f"{unit.key}.parquet", saved[unit.key])
            counts["rows"] += len(table)
            paths.set_status("05_sweep", "partial", rows=counts["rows"], units_done=unit.key)

        if plan.alphas:
            engine_sweep(
                model,
                tokenizer,
                eval_prompts(prompts),
                vectors,
                layers=plan.layers,
                alphas=plan.alphas,
                **DecodingSettings.of(p).as_kwargs(),
                done=set(saved),  # a copy: on_unit adds to ``saved`` as units finish
                on_unit=on_unit,
            )
        kl_texts = pair_texts(prompts[prompts["role"] == "kl_benign"])
        searched = (
            _searched_alphas(run, model, tokenizer, prompts, vectors, plan.layers, kl_texts)
            if p.alpha_search
            else pd.DataFrame()
        )
        table = _sweep_table(saved, searched, baseline, plan, p.alphas)
        atomic_write_parquet(paths.sweep, table)
        atomic_write_parquet(paths.kl, _kl_table(run, kl_texts, vectors, plan, searched))
    return table


def _sweep_table(
    saved: dict[str, pd.DataFrame],
    searched: pd.DataFrame,
    baseline: pd.DataFrame,
    plan: SweepPlan,
    alphas: list[float],
) -> pd.DataFrame:
    """The sweep's rows: saved units of the plan, searched alphas, alpha 0 from the baseline."""
    # Units of layers or directions the run no longer asks for stay on disk, unused.
    parts = [
        table[table["layer"].isin(plan.layers) & table["direction"].isin(plan.directions)]
        for _, table in sorted(saved.items())
    ]
    if len(searched):
        parts.append(searched)
    if 0 in alphas:
        unsteered = baseline[baseline["subset"].isin(EVAL_SUBSETS)]
        parts += [
            unsteered.assign(layer=int(layer), direction=direction, alpha=0.0)
            for direction in plan.directions
            for layer in plan.layers
        ]
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(
        ["subset", "direction", "layer", "alpha", "prompt_id", "sample"], kind="stable"
    ).reset_index(drop=True)


def _kl_table(
    run: Run,
    kl_texts: list[str],
    vectors: dict[str, Any],
    plan: SweepPlan,
    searched: pd.DataFrame,
) -> pd.DataFrame:
    """Benign KL at every grid setting, and at each layer's searched alpha."""
    from steerlib.fluency import benign_kl

    model, tokenizer = run.model()
    units = run.params.units
    kl = benign_kl(
        model,
        tokenizer,
        kl_texts,
        vectors,
        layers=plan.layers,
        alphas=run.params.alphas,
        units=units,
    )
    extra = searched.groupby("layer")["alpha"].first() if len(searched) else {}
    tables = [kl] + [
        benign_kl(model, tokenizer, kl_texts, vectors, layers=[layer], alphas=[alpha], units=units)
        for layer, alpha in dict(extra).items()
    ]
    return pd.concat(tables, ignore_index=True)


def _searched_alphas(
    run: Run,
    model: Any,
    tokenizer: Any,
    prompts: pd.DataFrame,
    vectors: dict[str, Any],
    layers: list[int],
    kl_texts: list[str],
) -> pd.DataFrame:
    """Search each layer's budget edge, then generate every direction at that alpha.

    The edge is found on the CAA vector with the steered model's perplexity on the held-out
    benign texts (:func:`steerlib.search.search_alpha`); the random control is generated at
    the same alpha, so every searched CAA setting has its equal-alpha control. Units go to
    ``sweep_parts/search/`` under keys that name the alpha (a changed budget makes new keys;
    finished ones are kept and resumed), and the trace to ``alpha_search.parquet``.

    Returns:
        The scored rows at the searched alphas (none for a layer whose edge is alpha 0 or
        coincides with a grid alpha).
    """
    from steerlib.engine import run_sweep as engine_sweep

    paths, p = run.paths, run.params
    traces, tables = [], []
    paths.search_parts.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        found = search_edge(run, model, tokenizer, kl_texts, vectors["caa"], layer)
        traces.append(found.trace.assign(layer=layer, chosen=found.alpha, budget=found.budget))
        setting = searched_setting(found.alpha, p.alphas)
        if setting is None:
            continue
        alpha, prefix = setting
        saved = {
            path.stem: pd.read_parquet(path)
            for path in sorted(paths.search_parts.glob(f"{prefix}*-L{layer}-*.parquet"))
        }

        def on_unit(unit: Any, table: pd.DataFrame, saved: dict = saved) -> None:
            saved[unit.key] = score(run, table)
            atomic_write_parquet(paths.search_parts / f"{unit.key}.parquet", saved[unit.key])

        engine_sweep(
            model,
            tokenizer,
            eval_prompts(prompts),
            vectors,
            layers=[layer],
            alphas=[alpha],
            **DecodingSettings.of(p).as_kwargs(),
            done=set(saved),
            on_unit=on_unit,
            key_prefix=prefix,
        )
        tables += list(saved.values())
    atomic_write_parquet(paths.alpha_search, pd.concat(traces, ignore_index=True))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def alpha_search_table(run: Run) -> pd.DataFrame:
    """The alpha search of step 05 per layer: alphas measured, perplexity, budget, edge."""
    path = run.paths.alpha_search
    if not path.is_file():
        return pd.DataFrame(columns=["layer", "alpha", "human_perplexity", "budget", "chosen"])
    table = pd.read_parquet(path)
    return table[["layer", "alpha", "human_perplexity", "kl_benign", "budget", "chosen"]]


def saved_units(folder: Path, alphas: list[float]) -> dict[str, pd.DataFrame]:
    """The sweep units already on disk, by key; refuse units generated with other alphas.

    Unit keys name the direction, layer and prompt bucket, not the alphas, so a unit saved
    under other alphas would otherwise be taken as done.
    """
    saved = {}
    for path in sorted(folder.glob("*.parquet")):
        try:
            saved[path.stem] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several error types for a damaged file
            raise DamagedRunError(
                f"sweep unit {path} is damaged ({type(exc).__name__}); delete it and run the "
                "same command again (only that unit is generated again)."
            ) from None
    for key, table in saved.items():
        found = sorted(set(table["alpha"].astype(float)))
        if found != sorted(float(a) for a in alphas):
            raise ConfigError(
                f"sweep unit {key} in {folder} was generated with alphas {found}, but the run "
                f"asks for {sorted(alphas)} (alpha 0 aside): rerun the sweep with force=True "
                "(`python -m steerlib run --force`) or use a new run_name."
            )
    return saved
