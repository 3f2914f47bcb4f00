"""The mutable state of one ``steering`` block: its alphas, prompt lengths and gate counts.

:class:`SteeringHandle` is what :func:`steerlib.steer.hooks.steering` yields; its hooks read the
current alphas from it and keep the gate's running sums and counts in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import torch

from steerlib.errors import ConfigError
from steerlib.steer.operators import OPERATORS, Positions, operator_for_mode

__all__ = ["ALPHA_RANGES", "AlphaSpec", "SteeringHandle", "SteeringMode", "check_alpha"]

AlphaSpec: TypeAlias = float | Sequence[float] | torch.Tensor
"""One coefficient for the whole batch, or one per batch row."""

SteeringMode: TypeAlias = str
"""How the vector is applied at a steered position: the ``mode`` of an entry of
:data:`steerlib.steer.operators.OPERATORS` (``"add"``, ``"gated"``, ``"ablate"``, ``"clamp"``,
``"norm_preserving"``, or a new variant's name)."""

ALPHA_RANGES: dict[str, tuple[float, float]] = {
    op.mode: op.alpha_range for op in OPERATORS.values() if op.alpha_range is not None
}
"""Closed alpha range of the modes whose alpha is a fraction (1 = full removal); others: any."""


def check_alpha(alpha: AlphaSpec, mode: str = "add") -> torch.Tensor:
    """``alpha`` as a flat float32 CPU tensor, checked against the mode's :data:`ALPHA_RANGES`.

    Raises:
        ConfigError: An empty or non-finite alpha, or one outside its mode's range.
    """
    values = torch.as_tensor(alpha, dtype=torch.float32).flatten().cpu()
    if values.numel() == 0:
        raise ConfigError("alpha is empty: give a number or one number per batch row.")
    if not torch.isfinite(values).all():
        raise ConfigError(f"alpha must be finite, got {values.tolist()}.")
    alpha_range = operator_for_mode(mode).alpha_range
    if alpha_range is not None:
        low, high = alpha_range
        outside = [float(a) for a in values if not low <= float(a) <= high]
        past = "its non-toxic level" if operator_for_mode(mode).needs_clamp_levels else "zero"
        if outside:
            raise ConfigError(
                f"mode={mode!r} takes alpha in [{low:g}, {high:g}] (the fraction of the toxic "
                f"component removed; 1 removes all of it, more would reflect it past "
                f"{past}), got {outside[0]:g}: "
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
        self.alpha = check_alpha(alpha, self.mode)

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
