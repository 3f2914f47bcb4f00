"""Find the decoder layers of a causal language model and check layer indices.

The residual stream "after layer ``i``" is the output of ``get_decoder_layers(model)[i]``;
every other module of steerlib hooks exactly those modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from steerlib.errors import ConfigError, ModelError

__all__ = [
    "LAYER_ATTRIBUTES",
    "LayerSpec",
    "depth_layer",
    "get_decoder_layers",
    "hidden_size",
    "num_layers",
    "resolve_layers",
]

LayerSpec = int | float | Sequence[int | float] | Literal["all"]
"""A layer index, a list of indices, or ``"all"``; negative indices count from the end, and a
float in [0, 1) is a fraction of the model's depth (:func:`depth_layer`)."""

LAYER_ATTRIBUTES: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Phi-3/Phi-4 (Phi3ForCausalLM), Gemma2/3 text
    "model.language_model.layers",  # Gemma3 and other multimodal wrappers
    "language_model.model.layers",  # older multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder
)
"""Attribute paths searched, in order, for the ``nn.ModuleList`` of decoder layers."""


def _get_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def get_decoder_layers(model: nn.Module, attribute: str | None = None) -> nn.ModuleList:
    """Return the list of decoder layers of ``model``.

    Args:
        model: A Hugging Face causal LM (or its inner decoder).
        attribute: Dotted path of the layer list, when the model uses a layout not in
            :data:`LAYER_ATTRIBUTES` (for example ``"backbone.blocks"``).

    Returns:
        The ``nn.ModuleList`` whose ``i``-th entry outputs the residual stream after layer ``i``.

    Raises:
        ModelError: No layer list was found; the message names the model class and the
            attributes tried.

    Example:
        >>> layers = get_decoder_layers(model)  # doctest: +SKIP
        >>> len(layers)  # doctest: +SKIP
        30
    """
    paths = (attribute,) if attribute else LAYER_ATTRIBUTES
    for path in paths:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    tried = ", ".join(f"model.{p}" for p in paths)
    raise ModelError(
        f"Could not find the decoder layers of {type(model).__name__}: tried {tried}. "
        "Pass attribute='<dotted path>' naming the nn.ModuleList that holds its decoder layers."
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers of ``model``."""
    return len(get_decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream of ``model``."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        return int(embeddings.embedding_dim)
    raise ModelError(f"Could not tell the hidden size of {type(model).__name__} from its config.")


def depth_layer(fraction: float, n: int) -> int:
    """The layer at ``fraction`` of a model's ``n`` layers: ``round(fraction * n)``, at most n-1.

    Lets one config name the same relative depths on models of different depth: ``[0.4, 0.6,
    0.8]`` is layers 12, 18, 24 of a 30-layer model and 7, 11, 14 of an 18-layer one.

    Example:
        >>> depth_layer(0.6, 30), depth_layer(0.6, 18)
        (18, 11)
    """
    return min(n - 1, math.floor(fraction * n + 0.5))


def resolve_layers(model: nn.Module | int, layers: LayerSpec) -> list[int]:
    """Turn a layer specification into sorted, distinct, non-negative indices.

    Args:
        model: The model, or its number of layers.
        layers: An index, a list of indices or ``"all"``; negative indices count from the end;
            a float in [0, 1) is a fraction of the depth (:func:`depth_layer`).

    Returns:
        Sorted list of valid layer indices.

    Raises:
        ConfigError: An index is out of range (the message gives the valid range) or the
            specification is empty or of the wrong type.

    Example:
        >>> resolve_layers(30, [-1, 18, 3])
        [3, 18, 29]
    """
    n = model if isinstance(model, int) else num_layers(model)
    if isinstance(layers, str):
        if layers != "all":
            raise ConfigError(
                f"layers must be an integer, a list of integers or 'all', not {layers!r}."
            )
        return list(range(n))
    items = [layers] if isinstance(layers, int | float | torch.SymInt) else list(layers)
    if not items:
        raise ConfigError("layers is empty: give at least one layer index or 'all'.")
    resolved = set()
    for item in items:
        if isinstance(item, float) and 0.0 <= item < 1.0:
            item = depth_layer(item, n)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(
                f"layers must hold integers (indices) or fractions of the depth in [0, 1), got "
                f"{item!r} ({type(item).__name__})."
            )
        if not -n <= item < n:
            raise ConfigError(
                f"layer {item} is out of range: this model has {n} decoder layers, "
                f"so valid layers are 0..{n - 1} (or -{n}..-1 from the end)."
            )
        resolved.add(item % n)
    return sorted(resolved)
