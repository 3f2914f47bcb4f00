"""Step 05's alpha search: each layer's budget edge, its step back, and its trace.

With ``alpha_search`` on, the sweep finds per layer and variant the largest alpha within the
fluency budget (:func:`search_edge`), generates it (with its equal-alpha control, and with
``control_search`` the control at its own edge), steps back while its benign continuations
break the budget (:func:`searched_alphas`), and keeps the trace in ``alpha_search.parquet``
(:func:`alpha_search_table`, :func:`control_edges`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet
from steerlib.evaluate.admissibility import kl_budget
from steerlib.experiment.config import RunParams
from steerlib.experiment.families import (
    VariantSweep,
    direction_only,
    generate_family,
    searched_family,
)
from steerlib.experiment.plan import SweepPlan, with_variant
from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.steps import eval_prompts
from steerlib.experiment.timings import advance, phase
from steerlib.experiment.unit_files import read_unit

__all__ = [
    "alpha_search_table",
    "control_edges",
    "edge_key",
    "grid_rows",
    "held_out_prefixes",
    "search_edge",
    "search_texts",
    "searched_alphas",
    "searched_directions",
]


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
    bases: dict[Any, Any] | None = None,
) -> Any:
    """The budget edge of ``layer`` for ``sweep``'s variant (the run's rule, on ``direction``).

    See :func:`steerlib.evaluate.search.search_alpha`; ``ablate`` and ``clamp`` are searched on
    ``[0, 1]``, ``caa_generated`` teacher-forced (:func:`held_out_prefixes`). The random
    direction (``direction="random"``, :func:`searched_directions`) is searched exactly as
    the CAA vector: same hook (gated probe, its own clamp level, multilayer span), budget
    (KL included), texts and cap. ``bases`` holds the unsteered passes of the texts, shared
    by every search of the step (the baseline of each; see ``search_alpha``).
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
        bases=bases,
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
    """The key of an alpha search in ``edges`` (:func:`~steerlib.experiment.sweep.sweep_step`).

    ``(variant, layer)`` for the CAA vector, ``(variant, layer, direction)`` for another one.
    """
    return (variant, layer) if direction == "caa" else (variant, layer, direction)


def search_texts(prompts: pd.DataFrame, seed: int) -> list[str]:
    """The search half of the held-out benign texts (see ``held_out_halves``)."""
    from steerlib.data.subsets import held_out_halves

    texts, halves = held_out_halves(prompts[prompts["role"] == "kl_benign"], seed)
    return [text for text, half in zip(texts, halves, strict=True) if half == "selection"]


def searched_alphas(
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
    bases: dict[Any, Any] | None = None,
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
    edge. ``bases``: the unsteered passes of the search texts, shared by every search of the
    step (:func:`search_edge`). The trace's ``direction`` column says which vector each row
    searched; its ``search`` rows are the alphas each search measured, each once.

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

            with phase("searched units", detail=f"layer {layer}, alpha {alpha:g}, {direction}"):
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
                with phase("search passes", detail=f"layer {layer}, {direction}"):
                    found = search_edge(
                        run, model, tokenizer, kl_texts, sweep, layer, direction, bases
                    )
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
            advance()
    _write_trace(paths, sweep.name, pd.concat(traces, ignore_index=True))
    return pd.concat(tables.values(), ignore_index=True) if tables else pd.DataFrame()


def grid_rows(
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
