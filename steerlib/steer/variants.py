"""Steering variants: named ways to apply one CAA vector, compared under one protocol.

A variant is an entry of the one operator table, :data:`steerlib.steer.operators.OPERATORS`
(its math and what it needs; the table of names and one-line descriptions is there), plus
the run's choice of layer span. The chain sweeps the variants listed in the ``variants`` run
parameter; each gets its own alpha search and operating point (step 05/06), and the sweep's
rows carry the variant's name in a ``variant`` column (rows of runs made before variants read
as ``"caa"``). :meth:`Variant.bind` turns a variant, a vector and a layer into the one
:class:`~steerlib.steer.steering.Steering` value that generation and the fluency passes take.

``ablate`` and ``clamp`` refuse alpha outside [0, 1] (:data:`steerlib.steer.hooks.ALPHA_RANGES`):
above 1 they would reflect the component past zero or past the level, which is neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerlib.errors import ConfigError
from steerlib.steer.gate import Gate
from steerlib.steer.hooks import Positions, SteeringMode, Units, VectorLike
from steerlib.steer.operators import OPERATORS, Operator, operator_for_mode, operator_named
from steerlib.steer.steering import Steering

if TYPE_CHECKING:
    from steerlib.steer.probe import ToxicityProbe

__all__ = ["VARIANTS", "Variant", "variant"]

VARIANTS: dict[str, tuple[SteeringMode, Positions | None, bool]] = {
    name: (op.mode, op.positions, op.multilayer) for name, op in OPERATORS.items()
}
"""Name to ``(mode, positions or None for the run's, several layers)``: a view of
:data:`~steerlib.steer.operators.OPERATORS`, kept for callers of the old table."""


@dataclass(frozen=True)
class Variant:
    """One steering variant.

    Attributes:
        name: Its name (a key of :data:`~steerlib.steer.operators.OPERATORS`).
        mode: The hook's mode.
        positions: Positions it steers; ``None``: the run's ``positions``.
        span: Layers steered at once (1, or ``multilayer_span`` for ``multilayer``).
    """

    name: str
    mode: SteeringMode = "add"
    positions: Positions | None = None
    span: int = 1

    @property
    def operator(self) -> Operator:
        """Its entry of the operator table (by name, else the first of its mode)."""
        found = OPERATORS.get(self.name)
        return (
            found if found is not None and found.mode == self.mode else operator_for_mode(self.mode)
        )

    @property
    def max_alpha(self) -> float | None:
        """Largest alpha the variant takes (1: full removal for ablate/clamp); None: no cap."""
        alpha_range = self.operator.alpha_range
        return None if alpha_range is None else alpha_range[1]

    def layers(self, layer: int, num_layers: int) -> list[int]:
        """The steered layers for the sweep's ``layer``: ``span`` layers centred on it.

        The range is shifted to stay inside the model (``span`` at most ``num_layers``). A
        span of 1 is ``[layer]`` as given (a layer outside the model fails where it is steered).
        """
        if self.span == 1:
            return [layer]
        span = min(self.span, num_layers)
        first = min(max(0, layer - (span - 1) // 2), num_layers - span)
        return list(range(first, first + span))

    def bind(
        self,
        vector: VectorLike,
        layer: int,
        *,
        num_layers: int,
        positions: Positions = "all",
        units: Units = "raw",
        probe: ToxicityProbe | None = None,
        clamp_offsets: Mapping[int, float] | None = None,
    ) -> Steering:
        """The :class:`~steerlib.steer.steering.Steering` of this variant at the sweep's ``layer``.

        Args:
            vector: The steering vector.
            layer: The sweep's layer (the centre of a multilayer span).
            num_layers: The model's decoder layers.
            positions: The run's positions (a variant with its own positions keeps them).
            units: Alpha units.
            probe: The run's toxicity probe (needed by a probe-gated variant).
            clamp_offsets: Clamp levels per layer; ``None``: the vector's own.

        Raises:
            ConfigError: A probe-gated variant without a probe.
        """
        layers, gate = self._layers_and_gate(layer, num_layers, probe)
        return Steering(
            vector,
            tuple(layers),
            self.operator,
            positions=self.positions or positions,
            units=units,
            gate=gate,
            clamp_offsets=clamp_offsets,
            split_alpha=len(layers) > 1,
        )

    def steering_kwargs(
        self,
        layer: int,
        num_layers: int,
        positions: Positions,
        probe: ToxicityProbe | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of :func:`steerlib.steer.hooks.steering` (``layers`` included).

        Kept for callers of the loose form; new code binds a
        :class:`~steerlib.steer.steering.Steering` with :meth:`bind`.

        Raises:
            ConfigError: A gated variant without a probe.
        """
        layers, gate = self._layers_and_gate(layer, num_layers, probe)
        kwargs: dict[str, Any] = {
            "layers": layers if len(layers) > 1 else layers[0],
            "positions": self.positions or positions,
            "mode": self.mode,
            "split_alpha": len(layers) > 1,
        }
        if gate is not None:
            kwargs["gate"] = gate
        return kwargs

    def _layers_and_gate(
        self, layer: int, num_layers: int, probe: ToxicityProbe | None
    ) -> tuple[list[int], dict[int, Gate] | None]:
        """The steered layers and, for a probe-gated variant, the probe's gate at each."""
        layers = self.layers(layer, num_layers)
        if not self.operator.needs_probe:
            return layers, None
        if probe is None:
            raise ConfigError(
                f"variant {self.name!r} needs the run's toxicity probe (step 04 writes "
                "probe.safetensors): rerun step 04, or drop the variant."
            )
        return layers, {k: probe.gate(k) for k in layers}


def variant(name: str, *, multilayer_span: int = 5) -> Variant:
    """The variant called ``name``.

    Raises:
        ConfigError: An unknown name (the message lists the known ones).
    """
    op = operator_named(name)
    return Variant(name, op.mode, op.positions, multilayer_span if op.multilayer else 1)
