"""Residual-stream steering hooks.

Sign convention (the one place it is defined): a steering vector points TOWARD toxicity
(mean toxic activation minus mean non-toxic activation), and steering SUBTRACTS
``alpha * vector`` from a layer's output. A positive ``alpha`` therefore steers away from
toxicity; a negative ``alpha`` steers toward it; ``alpha == 0`` leaves the model untouched.

Hooks are global state on the model (PyTorch keeps them in each module's hook dictionary), so
they are only ever registered inside :func:`steering`, a context manager that removes them in
``finally`` on every way out of the block: normal exit, exception, ``KeyboardInterrupt`` or a
generator closed half-way.

**Modes** (``mode=``; one hook, several ways to use the vector ``v`` at a steered position
whose residual is ``h``; ``u = v / |v|``). Each is the operator of an entry of the one table,
:data:`steerlib.steer.operators.OPERATORS`, which the hook applies; the entries say what each
needs (a gate, clamp levels, the direction only, norm preservation):

* ``"add"``: ``h - alpha * v`` (plain CAA);
* ``"gated"``: ``h - alpha * g * v``, with ``g`` 1 where a linear probe (:class:`Gate`) says
  the context is toxic and 0 elsewhere (or the probe's probability, ``Gate.soft``); conditional
  steering in the manner of CAST (Lee et al., 2024, arXiv:2409.05907);
* ``"ablate"``: ``h - alpha * max(0, h.u) * u``: the positive part of the component along the
  toxic direction is removed (alpha 1 removes all of it), directional ablation as in Arditi
  et al. (2024, arXiv:2406.11717), one-sided;
* ``"clamp"``: ``h - alpha * max(0, h.u - c) * u`` with ``c`` the non-toxic texts' mean
  projection on ``u`` (recorded with the vector): the component is pulled down to the
  non-toxic level, never pushed below it;
* ``"norm_preserving"``: ``h' = h - alpha * v``, then rescaled to ``|h|``.

``"ablate"`` and ``"clamp"`` take ``alpha`` in ``[0, 1]`` only (:data:`ALPHA_RANGES`): alpha is
the fraction of the excess component removed, so 1 is full removal (the projection lands on 0,
or on ``c``) and anything above 1 would push it past that (reflect it), which is neither
ablation nor clamping; a negative alpha would amplify it. Both are refused.

With several layers and ``split_alpha=True`` each layer gets ``alpha / n_layers``.

**The gate's input** is the running mean of the row's content states: see
:mod:`steerlib.steer.gate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlib.errors import ConfigError
from steerlib.models.layers import LayerSpec, get_decoder_layers, resolve_layers
from steerlib.steer.gate import Gate, gate_values
from steerlib.steer.handle import ALPHA_RANGES, AlphaSpec, SteeringHandle, SteeringMode, check_alpha
from steerlib.steer.operators import (
    OPERATORS,
    Fitted,
    Operator,
    Positions,
    apply_operator,
    operator_for_mode,
)

if TYPE_CHECKING:
    from steerlib.steer.vectors import SteeringVector

__all__ = [
    "ALPHA_RANGES",
    "MODES",
    "AlphaSpec",
    "ForwardHookFn",
    "Gate",
    "Positions",
    "SteeringHandle",
    "SteeringMode",
    "Units",
    "VectorLike",
    "active_hook_count",
    "steering",
]

Units: TypeAlias = Literal["raw", "norm"]
"""The alpha units (the run parameter ``units``; not the sweep's work units,
:class:`steerlib.generate.partition.WorkUnit`). ``"raw"``: alpha multiplies the vector as
computed. ``"norm"``: the subtracted vector has length ``alpha`` times the layer's mean
residual-stream norm (recorded with the vector)."""

ForwardHookFn: TypeAlias = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], Any]
"""Signature of a forward hook registered with ``with_kwargs=True``."""

MODES: tuple[str, ...] = tuple(dict.fromkeys(op.mode for op in OPERATORS.values()))
"""Every hook mode (:data:`SteeringMode`), in the order of the operator table."""

VectorLike: TypeAlias = "SteeringVector | torch.Tensor | Mapping[int, torch.Tensor]"


def _direction_for(vector: VectorLike, layer: int) -> torch.Tensor:
    if isinstance(vector, torch.Tensor):
        return vector
    if isinstance(vector, Mapping):
        return vector[layer]
    return vector[layer]


def _steer_start(handle: SteeringHandle, layer: int, seq_len: int) -> int:
    """First position of this forward pass that is steered."""
    if handle.positions == "all":
        return 0
    prompt_length = handle._prompt_length.get(layer)
    if prompt_length is None:
        # The first forward pass of a block in "generated" mode is the prompt (prefill).
        handle._prompt_length[layer] = seq_len
        return seq_len
    if seq_len > prompt_length:
        # No KV cache: the whole sequence is recomputed; steer what follows the prompt.
        return prompt_length
    # KV cache: every position of an incremental step is a generated token.
    return 0


def _keep_before(first: torch.Tensor, hidden: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """``steered`` with each row's positions before ``first[row]`` taken from ``hidden``."""
    batch, seq_len = hidden.shape[0], hidden.shape[1]
    if batch % len(first):
        raise ConfigError(
            f"steer_from gives {len(first)} rows but the pass has {batch}: give one first "
            "position per text (the rows of one pass, or a divisor of them when rows repeat)."
        )
    first = first.repeat(batch // len(first)).to(hidden.device)
    keep = torch.arange(seq_len, device=hidden.device)[None, :] < first[:, None]
    return torch.where(keep.unsqueeze(-1), hidden, steered)


def _make_hook(
    handle: SteeringHandle,
    layer: int,
    delta: torch.Tensor,
    offset: float = 0.0,
    gate: Gate | None = None,
) -> ForwardHookFn:
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    operator = operator_for_mode(handle.mode)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        batch, seq_len = hidden.shape[0], hidden.shape[1]
        start = _steer_start(handle, layer, seq_len)
        values_all = (
            gate_values(handle, layer, gate, hidden, kwargs, min(start, seq_len))
            if gate is not None
            else None
        )
        if start >= seq_len:
            return output
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = delta.to(device=hidden.device, dtype=hidden.dtype)
        alpha = handle.alpha
        if alpha.numel() not in (1, batch):
            raise ConfigError(
                f"alpha has {alpha.numel()} values but the batch has {batch} rows: give one "
                "alpha per batch row (after expanding samples) or a single number."
            )
        alpha = (alpha * handle.scale).to(device=hidden.device, dtype=hidden.dtype).view(-1, 1, 1)
        part = hidden if start == 0 else hidden[:, start:]
        values = None if values_all is None else values_all[:, start:]
        moved = apply_operator(operator, part, cache[key], alpha, Fitted(values, offset))
        steered = moved if start == 0 else torch.cat([hidden[:, :start], moved], dim=1)
        if handle.steer_from is not None:
            steered = _keep_before(handle.steer_from, hidden, steered)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    hook._steerlib_hook = True  # type: ignore[attr-defined]
    return hook


def _clamp_offset(
    vector: VectorLike, layer: int, operator: Operator, offsets: Mapping[int, float] | None
) -> float:
    """``c`` of an operator that needs clamp levels at ``layer`` (0 for every other one)."""
    if not operator.needs_clamp_levels:
        return 0.0
    known = offsets if offsets is not None else getattr(vector, "nontoxic_projections", None)
    if not known or layer not in known:
        raise ConfigError(
            f"mode={operator.mode!r} needs the non-toxic texts' mean projection at layer "
            f"{layer}, which this vector does not record: rebuild it with "
            "steerlib.steer.vectors.compute_caa (step 04), or pass clamp_offsets={layer: value}."
        )
    return float(known[layer])


def _gate_for(gate: Gate | Mapping[int, Gate] | None, layer: int, mode: str) -> Gate:
    found = gate.get(layer) if isinstance(gate, Mapping) else gate
    if found is None:
        raise ConfigError(
            f"mode={mode!r} needs a probe at layer {layer}: pass gate=probe.gate({layer}) "
            "(steerlib.steer.probe.fit_probe, saved by step 04)."
        )
    return found


def _scaled_direction(vector: VectorLike, layer: int, units: Units) -> torch.Tensor:
    direction = _direction_for(vector, layer).detach().float().flatten()
    if units == "raw":
        return direction
    if units != "norm":
        raise ConfigError(f"units (the alpha units) must be 'raw' or 'norm', not {units!r}.")
    mean_norms = getattr(vector, "mean_norms", None)
    if not mean_norms or layer not in mean_norms:
        raise ConfigError(
            "units='norm' (alphas in units of the layer's mean residual norm) needs that norm, "
            "which this vector does not record: build it with "
            "steerlib.steer.vectors.compute_caa, or use units='raw'."
        )
    norm = float(direction.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ConfigError(
            f"the steering vector at layer {layer} has norm {norm}; cannot rescale it."
        )
    return direction / norm * float(mean_norms[layer])


@contextmanager
def steering(
    model: nn.Module,
    vector: VectorLike,
    alpha: AlphaSpec,
    layers: LayerSpec | None = None,
    *,
    positions: Positions = "all",
    units: Units = "raw",
    mode: SteeringMode = "add",
    gate: Gate | Mapping[int, Gate] | None = None,
    clamp_offsets: Mapping[int, float] | None = None,
    split_alpha: bool = False,
    layers_attribute: str | None = None,
) -> Iterator[SteeringHandle]:
    """Subtract ``alpha * vector`` from the output of decoder layers inside a ``with`` block.

    Args:
        model: A causal LM whose decoder layers :func:`steerlib.models.layers.get_decoder_layers`
            finds.
        vector: A :class:`~steerlib.steer.vectors.SteeringVector`, a ``{layer: tensor}`` mapping, or
            one ``(hidden,)`` tensor used at every layer given.
        alpha: A number, or one number per batch row (a whole alpha sweep in one batch).
            Positive values steer away from toxicity.
        layers: Layers to steer; default: every layer the vector holds.
        positions: ``"all"`` or ``"generated"`` (only tokens after the prompt; the first forward
            pass inside the block is taken to be the prompt; works with and without KV cache).
        units: Alpha units, ``"raw"`` or ``"norm"`` (see :data:`Units`); ``"ablate"`` and
            ``"clamp"`` use only the vector's direction.
        mode: How the vector is applied (see the module docstring).
        gate: The probe of ``mode="gated"``: one :class:`Gate`, or one per layer.
        clamp_offsets: ``c`` per layer for ``mode="clamp"``; default: the vector's
            ``nontoxic_projections``.
        split_alpha: Divide alpha equally across the steered layers (several layers at once).
        layers_attribute: Dotted path of the layer list for unusual model layouts.

    Yields:
        A :class:`SteeringHandle` whose ``set_alpha`` changes the coefficients mid-block.

    Raises:
        ConfigError: A bad mode, position mode, layer or alpha; an ``"ablate"`` or ``"clamp"``
            alpha outside ``[0, 1]`` (:data:`ALPHA_RANGES`); a gate or clamp level missing.

    Example:
        >>> with steering(model, vector, alpha=[0.0, 1.5], layers=18):  # doctest: +SKIP
        ...     out = model.generate(**batch_of_two, max_new_tokens=20)
    """
    if positions not in ("all", "generated"):
        raise ConfigError(f"positions must be 'all' or 'generated', not {positions!r}.")
    operator = operator_for_mode(mode)  # an unknown mode raises, listing the known ones
    modules = get_decoder_layers(model, layers_attribute)
    if layers is None:
        if isinstance(vector, torch.Tensor):
            raise ConfigError("layers is required when the vector is a single tensor.")
        layers = sorted(
            int(k) for k in (vector.keys() if isinstance(vector, Mapping) else vector.layers)
        )
    indices = resolve_layers(len(modules), layers)
    if not isinstance(vector, torch.Tensor):
        available = set(vector.keys()) if isinstance(vector, Mapping) else set(vector.layers)
        missing = [i for i in indices if i not in available]
        if missing:
            raise ConfigError(
                f"the steering vector has no direction for layer(s) {missing}; "
                f"it holds layers {sorted(available)}."
            )
    handle = SteeringHandle(
        layers=indices,
        positions=positions,
        alpha=check_alpha(alpha, mode),
        mode=mode,
        scale=1.0 / len(indices) if split_alpha else 1.0,
    )
    handle.reset()
    prepared = [
        (
            index,
            _scaled_direction(vector, index, "raw" if operator.direction_only else units),
            _clamp_offset(vector, index, operator, clamp_offsets),
            _gate_for(gate, index, mode) if operator.needs_probe else None,
        )
        for index in indices
    ]
    registered: list[RemovableHandle] = []
    try:
        for index, delta, offset, layer_gate in prepared:
            hook = _make_hook(handle, index, delta, offset, layer_gate)
            registered.append(modules[index].register_forward_hook(hook, with_kwargs=True))
        yield handle
    finally:
        for removable in registered:
            removable.remove()


def active_hook_count(model: nn.Module, *, steerlib_only: bool = True) -> int:
    """Number of forward hooks registered anywhere in ``model``.

    Args:
        model: Any module.
        steerlib_only: Count only steering hooks (transformers registers hooks of its own, for
            example to record hidden states, and keeps them).
    """
    count = 0
    for module in model.modules():
        for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]:
            count += 1 if not steerlib_only or getattr(hook, "_steerlib_hook", False) else 0
    return count
