"""The steering operators: ONE table of every variant's math and what it needs.

An operator is a plain function ``(h, v, alpha, fitted) -> h'`` (in the manner of
steering-vectors' operators): ``h`` the ``(batch, seq, hidden)`` residual states of the steered
positions, ``v`` the layer's vector (already in the alpha units), ``alpha`` ``(batch, 1, 1)``
(one coefficient per row, already divided across the layers where the variant splits it), and
``fitted`` the inputs fitted before steering (:class:`Fitted`: the gate's per-position values,
the clamp level). It returns the steered states. The sign convention is the hooks' (see
:mod:`steerlib.steer.hooks`): a positive alpha steers away from toxicity.

Each entry of :data:`OPERATORS` is a steering variant: its operator function and what it
declares it needs (a probe, clamp levels, the direction only, norm preservation, the generated
positions only, several layers). The hook (:mod:`steerlib.steer.hooks`), the variant names the
run parameters accept (:mod:`steerlib.experiment.config`), the bench's ``--variant`` menu and the
widget's menu all read this table; adding a variant with new math is one function and one entry
here, plus its test (``docs/add-a-variant.md``).

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch

from steerlib.errors import ConfigError

__all__ = [
    "OPERATORS",
    "Fitted",
    "Operator",
    "OperatorFn",
    "Positions",
    "ablate",
    "add",
    "apply_operator",
    "clamp",
    "gated",
    "operator_for_mode",
    "operator_named",
]

Positions: TypeAlias = Literal["all", "generated"]
"""Which positions are steered: every position, or only tokens generated after the prompt."""


@dataclass(frozen=True)
class Fitted:
    """The fitted inputs an operator may read at one steered block of positions.

    Attributes:
        gate: ``(batch, seq)`` gate values of the positions (0/1, or the probe's probability
            where it fires); ``None`` unless the operator needs a probe.
        offset: The clamp level ``c`` of the layer (the non-toxic texts' mean projection on
            ``v / |v|``); 0 unless the operator needs clamp levels.
    """

    gate: torch.Tensor | None = None
    offset: float = 0.0


OperatorFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Fitted], torch.Tensor]
"""``(h, v, alpha, fitted) -> h'``: the steered states of ``h``."""


def add(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, fitted: Fitted) -> torch.Tensor:
    """Plain CAA: ``h - alpha * v``."""
    return h - alpha * v


def gated(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, fitted: Fitted) -> torch.Tensor:
    """``h - alpha * g * v`` with ``g`` the gate's value at each position."""
    if fitted.gate is None:
        raise ConfigError("the gated operator needs the gate's values: bind it with a probe.")
    return h - alpha * fitted.gate.unsqueeze(-1) * v


def clamp(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, fitted: Fitted) -> torch.Tensor:
    """``h - alpha * max(0, h.u - c) * u``, ``u = v / |v|``: pull the component down to ``c``."""
    unit = v / v.norm().clamp(min=torch.finfo(v.dtype).tiny)
    excess = ((h @ unit) - fitted.offset).clamp(min=0.0)
    return h - alpha * excess.unsqueeze(-1) * unit


def ablate(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, fitted: Fitted) -> torch.Tensor:
    """``h - alpha * max(0, h.u) * u``: remove the positive part of the component along ``u``."""
    return clamp(h, v, alpha, Fitted(offset=0.0))


def _preserve_norm(h: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """``moved`` rescaled, state by state, to the norm of ``h``."""
    ratio = h.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp(
        min=torch.finfo(h.dtype).tiny
    )
    return moved * ratio


@dataclass(frozen=True)
class Operator:
    """One steering variant: its operator and what it needs.

    Attributes:
        name: The variant's name (the ``variants`` run parameter, the ``variant`` column).
        fn: The operator function (see the module docstring).
        mode: The name the hook knows it by (``steering(mode=...)``); several variants share
            one mode when they share the math (``caa``, ``caa_generated`` and ``multilayer``
            are all ``"add"``). Empty: the variant's name.
        needs_probe: Fitted input: a linear probe per steered layer (the gate), fitted on the
            contrastive sets (:func:`steerlib.steer.probe.fit_probe`, step 04).
        needs_clamp_levels: Fitted input: the non-toxic texts' mean projection per layer
            (``SteeringVector.nontoxic_projections``, recorded by step 04).
        direction_only: Uses only the vector's direction (alpha ``units`` do not apply).
        preserve_norm: Rescale each steered state to its norm before the operator.
        alpha_range: Closed alpha range where alpha is a fraction (1: full removal);
            ``None``: any finite alpha.
        positions: The positions it steers; ``None``: the run's ``positions``.
        multilayer: Steers ``multilayer_span`` contiguous layers at once, alpha divided equally.
        summary: One line for menus and documentation.
    """

    name: str
    fn: OperatorFn
    mode: str = ""
    needs_probe: bool = False
    needs_clamp_levels: bool = False
    direction_only: bool = False
    preserve_norm: bool = False
    alpha_range: tuple[float, float] | None = None
    positions: Positions | None = None
    multilayer: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.mode:
            object.__setattr__(self, "mode", self.name)


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("caa", add, "add", summary="subtract alpha * v at every position"),
        Operator(
            "caa_generated",
            add,
            "add",
            positions="generated",
            summary="subtract alpha * v at generated positions only",
        ),
        Operator(
            "gated", gated, needs_probe=True, summary="subtract where a linear probe says toxic"
        ),
        Operator(
            "ablate",
            ablate,
            direction_only=True,
            alpha_range=(0.0, 1.0),
            summary="remove the positive component along v / |v| (alpha: fraction removed)",
        ),
        Operator(
            "clamp",
            clamp,
            needs_clamp_levels=True,
            direction_only=True,
            alpha_range=(0.0, 1.0),
            summary="pull the component down to the non-toxic level (alpha: fraction)",
        ),
        Operator(
            "norm_preserving",
            add,
            preserve_norm=True,
            summary="subtract alpha * v, then rescale each state to its norm",
        ),
        Operator(
            "multilayer",
            add,
            "add",
            multilayer=True,
            summary="alpha * v split over multilayer_span layers centred on the layer",
        ),
    )
}
"""Every steering variant, by name (the first is the plain CAA every variant is compared with)."""


def operator_named(name: str) -> Operator:
    """The variant called ``name``.

    Raises:
        ConfigError: An unknown name (the message lists the known ones).
    """
    if name not in OPERATORS:
        raise ConfigError(f"unknown steering variant {name!r}; known: {', '.join(OPERATORS)}.")
    return OPERATORS[name]


def operator_for_mode(mode: str) -> Operator:
    """The first variant of the hook mode ``mode`` (variants of one mode share its math).

    Raises:
        ConfigError: A mode no variant has (the message lists the known ones).
    """
    for op in OPERATORS.values():
        if op.mode == mode:
            return op
    modes = ", ".join(dict.fromkeys(op.mode for op in OPERATORS.values()))
    raise ConfigError(f"mode must be one of {modes}; got {mode!r}.")


def apply_operator(
    op: Operator, h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, fitted: Fitted
) -> torch.Tensor:
    """The steered states of ``h`` under ``op`` (its norm preservation included)."""
    moved = op.fn(h, v, alpha, fitted)
    return _preserve_norm(h, moved) if op.preserve_norm else moved
