"""A model's shape read from its config alone: layers, context length, KV cache per token.

Also what keeps a local model folder from loading (:func:`model_folder_problems`); nothing here
loads weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlib.errors import ModelError
from steerlib.models.embedded import convert_embedded, is_embedded, load_error
from steerlib.models.random_init import is_random_model, random_config

__all__ = ["ModelShape", "model_folder_problems", "model_num_layers", "model_shape"]


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says about its size, read without its weights.

    Attributes:
        num_layers: Decoder layers.
        context: Longest sequence (prompt + new tokens) in positions, or ``None`` when the
            config does not say (``max_position_embeddings``, ``n_positions``...).
        kv_values_per_token: Numbers the KV cache holds per token of one row (keys and
            values of every layer); times the dtype's bytes gives its memory.
    """

    num_layers: int
    context: int | None
    kv_values_per_token: int | None


def _first_int(config: Any, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_shape(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ModelShape:
    """Layers, context length and KV-cache size per token, from the config alone.

    Raises:
        ModelError: The config cannot be read (the message names the offline default).
    """
    from transformers import AutoConfig

    name = str(name_or_path)
    if is_random_model(name):
        config = random_config(name)
    else:
        source: str | Path = convert_embedded(name) if is_embedded(name) else name
        try:
            config = AutoConfig.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise load_error("model", name, exc) from exc
    config = getattr(config, "text_config", None) or config
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers")
    if layers is None:
        raise ModelError(f"the config of {name!r} does not say how many layers the model has.")
    context = _first_int(config, "max_position_embeddings", "n_positions", "seq_length")
    heads = _first_int(config, "num_attention_heads", "n_head")
    kv_heads = _first_int(config, "num_key_value_heads") or heads
    hidden = _first_int(config, "hidden_size", "n_embd")
    head_dim = _first_int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    per_token = 2 * layers * kv_heads * head_dim if kv_heads and head_dim else None
    return ModelShape(layers, context, per_token)


def model_num_layers(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> int:
    """Number of decoder layers, read from the model's config without loading its weights.

    Raises:
        ModelError: The config cannot be read (the message names the offline default).
    """
    return model_shape(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    ).num_layers


def model_folder_problems(folder: str | os.PathLike[str], what: str = "model") -> list[str]:
    """What keeps a local model folder from loading, one line each ([] when nothing does).

    A folder needs ``config.json`` and safetensors weights (``*.safetensors``, or the shards
    an index names) whose headers read; nothing is unpickled to check them.
    """
    from safetensors import safe_open

    root = Path(folder)
    problems = []
    if not (root / "config.json").is_file():
        problems.append(
            f"the {what} folder {root} has no config.json; save the model there with "
            "save_pretrained (or name a hub id)"
        )
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        others = sorted(p.name for p in root.glob("*.bin")) + sorted(
            p.name for p in root.glob("*.pt")
        )
        found = f" (it holds {', '.join(others)}; steerlib unpickles nothing)" if others else ""
        problems.append(
            f"the {what} folder {root} has no *.safetensors weights{found}; save them with "
            "save_pretrained(folder, safe_serialization=True)"
        )
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types
            problems.append(
                f"{path} is not a readable safetensors file ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:120]}); save the weights again with "
                "save_pretrained"
            )
    return problems
