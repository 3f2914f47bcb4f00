"""A forward pass from one decoder layer on, the layers below it replayed from a kept residual.

Steering at layer ``k`` changes nothing below it: in a teacher-forced pass the residual stream
entering layer ``k`` is the unsteered one, for every alpha. :func:`keeping` keeps that residual
during an unsteered pass that runs anyway, :func:`layer_output` with a pass of its own through
layers ``0 .. k-1`` only (ended there), and :func:`replayed_below` runs the model with those
layers replaced by stand-ins, the last of which returns the kept residual: the model's own code
still embeds the tokens, builds the masks and the rotary tables, then computes only layers
``k ..`` and the head. Layers keep their places in the list, so per-layer settings (Gemma 3's
sliding and global layers) stay attached to the right ones; the stand-ins are put back in a
``finally``.

The stand-ins skip work; they change no number a layer ``>= k`` sees, except through the batch
shape: layers below ``k`` ran on the unrepeated batch (once per text), not on one copy per
alpha. ``tests/test_partial.py`` checks the logits against the full pass on tiny Llama, Phi-3,
Gemma 3, GPT-2, Bloom and Falcon models (the last two return tuples from their layers).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlib.errors import ConfigError, ModelError
from steerlib.models.layers import get_decoder_layers

__all__ = ["KeptResidual", "keeping", "layer_output", "replayed_below"]


@dataclass(frozen=True, eq=False)
class KeptResidual:
    """The residual stream leaving decoder layer ``layer - 1``: what layer ``layer`` receives.

    Attributes:
        layer: The first layer run from it.
        hidden: ``(batch, seq, hidden)`` residual, in the model's dtype and on its device.
        as_tuple: The model's layers return a tuple (Falcon, Bloom, GPT-Neo), not a tensor.
        source: ``id`` of the model that made it (:meth:`made_by`).
    """

    layer: int
    hidden: torch.Tensor
    as_tuple: bool
    source: int | None = None

    def made_by(self, model: nn.Module) -> bool:
        """Whether it was made by ``model`` as it is now (same object, dtype and device)."""
        weight = next(model.parameters())
        return (
            self.source == id(model)
            and self.hidden.dtype == weight.dtype
            and self.hidden.device == weight.device
        )

    @property
    def nbytes(self) -> int:
        """Bytes the kept tensor takes."""
        return self.hidden.numel() * self.hidden.element_size()


class _StandIn(nn.Module):
    """Takes a decoder layer's place: passes its input on, or returns the kept residual."""

    def __init__(self, output: torch.Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.output = output
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("hidden_states") if hidden_states is None else hidden_states
        if self.output is not None:
            if out is not None and tuple(out.shape[:2]) != tuple(self.output.shape[:2]):
                raise ModelError(
                    f"the kept residual is for a batch of shape {tuple(self.output.shape[:2])}, "
                    f"but the pass has {tuple(out.shape[:2])}: replay a residual only with "
                    "copies of the batch it was made from."
                )
            out = self.output
        return (out,) if self.as_tuple else out


@contextmanager
def _replaced(layers: nn.ModuleList, stand_ins: dict[int, nn.Module]) -> Iterator[None]:
    """Put ``stand_ins`` in ``layers`` at their indices; the real layers back in ``finally``."""
    originals = {index: layers[index] for index in stand_ins}
    try:
        for index, module in stand_ins.items():
            layers[index] = module
        yield
    finally:
        for index, module in originals.items():
            layers[index] = module


class _Reached(Exception):
    """Raised by :func:`layer_output`'s hook to end the pass once the residual is kept."""


@contextmanager
def keeping(
    model: nn.Module, layers: Iterable[int], *, stop: bool = False
) -> Iterator[dict[int, KeptResidual]]:
    """While a pass runs inside the block, keep the residual entering each of ``layers``.

    A forward hook on layer ``k - 1`` keeps its output for each ``k`` (``>= 1``); the hooks are
    removed in a ``finally``. The dict yielded fills as the pass runs. Without ``stop`` each is a
    copy (a layer above may not write into it in place); with ``stop`` the pass is ended
    (:class:`_Reached`) once the highest layer's residual is kept.

    Raises:
        ConfigError: A layer is not in ``1 .. n_layers - 1``.
    """
    decoder = get_decoder_layers(model)
    wanted = sorted(set(layers))
    for layer in wanted:
        if not 1 <= layer < len(decoder):
            raise ConfigError(
                f"a kept residual feeds layers 1..{len(decoder) - 1}, not {layer}: layer 0 "
                "takes the embeddings (run the whole pass instead)."
            )
    kept: dict[int, KeptResidual] = {}

    def hook(layer: int) -> Any:
        def keep(_module: nn.Module, _args: Any, output: Any) -> None:
            as_tuple = isinstance(output, tuple)
            hidden = output[0] if as_tuple else output
            hidden = hidden.detach() if stop else hidden.detach().clone()
            kept[layer] = KeptResidual(layer, hidden, as_tuple, id(model))
            if stop and layer == wanted[-1]:
                raise _Reached

        return keep

    handles = [decoder[layer - 1].register_forward_hook(hook(layer)) for layer in wanted]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_output(model: nn.Module, layer: int, **inputs: Any) -> KeptResidual:
    """The residual entering decoder layer ``layer`` (``>= 1``) for ``inputs``, unsteered.

    Only layers ``0 .. layer-1`` run: :func:`keeping` ends the pass once the residual is kept
    (the layers above and the head never run; the model holds no state from a pass without a
    cache). A pass that runs anyway keeps it with :func:`keeping` alone.

    Args:
        model: A causal LM (its decoder layers as :func:`get_decoder_layers` finds them).
        layer: The first layer the residual feeds.
        **inputs: The forward pass's inputs (``input_ids``, ``attention_mask``...), without a
            KV cache.

    Raises:
        ConfigError: ``layer`` is not in ``1 .. n_layers - 1``.
        ModelError: The pass never reached layer ``layer - 1`` (the model does not run the
            layers :func:`get_decoder_layers` finds).
    """
    with keeping(model, [layer], stop=True) as kept:
        try:
            model(**inputs)
        except _Reached:
            pass
    if layer not in kept:
        raise ModelError(
            f"the forward pass never reached decoder layer {layer - 1}: the model does not run "
            "the layers get_decoder_layers finds."
        )
    return kept[layer]


@contextmanager
def replayed_below(model: nn.Module, kept: KeptResidual, copies: int = 1) -> Iterator[None]:
    """Inside the block, a forward pass computes layers ``kept.layer ..`` only.

    Layers below are stand-ins; the last returns ``kept.hidden`` repeated ``copies`` times along
    the batch (``hidden.repeat(copies, 1, 1)``, the layout of ``input_ids.repeat(copies, 1)``),
    so the pass's inputs must be that many copies of the batch ``kept`` was made from.

    Args:
        model: The model ``kept`` came from.
        kept: The residual (:func:`layer_output`).
        copies: Copies of the batch in the pass.
    """
    layers = get_decoder_layers(model)
    hidden = kept.hidden if copies == 1 else kept.hidden.repeat(copies, 1, 1)
    below: dict[int, nn.Module] = {
        index: _StandIn(None, kept.as_tuple) for index in range(kept.layer - 1)
    }
    below[kept.layer - 1] = _StandIn(hidden, kept.as_tuple)
    with _replaced(layers, below):
        yield
