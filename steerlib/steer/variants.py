"""Steering variants: named ways to apply one CAA vector, compared under one protocol.

A variant is a :data:`~steerlib.steer.hooks.SteeringMode` of the one hook plus the choice of
positions and layers. The chain sweeps the variants listed in the ``variants`` run parameter;
each gets its own alpha search and operating point (step 05/06), and the sweep's rows carry
the variant's name in a ``variant`` column (rows of runs made before variants read as
``"caa"``).

=================  =========================================================================
``caa``            subtract ``alpha * v`` at every position (Rimsky et al., 2024, CAA)
``caa_generated``  the same, at generated positions only (the prompt is left as it is)
``gated``          subtract only where a linear probe on the running mean of the row's states
                   says toxic (conditional steering, after CAST: Lee et al., 2024)
``ablate``         remove the positive part of the component along ``v / |v|`` (directional
                   ablation, Arditi et al., 2024), ``alpha`` in [0, 1] the fraction removed
``clamp``          pull that component down to the non-toxic texts' mean projection, never
                   below it (in the spirit of AurA's dampening: Suau et al., 2024); ``alpha``
                   in [0, 1] likewise
``norm_preserving``  subtract ``alpha * v``, then rescale each state to its norm before
``multilayer``     one vector per layer over ``multilayer_span`` contiguous layers centred on
                   the steered layer, ``alpha`` divided equally across them
=================  =========================================================================

``ablate`` and ``clamp`` refuse alpha outside [0, 1] (:data:`steerlib.steer.hooks.ALPHA_RANGES`):
above 1 they would reflect the component past zero or past the level, which is neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerlib.errors import ConfigError
from steerlib.steer.hooks import ALPHA_RANGES, Positions, SteeringMode

if TYPE_CHECKING:
    from steerlib.steer.probe import ToxicityProbe

__all__ = ["VARIANTS", "Variant", "variant"]

VARIANTS: dict[str, tuple[SteeringMode, Positions | None, bool]] = {
    "caa": ("add", None, False),
    "caa_generated": ("add", "generated", False),
    "gated": ("gated", None, False),
    "ablate": ("ablate", None, False),
    "clamp": ("clamp", None, False),
    "norm_preserving": ("norm_preserving", None, False),
    "multilayer": ("add", None, True),
}
"""Name to ``(mode, positions or None for the run's, several layers)``."""


@dataclass(frozen=True)
class Variant:
    """One steering variant.

    Attributes:
        name: Its name (a key of :data:`VARIANTS`).
        mode: The hook's mode.
        positions: Positions it steers; ``None``: the run's ``positions``.
        span: Layers steered at once (1, or ``multilayer_span`` for ``multilayer``).
    """

    name: str
    mode: SteeringMode = "add"
    positions: Positions | None = None
    span: int = 1

    @property
    def max_alpha(self) -> float | None:
        """Largest alpha the variant takes (1: full removal for ablate/clamp); None: no cap."""
        return ALPHA_RANGES[self.mode][1] if self.mode in ALPHA_RANGES else None

    def layers(self, layer: int, num_layers: int) -> list[int]:
        """The steered layers for the sweep's ``layer``: ``span`` layers centred on it.

        The range is shifted to stay inside the model (``span`` at most ``num_layers``).
        """
        span = min(self.span, num_layers)
        first = min(max(0, layer - (span - 1) // 2), num_layers - span)
        return list(range(first, first + span))

    def steering_kwargs(
        self,
        layer: int,
        num_layers: int,
        positions: Positions,
        probe: ToxicityProbe | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of :func:`steerlib.steer.hooks.steering` (``layers`` included).

        Raises:
            ConfigError: A gated variant without a probe.
        """
        layers = self.layers(layer, num_layers)
        kwargs: dict[str, Any] = {
            "layers": layers if len(layers) > 1 else layers[0],
            "positions": self.positions or positions,
            "mode": self.mode,
            "split_alpha": len(layers) > 1,
        }
        if self.mode == "gated":
            if probe is None:
                raise ConfigError(
                    f"variant {self.name!r} needs the run's toxicity probe (step 04 writes "
                    "probe.safetensors): rerun step 04, or drop the variant."
                )
            kwargs["gate"] = {k: probe.gate(k) for k in layers}
        return kwargs


def variant(name: str, *, multilayer_span: int = 5) -> Variant:
    """The variant called ``name``.

    Raises:
        ConfigError: An unknown name (the message lists the known ones).
    """
    if name not in VARIANTS:
        raise ConfigError(f"unknown steering variant {name!r}; known: {', '.join(VARIANTS)}.")
    mode, positions, several = VARIANTS[name]
    return Variant(name, mode, positions, multilayer_span if several else 1)
