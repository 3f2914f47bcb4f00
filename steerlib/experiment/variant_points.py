"""Every steering variant's operating point, the table that sets them side by side, the pick.

Each variant but plain CAA is analysed as CAA is (:func:`variant_points`), with its own matched
random control; :func:`pick_variant` recommends the one with the lowest selection-half EMT and
:func:`variant_table` lays them out. :func:`gate_rates` says how often the gated variant's gate
fired.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from steerlib.evaluate.gates import held_out_gates, reported_gates, subset_gates
from steerlib.experiment.evaluation import evaluation_table, operating_point_for
from steerlib.experiment.point_controls import confirmed_controls
from steerlib.experiment.run import Run

__all__ = ["edges_of", "gate_rates", "pick_variant", "variant_points", "variant_table"]


def _gate_figures() -> tuple[str, ...]:
    """The gating measures the variants table shows (the benign subset's with alpha 0's)."""
    return (
        *(name for found in subset_gates() for name in (found.name, f"baseline_{found.name}")),
        *(found.name for found in held_out_gates()),
    )


def variant_table(points: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per variant: its operating point and the figures of the half they come from.

    ``selection_emt`` is what the rule chose on; the other figures come from the point's
    ``figures_from`` half (the confirmation half), with alpha 0's beside them and the random
    control at equal fluency where there is one.
    """
    fluency_ci = [found.name for found in reported_gates()]  # intervals shown (issue 27)
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
                        *_gate_figures(),
                    )
                },
                **{
                    f"{metric}_ci_{end}": (point.get(f"{metric}_ci") or [None, None])[i]
                    for metric in ("expected_max_toxicity", "mean_toxicity", *fluency_ci)
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


def variant_points(
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
        evaluation = evaluation_table(prompts, baseline, rows, p.seed)
        own_kl = kl["direction"] != "random"
        kl_rows = kl[((kl["variant"] == name) & own_kl) | control_kl].drop(columns="variant")
        # ablate/clamp rows past full removal (alpha > 1, from runs made before the range was
        # enforced) are inadmissible, with that reason
        from steerlib.steer.variants import variant

        cap = {"max_alpha": variant(name, multilayer_span=p.multilayer_span).max_alpha}
        summary, point = operating_point_for(p, evaluation, kl_rows, floor, {**rule, **cap})
        if "layer" in point:
            own = edges_of(edges or {}, control_of)
            point.update(confirmed_controls(summary, evaluation, point, options, own))
        point["variant"] = name
        point["control_of"] = control_of
        out[name] = (summary.assign(variant=name), point)
    return out


def edges_of(edges: Mapping[tuple[str, int], float], variant: str) -> dict[int, float]:
    """``variant``'s random control's own searched alpha by layer (see ``control_edges``)."""
    return {layer: alpha for (name, layer), alpha in edges.items() if name == variant}


def _has_own_control(sweep: pd.DataFrame, name: str) -> bool:
    """Whether variant ``name`` has steered random-direction rows of its own (alpha != 0)."""
    rows = sweep[(sweep["variant"] == name) & (sweep["direction"] == "random")]
    return bool((rows["alpha"].astype(float) != 0).any())


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
