"""Residual-stream steering hooks.

Sign convention (the one place it is defined): a steering vector points TOWARD toxicity
(mean toxic activation minus mean non-toxic activation), and steering SUBTRACTS
``alpha * vector`` from a layer's output. A positive ``alpha`` therefore steers away from
toxicity; a negative ``alpha`` steers toward it; ``alpha == 0`` leaves the model untouched.

Hooks are global state on the model (PyTorch keeps them in each module's hook dictionary), so
they are only ever registered inside :func:`steering`, a context manager that removes them in
``finally`` on every way out of the block: normal exit, exception, ``KeyboardInterrupt`` or a
generator closed half-way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlib.errors import ConfigError
from steerlib.layers import LayerSpec, get_decoder_layers, resolve_layers

if TYPE_CHECKING:
    from steerlib.vectors import SteeringVector

__all__ = [
    "AlphaSpec",
    "ForwardHookFn",
    "Positions",
    "SteeringHandle",
    "Units",
    "active_hook_count",
    "steering",
]

Positions: TypeAlias = Literal["all", "generated"]
"""Which positions are steered: every position, or only tokens generated after the prompt."""

Units: TypeAlias = Literal["raw", "norm"]
"""``"raw"``: alpha multiplies the vector as computed. ``"norm"``: the subtracted vector has
length ``alpha`` times the layer's mean residual-stream norm (recorded with the vector)."""

AlphaSpec: TypeAlias = float | Sequence[float] | torch.Tensor
"""One coefficient for the whole batch, or one per batch row."""

ForwardHookFn: TypeAlias = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], Any]
"""Signature of a forward hook registered with ``with_kwargs=True``."""

VectorLike: TypeAlias = "SteeringVector | torch.Tensor | Mapping[int, torch.Tensor]"


def _check_alpha(alpha: AlphaSpec) -> torch.Tensor:
    values = torch.as_tensor(alpha, dtype=torch.float32).flatten().cpu()
    if values.numel() == 0:
        raise ConfigError("alpha is empty: give a number or one number per batch row.")
    if not torch.isfinite(values).all():
        raise ConfigError(f"alpha must be finite, got {values.tolist()}.")
    return values


@dataclass
class SteeringHandle:
    """Mutable state shared by the hooks of one :func:`steering` block.

    Attributes:
        layers: The steered layer indices.
        positions: The position mode of the block.
        alpha: Current coefficients, shape ``(1,)`` or ``(batch,)``.
    """

    layers: list[int]
    positions: Positions
    alpha: torch.Tensor
    _prompt_length: dict[int, int | None] = field(default_factory=dict)

    def set_alpha(self, alpha: AlphaSpec) -> None:
        """Change the coefficients for the following forward passes."""
        self.alpha = _check_alpha(alpha)

    def reset(self) -> None:
        """Forget the prompt length seen so far (start of a new prompt, ``"generated"`` mode)."""
        self._prompt_length = dict.fromkeys(self.layers)


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


def _make_hook(handle: SteeringHandle, layer: int, delta: torch.Tensor) -> ForwardHookFn:
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        batch, seq_len = hidden.shape[0], hidden.shape[1]
        start = _steer_start(handle, layer, seq_len)
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
        alpha = alpha.to(device=hidden.device, dtype=hidden.dtype).view(-1, 1, 1)
        shift = alpha * cache[key]
        if start == 0:
            steered = hidden - shift
        else:
            steered = torch.cat([hidden[:, :start], hidden[:, start:] - shift], dim=1)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    hook._steerlib_hook = True  # type: ignore[attr-defined]
    return hook


def _scaled_direction(vector: VectorLike, layer: int, units: Units) -> torch.Tensor:
    direction = _direction_for(vector, layer).detach().float().flatten()
    if units == "raw":
        return direction
    if units != "norm":
        raise ConfigError(f"units must be 'raw' or 'norm', not {units!r}.")
    mean_norms = getattr(vector, "mean_norms", None)
    if not mean_norms or layer not in mean_norms:
        raise ConfigError(
            "units='norm' needs the layer's mean residual norm, which this vector does not "
            "record: build it with steerlib.vectors.compute_caa, or use units='raw'."
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
    layers_attribute: str | None = None,
) -> Iterator[SteeringHandle]:
    """Subtract ``alpha * vector`` from the output of decoder layers inside a ``with`` block.

    Args:
        model: A causal LM whose decoder layers :func:`steerlib.layers.get_decoder_layers`
            finds.
        vector: A :class:`~steerlib.vectors.SteeringVector`, a ``{layer: tensor}`` mapping, or
            one ``(hidden,)`` tensor used at every layer given.
        alpha: A number, or one number per batch row (a whole alpha sweep in one batch).
            Positive values steer away from toxicity.
        layers: Layers to steer; default: every layer the vector holds.
        positions: ``"all"`` or ``"generated"`` (only tokens after the prompt; the first forward
            pass inside the block is taken to be the prompt; works with and without KV cache).
        units: ``"raw"`` or ``"norm"`` (see :data:`Units`).
        layers_attribute: Dotted path of the layer list for unusual model layouts.

    Yields:
        A :class:`SteeringHandle` whose ``set_alpha`` changes the coefficients mid-block.

    Example:
        >>> with steering(model, vector, alpha=[0.0, 1.5], layers=18):  # doctest: +SKIP
        ...     out = model.generate(**batch_of_two, max_new_tokens=20)
    """
    if positions not in ("all", "generated"):
        raise ConfigError(f"positions must be 'all' or 'generated', not {positions!r}.")
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
    handle = SteeringHandle(layers=indices, positions=positions, alpha=_check_alpha(alpha))
    handle.reset()
    registered: list[RemovableHandle] = []
    try:
        for index in indices:
            delta = _scaled_direction(vector, index, units)
            hook = _make_hook(handle, index, delta)
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
