"""One steering value: vector, layers, operator, fitted inputs and alpha convention, frozen.

A :class:`Steering` is bound once from a variant (:meth:`steerlib.steer.variants.Variant.bind`)
and then travels whole: the sweep engine, the reference generator, the fluency passes, the bench
and the widget take it instead of loose keyword arguments. Only the alphas stay outside it (they
change per row and per step); :meth:`Steering.hooks` opens the
:func:`~steerlib.steer.hooks.steering` block that applies it.

Example:
    >>> steer = variant("gated").bind(vector, 18, num_layers=30, probe=probe)  # doctest: +SKIP
    >>> with steer.hooks(model, alpha=[0.0, 1.5]):  # doctest: +SKIP
    ...     model.generate(**batch_of_two)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from steerlib.errors import ConfigError
from steerlib.steer.gate import Gate
from steerlib.steer.handle import AlphaSpec, SteeringHandle
from steerlib.steer.hooks import Units, VectorLike, steering
from steerlib.steer.operators import OPERATORS, Operator, Positions

__all__ = ["Steering"]


@dataclass(frozen=True, eq=False)
class Steering:
    """How one vector steers a model, everything but the alphas.

    Attributes:
        vector: A :class:`~steerlib.steer.vectors.SteeringVector`, a ``{layer: tensor}``
            mapping, or one tensor used at every layer.
        layers: The steered layers (several for a multilayer variant).
        operator: The variant's entry of :data:`steerlib.steer.operators.OPERATORS`.
        positions: ``"all"`` or ``"generated"`` (already resolved: the variant's own, else the
            run's).
        units: Alpha units, ``"raw"`` or ``"norm"`` (ignored by direction-only operators).
        gate: Fitted input of a probe-gated operator: one :class:`Gate` per steered layer
            (or one for all).
        clamp_offsets: Fitted input of a clamping operator: ``c`` per layer; ``None``: the
            vector's ``nontoxic_projections``.
        split_alpha: Alpha convention over several layers: each gets ``alpha / n_layers``.
    """

    vector: VectorLike
    layers: tuple[int, ...]
    operator: Operator = OPERATORS["caa"]
    positions: Positions = "all"
    units: Units = "raw"
    gate: Gate | Mapping[int, Gate] | None = None
    clamp_offsets: Mapping[int, float] | None = None
    split_alpha: bool = False

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("a Steering needs at least one layer.")
        if self.positions not in ("all", "generated"):
            raise ConfigError(f"positions must be 'all' or 'generated', not {self.positions!r}.")

    @classmethod
    def plain(
        cls,
        vector: VectorLike,
        layers: int | Sequence[int],
        *,
        positions: Positions = "all",
        units: Units = "raw",
    ) -> Steering:
        """Plain CAA (``h - alpha * v``) at ``layers``, alpha not divided across them."""
        chosen = (int(layers),) if isinstance(layers, int) else tuple(int(k) for k in layers)
        return cls(vector, chosen, OPERATORS["caa"], positions=positions, units=units)

    @property
    def name(self) -> str:
        """The variant's name."""
        return self.operator.name

    @property
    def gated(self) -> bool:
        """The operator gates by a probe (the engine then reports gate counts)."""
        return self.operator.needs_probe

    @property
    def max_alpha(self) -> float | None:
        """Largest alpha the operator takes (1: full removal for ablate/clamp); None: no cap."""
        return None if self.operator.alpha_range is None else self.operator.alpha_range[1]

    @property
    def centre(self) -> int:
        """The middle steered layer (the sweep's layer of a multilayer span away from the edges)."""
        return self.layers[(len(self.layers) - 1) // 2]

    @property
    def direction(self) -> str:
        """The vector's label (``"caa"``, ``"random"``); ``"caa"`` for a bare tensor or mapping."""
        return str(getattr(self.vector, "direction", "caa"))

    @property
    def layer_spec(self) -> int | list[int]:
        """The layers as :func:`~steerlib.steer.hooks.steering` takes them (an int for one)."""
        return self.layers[0] if len(self.layers) == 1 else list(self.layers)

    def with_(self, **changes: Any) -> Steering:
        """A copy with some fields changed (``positions="all"`` for a teacher-forced pass...)."""
        return replace(self, **changes)

    def hook_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~steerlib.steer.hooks.steering` (all but model, alpha)."""
        return {
            "vector": self.vector,
            "layers": self.layer_spec,
            "positions": self.positions,
            "units": self.units,
            "mode": self.operator.mode,
            "gate": self.gate,
            "clamp_offsets": self.clamp_offsets,
            "split_alpha": self.split_alpha,
        }

    def hooks(self, model: nn.Module, alpha: AlphaSpec) -> AbstractContextManager[SteeringHandle]:
        """The :func:`~steerlib.steer.hooks.steering` block that applies this steering."""
        return steering(model, alpha=alpha, **self.hook_kwargs())
