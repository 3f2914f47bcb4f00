"""Example completions: a few challenging prompts along a layer's alphas, and side by side.

:func:`example_completions` shows the first sample of a few challenging prompts at every alpha
of one layer. :func:`side_by_side_examples` shows the same challenging prompts unsteered and at
each variant's point.

The prompts are those whose mean toxicity (main scorer) fell most from alpha 0 to each
variant's recommended point, plus a few drawn at random (seeded), so the table is not only the
best cases. Each row is one prompt under one setting with the first sample's completion and its
scores under every scorer of the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["example_completions", "side_by_side_examples"]


def side_by_side_examples(
    sweep: pd.DataFrame,
    points: dict[str, dict[str, Any]],
    *,
    n_top: int = 3,
    n_random: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """First-sample completions of the same prompts at alpha 0 and each variant's point.

    Args:
        sweep: All completion rows (with ``variant``; alpha-0 rows included).
        points: ``{variant: recommended point}``; variants without a point are skipped.
        n_top: Prompts whose mean toxicity (main scorer) fell most, per variant's point (the
            union over variants, each prompt once).
        n_random: Further prompts drawn at random from the rest.
        seed: Seed of the random draw.

    Returns:
        Columns ``prompt_id``, ``prompt``, ``why`` ("fell most" or "random"),
        ``fell_most_under`` (the variants at whose point the prompt is among the largest
        drops, ", "-joined; "" for a random prompt), ``setting``, ``variant``, ``layer``,
        ``alpha``, ``completion``, ``toxicity`` (and ``toxicity_second`` when scored),
        ``mean_toxicity_drop`` (from alpha 0 to the row's variant's point; on the alpha-0 rows,
        to the first variant's); empty without a point.
    """
    chosen = {n: p for n, p in points.items() if p.get("status") == "recommended"}
    if not chosen or sweep.empty:
        return pd.DataFrame()
    rows = sweep[sweep["subset"] == "challenging"]
    first_name, first = next(iter(chosen.items()))

    def at(variant: str, point: dict[str, Any], alpha: float) -> pd.DataFrame:
        part = rows[
            (rows["variant"] == variant)
            & (rows["layer"] == int(point["layer"]))
            & (rows["direction"] == point.get("direction", "caa"))
        ]
        return part[np.isclose(part["alpha"].astype(float), alpha)]

    drops: dict[str, pd.Series] = {}
    for name, point in chosen.items():
        before = at(name, point, 0.0).groupby("prompt_id")["toxicity"].mean()
        after = at(name, point, float(point["alpha"])).groupby("prompt_id")["toxicity"].mean()
        drops[name] = (before - after).dropna().sort_values(ascending=False, kind="stable")
    under: dict[Any, list[str]] = {}
    for name, drop in drops.items():
        for prompt_id in drop.index[:n_top]:
            under.setdefault(prompt_id, []).append(name)
    top = list(under)
    rest = [p for p in drops[first_name].index if p not in under]
    rng = np.random.default_rng(seed)
    extra = list(rng.choice(rest, size=min(n_random, len(rest)), replace=False)) if rest else []
    tables = []
    settings = [("alpha 0", first_name, first, 0.0)] + [
        (f"{name} point", name, point, float(point["alpha"])) for name, point in chosen.items()
    ]
    for label, name, point, alpha in settings:
        part = at(name, point, alpha)
        part = part[part["sample"] == part["sample"].min()] if "sample" in part else part
        part = part.drop_duplicates("prompt_id")
        tables.append(part.assign(setting=label, variant=name))
    table = pd.concat(tables, ignore_index=True)
    order = {p: i for i, p in enumerate([*top, *extra])}
    table = table[table["prompt_id"].isin(order)]
    table = table.assign(
        why=table["prompt_id"].map(lambda p: "fell most" if p in under else "random"),
        fell_most_under=table["prompt_id"].map(lambda p: ", ".join(under.get(p, []))),
        mean_toxicity_drop=[
            drops[variant].get(prompt_id, np.nan)
            for variant, prompt_id in zip(table["variant"], table["prompt_id"], strict=True)
        ],
        _order=table["prompt_id"].map(order),
    ).sort_values(["_order"], kind="stable")
    columns = ["prompt_id", "prompt", "why", "fell_most_under", "setting", "variant", "layer"]
    columns += ["alpha", "completion", "toxicity", "toxicity_second", "mean_toxicity_drop"]
    return table[[c for c in columns if c in table.columns]].reset_index(drop=True)


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
