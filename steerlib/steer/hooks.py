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
whose residual is ``h``; ``u = v / |v|``):

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

**The gate's input.** The probe is fitted on 32-token means of content states
(:mod:`steerlib.steer.probe`), while the hook sees one position at a time; a single position's state
is far noisier than a mean of 32 (and its mean-projection differs: content words and function
words load differently on the toxic direction), so the hook applies the probe to the *running
mean* of the row's content states up to and including the position: the same statistic the
probe was fitted on once the row has a window's worth of tokens. Content positions are those
with a position id above 0: the engine gives left padding and the first real token (the
attention sink, left out of the pooled means too) position id 0. Without position ids (GPT-2
blocks), every position after the first of a fresh pass counts. A pass whose position ids all
start at 0 (a prompt, or a recomputed sequence without KV cache) restarts the running mean.
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
from steerlib.models.layers import LayerSpec, get_decoder_layers, resolve_layers

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

SteeringMode: TypeAlias = Literal["add", "gated", "ablate", "clamp", "norm_preserving"]
"""How the vector is applied at a steered position (see the module docstring)."""

MODES: tuple[str, ...] = ("add", "gated", "ablate", "clamp", "norm_preserving")
"""Every :data:`SteeringMode`."""

ALPHA_RANGES: dict[str, tuple[float, float]] = {"ablate": (0.0, 1.0), "clamp": (0.0, 1.0)}
"""Closed alpha range of the modes whose alpha is a fraction (1 = full removal); others: any."""


@dataclass(frozen=True)
class Gate:
    """A linear probe at one layer that decides where ``mode="gated"`` steers.

    The gate fires at a position where ``sigmoid(weight . m + bias) > threshold``, ``m`` the
    running mean of the row's content states so far (see the module docstring).

    Attributes:
        weight: ``(hidden,)`` probe weights (on raw residual states).
        bias: Probe intercept.
        threshold: Probability above which the gate fires.
        soft: Scale the steering by the probe's probability where it fires (else by 1).
    """

    weight: torch.Tensor
    bias: float
    threshold: float = 0.5
    soft: bool = False


VectorLike: TypeAlias = "SteeringVector | torch.Tensor | Mapping[int, torch.Tensor]"


def _check_alpha(alpha: AlphaSpec, mode: str = "add") -> torch.Tensor:
    values = torch.as_tensor(alpha, dtype=torch.float32).flatten().cpu()
    if values.numel() == 0:
        raise ConfigError("alpha is empty: give a number or one number per batch row.")
    if not torch.isfinite(values).all():
        raise ConfigError(f"alpha must be finite, got {values.tolist()}.")
    if mode in ALPHA_RANGES:
        low, high = ALPHA_RANGES[mode]
        outside = [float(a) for a in values if not low <= float(a) <= high]
        if outside:
            raise ConfigError(
                f"mode={mode!r} takes alpha in [{low:g}, {high:g}] (the fraction of the toxic "
                f"component removed; 1 removes all of it, more would reflect it past "
                f"{'its non-toxic level' if mode == 'clamp' else 'zero'}), got {outside[0]:g}: "
                "use an alpha within the range, or mode='add' for stronger steering."
            )
    return values


@dataclass
class SteeringHandle:
    """Mutable state shared by the hooks of one :func:`steering` block.

    Attributes:
        layers: The steered layer indices.
        positions: The position mode of the block.
        alpha: Current coefficients, shape ``(1,)`` or ``(batch,)``.
        mode: The block's mode.
        scale: Factor on alpha (``1 / n_layers`` with ``split_alpha``).
        steer_from: Teacher forcing: ``(batch,)`` first steered position of each row of a
            pass over whole texts (prompt + continuation, in the padded batch's positions);
            the positions before it (the prompt) are left as they are. ``None``: as
            ``positions`` says. Set it with :meth:`set_steer_from`.
    """

    layers: list[int]
    positions: Positions
    alpha: torch.Tensor
    mode: SteeringMode = "add"
    scale: float = 1.0
    steer_from: torch.Tensor | None = None
    _prompt_length: dict[int, int | None] = field(default_factory=dict)
    _gate_state: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)
    _rows: torch.Tensor | None = None
    _fired: torch.Tensor | None = None
    _gated: torch.Tensor | None = None

    def set_alpha(self, alpha: AlphaSpec) -> None:
        """Change the coefficients for the following forward passes.

        Raises:
            ConfigError: A non-finite alpha, or one outside its mode's :data:`ALPHA_RANGES`.
        """
        self.alpha = _check_alpha(alpha, self.mode)

    def set_steer_from(self, first: Sequence[int] | torch.Tensor | None) -> None:
        """Steer only positions ``>= first[row]`` of each row in the following passes.

        The teacher-forced counterpart of ``positions="generated"``: a pass over texts whose
        first part plays the prompt and whose rest plays the generated continuation. Every
        pass must then have ``len(first)`` rows (or a multiple: rows repeated per alpha,
        ``first`` repeated likewise). ``None`` turns it off.
        """
        self.steer_from = (
            None if first is None else torch.as_tensor(first, dtype=torch.long).flatten().cpu()
        )

    def reset(self) -> None:
        """Forget the prompt seen so far (prompt length, gate state and gate counts)."""
        self._prompt_length = dict.fromkeys(self.layers)
        self._gate_state = {}
        self._rows = self._fired = self._gated = None

    def expand_rows(self, repeats: int) -> None:
        """Repeat every row's gate state ``repeats`` times (a prefill's cache expanded to samples).

        Each new row starts with its source row's gate counts; rows are numbered anew.
        """
        if repeats == 1:
            return
        self._gate_state = {
            layer: (total.repeat_interleave(repeats, 0), count.repeat_interleave(repeats, 0), seen)
            for layer, (total, count, seen) in self._gate_state.items()
        }
        if self._fired is not None and self._gated is not None and self._rows is not None:
            self._fired = self._fired[self._rows].repeat_interleave(repeats)
            self._gated = self._gated[self._rows].repeat_interleave(repeats)
            self._rows = torch.arange(len(self._fired))

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (indices into the current rows) for the next passes.

        The gate counts of dropped rows are kept: :meth:`gate_counts` reports every row.
        """
        keep = keep.cpu()
        self._gate_state = {
            layer: (total[keep.to(total.device)], count[keep.to(count.device)], seen)
            for layer, (total, count, seen) in self._gate_state.items()
        }
        if self._rows is not None:
            self._rows = self._rows[keep]

    def gate_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fired, gated)`` per row, summed over layers.

        ``fired``: steered content positions where the gate fired; ``gated``: all steered
        content positions the gate looked at. Rows are numbered as after the last
        :meth:`expand_rows`; empty before any gated pass.
        """
        if self._fired is None or self._gated is None:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return self._fired.clone(), self._gated.clone()

    def _count(self, fired: torch.Tensor, gated: torch.Tensor) -> None:
        if self._rows is None or self._fired is None or self._gated is None:
            self._rows = torch.arange(len(fired))
            self._fired = torch.zeros(len(fired), dtype=torch.long)
            self._gated = torch.zeros(len(fired), dtype=torch.long)
        self._fired.index_add_(0, self._rows, fired.cpu().long())
        self._gated.index_add_(0, self._rows, gated.cpu().long())


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


def _content_positions(
    handle: SteeringHandle, layer: int, kwargs: dict[str, Any], batch: int, seq_len: int
) -> tuple[torch.Tensor, bool]:
    """``(batch, seq)`` bool mask of content positions, and whether the pass starts afresh."""
    position_ids = kwargs.get("position_ids")
    if isinstance(position_ids, torch.Tensor) and position_ids.shape[-1] == seq_len:
        ids = position_ids.expand(batch, seq_len)
        return ids > 0, bool((ids[:, 0] == 0).all())
    state = handle._gate_state.get(layer)
    fresh = state is None or seq_len > 1
    offset = 0 if fresh or state is None else state[2]
    ids = torch.arange(offset, offset + seq_len, device=handle.alpha.device)
    return (ids > 0).expand(batch, seq_len), fresh


def _gate_values(
    handle: SteeringHandle,
    layer: int,
    gate: Gate,
    hidden: torch.Tensor,
    kwargs: dict[str, Any],
    start: int,
) -> torch.Tensor:
    """``(batch, seq)`` gate values (0/1, or the probe's probability where it fires).

    Updates the running mean of content states and the gate counts of the steered positions.
    """
    batch, seq_len = hidden.shape[0], hidden.shape[1]
    content, fresh = _content_positions(handle, layer, kwargs, batch, seq_len)
    content = content.to(hidden.device)
    states = hidden.detach().float()
    weights = content.float().unsqueeze(-1)
    if fresh or layer not in handle._gate_state:
        total = states.new_zeros(batch, states.shape[-1])
        count = states.new_zeros(batch)
        seen = 0
    else:
        total, count, seen = handle._gate_state[layer]
        if total.shape[0] != batch:
            raise ConfigError(
                f"the gate holds {total.shape[0]} rows but the batch has {batch}: call "
                "handle.expand_rows / handle.select_rows when the batch changes mid-block."
            )
    sums = total.unsqueeze(1) + (states * weights).cumsum(1)
    counts = count.unsqueeze(1) + content.float().cumsum(1)
    means = sums / counts.clamp(min=1.0).unsqueeze(-1)
    weight = gate.weight.to(device=states.device, dtype=torch.float32)
    probability = torch.sigmoid(means @ weight + float(gate.bias))
    fires = (probability > gate.threshold) & content & (counts > 0)
    handle._gate_state[layer] = (sums[:, -1], counts[:, -1], seen + seq_len)
    handle._count(fires[:, start:].sum(1), content[:, start:].sum(1))
    values = probability * fires if gate.soft else fires.float()
    return values.to(hidden.dtype)


def _apply_mode(
    mode: SteeringMode,
    part: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    offset: float,
    gate: torch.Tensor | None,
) -> torch.Tensor:
    """The steered states of ``part`` (``(batch, seq, hidden)``); ``alpha`` is ``(batch, 1, 1)``."""
    if mode == "add":
        return part - alpha * delta
    if mode == "gated":
        assert gate is not None
        return part - alpha * gate.unsqueeze(-1) * delta
    if mode == "norm_preserving":
        moved = part - alpha * delta
        ratio = part.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp(
            min=torch.finfo(part.dtype).tiny
        )
        return moved * ratio
    unit = delta / delta.norm().clamp(min=torch.finfo(delta.dtype).tiny)
    excess = ((part @ unit) - offset).clamp(min=0.0)
    return part - alpha * excess.unsqueeze(-1) * unit


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

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        batch, seq_len = hidden.shape[0], hidden.shape[1]
        start = _steer_start(handle, layer, seq_len)
        gate_values = (
            _gate_values(handle, layer, gate, hidden, kwargs, min(start, seq_len))
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
        values = None if gate_values is None else gate_values[:, start:]
        moved = _apply_mode(handle.mode, part, alpha, cache[key], offset, values)
        steered = moved if start == 0 else torch.cat([hidden[:, :start], moved], dim=1)
        if handle.steer_from is not None:
            steered = _keep_before(handle.steer_from, hidden, steered)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    hook._steerlib_hook = True  # type: ignore[attr-defined]
    return hook


def _clamp_offset(
    vector: VectorLike, layer: int, mode: SteeringMode, offsets: Mapping[int, float] | None
) -> float:
    """``c`` of the clamp mode at ``layer`` (0 for every other mode)."""
    if mode != "clamp":
        return 0.0
    known = offsets if offsets is not None else getattr(vector, "nontoxic_projections", None)
    if not known or layer not in known:
        raise ConfigError(
            f"mode='clamp' needs the non-toxic texts' mean projection at layer {layer}, which "
            "this vector does not record: rebuild it with steerlib.steer.vectors.compute_caa (step "
            "04), or pass clamp_offsets={layer: value}."
        )
    return float(known[layer])


def _gate_for(gate: Gate | Mapping[int, Gate] | None, layer: int) -> Gate:
    found = gate.get(layer) if isinstance(gate, Mapping) else gate
    if found is None:
        raise ConfigError(
            f"mode='gated' needs a probe at layer {layer}: pass gate=probe.gate({layer}) "
            "(steerlib.steer.probe.fit_probe, saved by step 04)."
        )
    return found


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
            "record: build it with steerlib.steer.vectors.compute_caa, or use units='raw'."
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
        units: ``"raw"`` or ``"norm"`` (see :data:`Units`); ``"ablate"`` and ``"clamp"`` use
            only the vector's direction.
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
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
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
        alpha=_check_alpha(alpha, mode),
        mode=mode,
        scale=1.0 / len(indices) if split_alpha else 1.0,
    )
    handle.reset()
    prepared = [
        (
            index,
            _scaled_direction(vector, index, "raw" if mode in ("ablate", "clamp") else units),
            _clamp_offset(vector, index, mode, clamp_offsets),
            _gate_for(gate, index) if mode == "gated" else None,
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
