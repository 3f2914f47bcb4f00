"""Batched, optionally steered, sampled generation that returns a tidy table.

A whole alpha sweep of one layer runs as ONE batch per group of rows: each row is a
(prompt, alpha, sample) triple, and the steering hook applies each row's own alpha (see
:func:`steerlib.steer.hooks.steering`). Rows are sorted by prompt length before batching, so a batch
pads little. Each batch's random seed derives from the run seed and the batch's row keys, so a
CPU run is repeatable and a resumed run draws the same samples. Each batch is drawn by the
reference generator's :func:`~steerlib.generate.reference.generate_rows`.

The settings, prompt-format and token helpers that used to live here are in
:mod:`steerlib.generate.settings` and :mod:`steerlib.generate.tokens`; they stay importable from
this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.reference import generate_rows
from steerlib.generate.settings import (
    COMPLETION_COLUMNS,
    DecodingSettings,
    PromptFormat,
    check_sampling,
    derive_seed,
    sampling_kwargs,
)
from steerlib.generate.tokens import (
    decode_new_tokens,
    encode_prompts,
    format_prompts,
    left_pad,
    model_cache,
    pad_token_id,
    stop_token_ids,
)
from steerlib.steer.hooks import Positions, Units
from steerlib.steer.steering import Steering
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "COMPLETION_COLUMNS",
    "DecodingSettings",
    "PromptFormat",
    "check_sampling",
    "decode_new_tokens",
    "derive_seed",
    "encode_prompts",
    "format_prompts",
    "generate_completions",
    "left_pad",
    "model_cache",
    "pad_token_id",
    "sampling_kwargs",
    "stop_token_ids",
]


def _rows(
    prompts: pd.DataFrame, encoded: list[list[int]], alphas: Sequence[float], samples: int
) -> list[dict[str, Any]]:
    """One record per (prompt, alpha, sample), sorted by prompt length (a batch pads little)."""
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(prompts.to_dict("records")):
        for alpha in alphas:
            for sample in range(samples):
                rows.append({"index": index, "alpha": float(alpha), "sample": sample, **record})
    rows.sort(key=lambda r: (len(encoded[r["index"]]), r["index"], r["alpha"], r["sample"]))
    return rows


def _check(
    model: PreTrainedModel,
    prompts: pd.DataFrame,
    steering: Steering | None,
    alphas: Sequence[float],
) -> None:
    if steering is None and any(a != 0 for a in alphas):
        raise ConfigError("alphas other than 0 need a steering vector.")
    if steering is not None and isinstance(steering.vector, SteeringVector):
        steering.vector.check_compatible(model, allow_other_model=True)
    for column in ("prompt_id", "prompt"):
        if column not in prompts.columns:
            raise ConfigError(f"the prompts table needs a {column!r} column.")


@torch.inference_mode()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    *,
    vector: SteeringVector | None = None,
    layer: int | None = None,
    alphas: Sequence[float] = (0.0,),
    samples_per_prompt: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    prompt_format: PromptFormat | None = None,
    positions: Positions | None = None,
    units: Units | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    steering: Steering | None = None,
    settings: DecodingSettings | None = None,
) -> pd.DataFrame:
    """Generate ``samples_per_prompt`` completions per prompt and alpha.

    Args:
        model: A causal LM (see :func:`steerlib.models.loading.load_model`).
        tokenizer: Its tokenizer.
        prompts: Table with ``prompt_id`` and ``prompt`` columns; a ``subset`` column is kept.
        vector: Plain CAA steering vector (or give ``steering``); ``None`` and no ``steering``:
            unsteered generation (alphas must then be 0).
        layer: Layer to steer with ``vector``; with ``steering``, the rows' ``layer`` label
            (default: its middle layer).
        alphas: Coefficients; rows of every alpha share batches.
        samples_per_prompt: Samples drawn per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: Sampling temperature; 0 means greedy decoding.
        top_p: Nucleus sampling threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: Steered positions of ``vector``, ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"`` alpha units of ``vector``.
        seed: Base seed; each batch's seed derives from it and the batch's rows.
        batch_size: Rows per ``generate`` call.
        progress: Show a tqdm progress bar.
        steering: How rows are steered, any variant (:meth:`steerlib.steer.variants.Variant.bind`).
        settings: The sampling settings whole; the loose arguments above override its fields.

    Returns:
        One row per completion with :data:`COMPLETION_COLUMNS` (and ``subset`` when given).

    Example:
        >>> df = generate_completions(model, tok, prompts, vector=v, layer=18,
        ...                           alphas=[-1.0, 0.0, 1.5])  # doctest: +SKIP
    """
    settings = (settings or DecodingSettings()).but(
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        prompt_format=prompt_format,
        positions=positions,
        units=units,
        seed=seed,
    )
    if vector is not None and steering is None:
        if layer is None:
            raise ConfigError("layer is required when a steering vector is given.")
        steering = Steering.plain(vector, layer, positions=settings.positions, units=settings.units)
    _check(model, prompts, steering, alphas)
    label = layer if layer is not None or steering is None else steering.centre
    direction = "none" if steering is None else steering.direction
    encoded = encode_prompts(tokenizer, prompts["prompt"].tolist(), settings.prompt_format)
    rows = _rows(prompts, encoded, alphas, settings.samples_per_prompt)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, stop_ids)
    out: list[dict[str, Any]] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        input_ids, attention_mask = left_pad([encoded[r["index"]] for r in batch], pad_id)
        keys = [(r["prompt_id"], r["alpha"], r["sample"]) for r in batch]
        torch.manual_seed(derive_seed(settings.seed, label, direction, *keys))
        new_tokens = generate_rows(
            model,
            input_ids,
            attention_mask,
            steering=steering,
            alphas=[r["alpha"] for r in batch],
            settings=settings,
            pad_id=pad_id,
        )
        texts, counts = decode_new_tokens(tokenizer, new_tokens, stop_ids)
        for row, text, count in zip(batch, texts, counts, strict=True):
            out.append(
                {
                    **{k: v for k, v in row.items() if k != "index"},
                    "layer": -1 if label is None else int(label),
                    "direction": direction,
                    "steered": steering is not None,
                    "completion": text,
                    "n_new_tokens": count,
                }
            )
    table = pd.DataFrame(out)
    extra = [c for c in table.columns if c not in COMPLETION_COLUMNS]
    order = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
    table = table.sort_values(
        ["prompt_id", "alpha", "sample"], key=lambda s: s.map(order) if s.name == "prompt_id" else s
    )
    return table[COMPLETION_COLUMNS + extra].reset_index(drop=True)
