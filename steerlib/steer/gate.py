"""The gate of gated steering: a linear probe on the running mean of a row's content states.

The probe is fitted on 32-token means of content states (:mod:`steerlib.steer.probe`), while the
hook sees one position at a time; a single position's state is far noisier than a mean of 32
(and its mean-projection differs: content words and function words load differently on the
toxic direction), so the hook applies the probe to the *running mean* of the row's content
states up to and including the position: the same statistic the probe was fitted on once the
row has a window's worth of tokens. Content positions are those with a position id above 0: the
engine gives left padding and the first real token (the attention sink, left out of the pooled
means too) position id 0. Without position ids (GPT-2 blocks), every position after the first of
a fresh pass counts. A pass whose position ids all start at 0 (a prompt, or a recomputed
sequence without KV cache) restarts the running mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from steerlib.errors import ConfigError
from steerlib.steer.handle import SteeringHandle

__all__ = ["Gate", "content_positions", "gate_values"]


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


def content_positions(
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


def gate_values(
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
    content, fresh = content_positions(handle, layer, kwargs, batch, seq_len)
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
