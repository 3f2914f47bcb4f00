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
    "run_sweep",
    "sweep_plan",
    "variant_prefix",
    "with_variant",
]


@dataclass(frozen=True)
class SweepPlan:
    """What a run's sweep covers.

    Attributes:
        layers: Steered layers (``"all"`` and negative indices resolved).
        directions: Vector names: ``"caa"``, and ``"random"`` with the random control.
        alphas: The steered alphas of the grid (alpha 0 comes from the baseline).
        variants: Steering variants (:mod:`steerlib.variants`); the random control runs
            with ``"caa"`` only.
    """

    layers: list[int]
    directions: list[str]
    alphas: list[float]
    variants: tuple[str, ...] = ("caa",)

    def directions_of(self, variant: str) -> list[str]:
        """The directions swept for ``variant``."""
        return self.directions if variant == "caa" else ["caa"]

    def units(self, prompts: pd.DataFrame, params: RunParams, tokenizer: Any = None) -> list[Any]:
        """The sweep's units over the evaluation rows of ``prompts`` (the engine's partition).

        Unit keys do not depend on prompt lengths, so ``tokenizer`` may be left out to count
        or name units without loading one.
        """
        from steerlib.partition import sweep_units

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
    from steerlib.layers import resolve_layers

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
    from steerlib.experiment.steps import variant_inputs
    from steerlib.layers import num_layers
    from steerlib.subsets import pair_texts
    from steerlib.variants import variant
    from steerlib.vectors import SteeringVector

    paths, p = run.paths, run.params
    if not force and run.done("05_sweep", paths.sweep, paths.kl):
        return pd.read_parquet(paths.sweep)
    record = paths.read_status().get("05_sweep", {})
    fresh = force or (record.get("state") == "stale" and not record.get("resume", False))
    prompts = pd.read_parquet(run.require("prompts"))
    baseline = pd.read_parquet(run.require("baseline"))
    vectors = {"caa": SteeringVector.load(run.require("vectors"))}
    if p.random_control:
        vectors["random"] = SteeringVector.load(run.require("control_vectors"))
    with run.step("05_sweep"):
        model, tokenizer = run.model()
        vectors["caa"].check_compatible(model)
        plan = sweep_plan(p, num_layers(model))
        probe = None
        if set(plan.variants) & {"gated", "clamp"}:
            probe, vectors["caa"] = variant_inputs(run, vectors["caa"])
        chosen = {name: variant(name, multilayer_span=p.multilayer_span) for name in plan.variants}
        if fresh and paths.sweep_parts.exists():
            shutil.rmtree(paths.sweep_parts)
        check_unit_settings(paths, p)
        saved = _saved_units(paths.sweep_parts, plan.alphas)
        counts = {"rows": sum(len(table) for table in saved.values())}

        for name, chosen_variant in chosen.items():

            def on_unit(unit: Any, table: pd.DataFrame, name: str = name) -> None:
                saved[unit.key] = score(run, table).assign(variant=name)
                atomic_write_parquet(paths.sweep_parts / f"{unit.key}.parquet", saved[unit.key])
                counts["rows"] += len(table)
                paths.set_status("05_sweep", "partial", rows=counts["rows"], units_done=unit.key)

            if plan.alphas:
                engine_sweep(
                    model,
                    tokenizer,
                    eval_prompts(prompts),
                    {d: vectors[d] for d in plan.directions_of(name)},
                    layers=plan.layers,
                    alphas=plan.alphas,
                    **DecodingSettings.of(p).as_kwargs(),
                    done=set(saved),  # a copy: on_unit adds to ``saved`` as units finish
                    on_unit=on_unit,
                    key_prefix=variant_prefix(name),
                    variant=None if name == "caa" else chosen_variant,
                    probe=probe,
                )
        kl_texts = pair_texts(prompts[prompts["role"] == "kl_benign"])
        searched = (
            pd.concat(
                [
                    _searched_alphas(
                        run, model, tokenizer, prompts, vectors, plan, kl_texts, v, probe
                    )
                    for v in chosen.values()
                ],
                ignore_index=True,
            )
            if p.alpha_search
            else pd.DataFrame()
        )
        table = _sweep_table(saved, searched, baseline, plan, p.alphas)
        atomic_write_parquet(paths.sweep, table)
        kl = pd.concat(
            [_kl_table(run, kl_texts, vectors, plan, searched, v, probe) for v in chosen.values()],
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


def _kl_table(
    run: Run,
    kl_texts: list[str],
    vectors: dict[str, Any],
    plan: SweepPlan,
    searched: pd.DataFrame,
    variant: Any,
    probe: Any,
) -> pd.DataFrame:
    """Benign KL of ``variant`` at every grid setting, and at each layer's searched alpha."""
    from steerlib.fluency import benign_kl

    model, tokenizer = run.model()
    units = run.params.units
    chosen = {d: vectors[d] for d in plan.directions_of(variant.name)}
    options = {
        "units": units,
        "variant": None if variant.name == "caa" else variant,
        "probe": probe,
    }
    kl = benign_kl(
        model, tokenizer, kl_texts, chosen, layers=plan.layers, alphas=run.params.alphas, **options
    )
    if len(searched):
        searched = with_variant(searched)
        searched = searched[searched["variant"] == variant.name]
    extra = searched.groupby("layer")["alpha"].first() if len(searched) else {}
    tables = [kl] + [
        benign_kl(model, tokenizer, kl_texts, chosen, layers=[layer], alphas=[alpha], **options)
        for layer, alpha in dict(extra).items()
    ]
    return pd.concat(tables, ignore_index=True).assign(variant=variant.name)


def _searched_alphas(
    run: Run,
    model: Any,
    tokenizer: Any,
    prompts: pd.DataFrame,
    vectors: dict[str, Any],
    plan: SweepPlan,
    kl_texts: list[str],
    variant: Any,
    probe: Any,
) -> pd.DataFrame:
    """Search each layer's budget edge for ``variant``, then generate it at that alpha.

    The edge is found on the CAA vector with the steered model's perplexity on the held-out
    benign texts (:func:`steerlib.search.search_alpha`); the random control is generated at
    the same alpha, so every searched CAA setting has its equal-alpha control. Units go to
    ``sweep_parts/search/`` under keys that name the alpha (a changed budget makes new keys;
    finished ones are kept and resumed), and the trace to ``alpha_search.parquet``.

    Returns:
        The scored rows at the searched alphas (none for a layer whose edge is alpha 0 or
        coincides with a grid alpha). Every variant has its own search; the random control
        is generated with ``"caa"`` only. Variants other than ``"caa"`` write their units
        and trace rows under their name (``<variant>-search-a...``).
    """
    from steerlib.engine import run_sweep as engine_sweep
    from steerlib.search import search_alpha

    paths, p = run.paths, run.params
    traces, tables = [], []
    paths.search_parts.mkdir(parents=True, exist_ok=True)
    steer = {"variant": None if variant.name == "caa" else variant, "probe": probe}
    for layer in plan.layers:
        found = search_alpha(
            model,
            tokenizer,
            kl_texts,
            vectors["caa"],
            layer,
            max_increase=p.max_perplexity_increase,
            start=max((a for a in p.alphas if a > 0), default=1.0),
            units=p.units,
            **steer,
        )
        traces.append(
            found.trace.assign(
                layer=layer, chosen=found.alpha, budget=found.budget, variant=variant.name
            )
        )
        alpha = round(found.alpha, 4)
        if alpha <= 0 or any(abs(alpha - a) < 1e-6 for a in p.alphas):
            continue
        prefix = f"{variant_prefix(variant.name)}search-a{alpha:g}-"
        saved = {
            path.stem: pd.read_parquet(path)
            for path in sorted(paths.search_parts.glob(f"{prefix}*-L{layer}-*.parquet"))
        }

        def on_unit(unit: Any, table: pd.DataFrame, saved: dict = saved) -> None:
            saved[unit.key] = score(run, table).assign(variant=variant.name)
            atomic_write_parquet(paths.search_parts / f"{unit.key}.parquet", saved[unit.key])

        engine_sweep(
            model,
            tokenizer,
            eval_prompts(prompts),
            {d: vectors[d] for d in plan.directions_of(variant.name)},
            layers=[layer],
            alphas=[alpha],
            **DecodingSettings.of(p).as_kwargs(),
            done=set(saved),
            on_unit=on_unit,
            key_prefix=prefix,
            **steer,
        )
        tables += [with_variant(t).assign(variant=variant.name) for t in saved.values()]
    _write_trace(paths, variant.name, pd.concat(traces, ignore_index=True))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


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
    return table[["variant", "layer", "alpha", "human_perplexity", "kl_benign", "budget", "chosen"]]


def _saved_units(folder: Path, alphas: list[float]) -> dict[str, pd.DataFrame]:
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
