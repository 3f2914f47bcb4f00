"""The sweep's work units: one direction, one layer, one length bucket of prompts.

A :class:`WorkUnit` holds all alphas and samples of its prompts; it is the unit of resume and
of writing to disk (:func:`steerlib.generate.engine.run_sweep`, one ``sweep_parts/<key>.parquet``
a unit). The partition depends only on its arguments, so a resumed run names its units as the
first run did. (A work unit is not the run parameter ``units``: that is the *alpha units*,
``raw`` or ``norm``, of :class:`steerlib.steer.hooks.Units`.) ``WorkUnit`` is the class's
former name, kept for one release with a deprecation warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.generation import PromptFormat, encode_prompts

__all__ = ["DEFAULT_TOKENS_PER_UNIT", "WorkUnit", "check_prompts", "sweep_units"]

DEFAULT_TOKENS_PER_UNIT = 16384
"""Generated tokens (rows x new tokens) per unit: a few tens of seconds of CPU work."""


@dataclass(frozen=True)
class WorkUnit:
    """A unit of work: one direction, one layer, one length bucket of prompts; all alphas, samples.

    Attributes:
        key: Stable name, e.g. ``"caa-L18-b003"`` (resume and file names use it).
        direction: Key of the vector in the ``vectors`` mapping of :func:`run_sweep`.
        layer: Steered layer.
        bucket: Index of the length bucket.
        prompt_ids: The bucket's prompts, shortest first.
    """

    key: str
    direction: str
    layer: int
    bucket: int
    prompt_ids: tuple[str, ...]


def check_prompts(prompts: pd.DataFrame) -> None:
    """Raise ConfigError unless ``prompts`` has unique ``prompt_id`` s and ``prompt`` texts."""
    for column in ("prompt_id", "prompt"):
        if column not in prompts.columns:
            raise ConfigError(f"the prompts table needs a {column!r} column.")
    if prompts["prompt_id"].duplicated().any():
        dupes = prompts.loc[prompts["prompt_id"].duplicated(), "prompt_id"].tolist()[:3]
        raise ConfigError(f"prompt_id values must be unique; repeated: {dupes}.")
    if prompts.empty:
        raise ConfigError("the prompts table is empty: give at least one prompt.")


def _prompt_lengths(
    prompts: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase | None,
    prompt_format: PromptFormat,
) -> list[int]:
    texts = prompts["prompt"].tolist()
    if tokenizer is None:
        return [len(text) for text in texts]
    return [len(ids) for ids in encode_prompts(tokenizer, texts, prompt_format)]


def sweep_units(
    prompts: pd.DataFrame,
    *,
    layers: Sequence[int],
    directions: Sequence[str],
    tokens_per_unit: int = DEFAULT_TOKENS_PER_UNIT,
    alphas: Sequence[float] = (0.0,),
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    tokenizer: PreTrainedTokenizerBase | None = None,
    prompt_format: PromptFormat = "raw",
    key_prefix: str = "",
) -> list[WorkUnit]:
    """Partition a sweep into units: directions x layers x length buckets of prompts.

    The partition depends only on the arguments (never on what is already done), so the keys
    of a resumed run match those of the first run given the same arguments.

    Args:
        prompts: Table with ``prompt_id`` and ``prompt`` columns.
        layers: Steered layers.
        directions: Vector names (keys of the ``vectors`` mapping of :func:`run_sweep`).
        tokens_per_unit: Target generated tokens per unit (prompts x alphas x samples x new
            tokens); a unit holds at least one prompt.
        alphas: The sweep's coefficients (only their number matters here).
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        tokenizer: Measures prompt lengths in tokens; without it, in characters.
        prompt_format: ``"raw"`` or ``"chat"`` (with a tokenizer).
        key_prefix: Prepended to every key (units of another family, such as the searched
            alphas, so their keys and seeds differ from the grid's).

    Returns:
        Units in order layer, direction, bucket (shortest prompts first): a sweep stopped
        part way holds whole layers, each with its control direction.

    Example:
        >>> units = sweep_units(prompts, layers=[18], directions=["caa", "random"],
        ...                     alphas=[0, 1], samples_per_prompt=25)  # doctest: +SKIP
        >>> units[0].key  # doctest: +SKIP
        'caa-L18-b000'
    """
    check_prompts(prompts)
    if tokens_per_unit < 1:
        raise ConfigError(f"tokens_per_unit must be at least 1, got {tokens_per_unit}.")
    if not layers or not directions:
        raise ConfigError("sweep_units needs at least one layer and one direction.")
    if len(set(directions)) != len(directions):
        raise ConfigError(f"directions must be distinct, got {list(directions)}.")
    lengths = _prompt_lengths(prompts, tokenizer, prompt_format)
    ids = prompts["prompt_id"].astype(str).tolist()
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], i))
    per_prompt = max(1, len(alphas)) * max(1, samples_per_prompt) * max(1, max_new_tokens)
    prompts_per_unit = max(1, tokens_per_unit // per_prompt)
    n_buckets = math.ceil(len(order) / prompts_per_unit)
    buckets = [tuple(ids[i] for i in part) for part in np.array_split(order, n_buckets)]
    return [
        WorkUnit(
            f"{key_prefix}{direction}-L{int(layer)}-b{b:03d}", str(direction), int(layer), b, bucket
        )
        for layer in layers
        for direction in directions
        for b, bucket in enumerate(buckets)
    ]


def _former_unit_name() -> type[WorkUnit]:
    """:class:`WorkUnit` under its former name ``SweepUnit``, with a deprecation warning."""
    warnings.warn(
        "SweepUnit is renamed WorkUnit (a unit of work of the sweep engine, not the alpha "
        "units of the 'units' parameter): import steerlib.generate.partition.WorkUnit; the old "
        "name goes in the next release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return WorkUnit


def __getattr__(name: str) -> Any:
    """``SweepUnit``, the former name of :class:`WorkUnit`, with a deprecation warning."""
    if name == "SweepUnit":
        return _former_unit_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
