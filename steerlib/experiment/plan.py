"""What a run's sweep covers: its layers, directions, alphas and variants.

:func:`sweep_plan` says which layers, directions and alphas a run's sweep covers and how it
is cut into units; the sweep step (:mod:`steerlib.experiment.sweep`) and ``python -m steerlib
status`` both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from steerlib.experiment.config import RunParams
from steerlib.experiment.steps import EVAL_SUBSETS

__all__ = ["SweepPlan", "sweep_plan", "variant_prefix", "with_variant"]


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


def with_variant(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``variant`` column; rows of runs made before variants read as ``caa``."""
    if "variant" not in table.columns:
        return table.assign(variant="caa")
    return table.assign(variant=table["variant"].fillna("caa"))
