"""Sweep engine: a whole (prompt x alpha x sample) sweep with far less work than ``generate``.

The straightforward sweep calls ``model.generate`` once per alpha with
``num_return_sequences``: every sample re-encodes its prompt, every batch pads to its longest
prompt, and each call holds only one alpha's rows. This engine runs its own decode loop:

* one batch carries many (prompt, alpha, sample) rows, each with its own alpha (the per-row
  alpha of :func:`steerlib.steer.hooks.steering`);
* each prompt's prefill runs once per (prompt, alpha) and its KV cache is expanded across the
  samples; with ``positions="generated"`` once per prompt for all alphas, because the prompt's
  cache does not depend on alpha then (the first new token is then unsteered, exactly as with
  ``steering(..., positions="generated")`` around ``generate``);
* prompts are bucketed by token length, so a prefill pads little;
* the KV cache is written into buffers sized for the whole decode, where ``generate``'s
  ``DynamicCache`` copies every layer's cache at every step (on a 2-core CPU with a batch of
  640 rows that copying was a third of the time);
* on a CPU finished rows leave the batch and top-p sampling is tiered; on CUDA a decode step
  makes no host sync and is captured in a CUDA graph (:mod:`steerlib.generate.loops`); batch and
  unit sizes come from the free device memory (:mod:`steerlib.generate.sizing`).

The work is split into work units, :class:`~steerlib.generate.partition.WorkUnit` s (one
direction, one layer, one length bucket of prompts, all alphas and samples), the unit of resume
and of streaming to disk: :func:`run_sweep` skips units already done and hands each finished
unit's table to a callback. A unit's random seed derives from the run seed and the unit key, so a
resumed CPU run reproduces the rows of an uninterrupted one. Greedy decoding equals per-alpha
``generate`` token for token in float32; in bfloat16 or float16 the rounding depends on the
batch's shape, so near-ties of the argmax can flip (``python -m steerlib bench`` reports the
agreement).

The batch itself is :func:`steerlib.generate.decode.decode_batch` (prefill and cache expansion)
and its loops :mod:`steerlib.generate.loops`; this module cuts a sweep into units and a unit into
batches. Steering travels as one :class:`~steerlib.steer.steering.Steering` per unit (bound from
the variant at the unit's layer), sampling as one
:class:`~steerlib.generate.settings.DecodingSettings`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.decode import DecodeOptions, decode_batch
from steerlib.generate.kvcache import PreallocatedLayer, preallocate_cache
from steerlib.generate.partition import (
    DEFAULT_TOKENS_PER_UNIT,
    WorkUnit,
    _former_unit_name,
    sweep_units,
)
from steerlib.generate.sampling import sample_next
from steerlib.generate.settings import (
    COMPLETION_COLUMNS,
    DecodingSettings,
    PromptFormat,
    derive_seed,
)
from steerlib.generate.sizing import CPU_MAX_BATCH_ROWS, SweepSizes, choose_sizes
from steerlib.generate.tokens import (
    decode_new_tokens,
    encode_prompts,
    model_cache,
    pad_token_id,
    stop_token_ids,
)
from steerlib.generate.unit_rows import chunk_records, encoded_unit, unit_table
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Positions, Units
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.steering import Steering
from steerlib.steer.variants import Variant
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "DEFAULT_MAX_BATCH_ROWS",
    "DEFAULT_TOKENS_PER_UNIT",
    "DecodeOptions",
    "PreallocatedLayer",
    "WorkUnit",
    "decode_batch",
    "generate_unit",
    "model_cache",
    "preallocate_cache",
    "run_sweep",
    "sample_next",
    "sweep_sizes",
    "sweep_units",
    "unit_steering",
]

DEFAULT_MAX_BATCH_ROWS = CPU_MAX_BATCH_ROWS
"""Most rows decoded together on a CPU; on CUDA see
:func:`steerlib.generate.sizing.choose_sizes`."""


def unit_steering(
    model: PreTrainedModel,
    vector: SteeringVector | None,
    layer: int,
    settings: DecodingSettings,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> Steering | None:
    """The steering of one unit: ``variant`` bound at ``layer`` (plain CAA when ``None``).

    ``None`` without a vector (unsteered decoding).
    """
    if vector is None:
        return None
    if variant is None:
        return Steering.plain(vector, layer, positions=settings.positions, units=settings.units)
    return variant.bind(
        vector,
        layer,
        num_layers=num_layers(model),
        positions=settings.positions,
        units=settings.units,
        probe=probe,
    )


def _check_unit(
    model: PreTrainedModel,
    steering: Steering | None,
    alphas: Sequence[float],
    max_batch_rows: int,
) -> None:
    if not alphas:
        raise ConfigError("alphas is empty: give at least one coefficient.")
    if steering is None and any(a != 0 for a in alphas):
        raise ConfigError("alphas other than 0 need a steering vector.")
    if max_batch_rows < 1:
        raise ConfigError(f"max_batch_rows must be at least 1, got {max_batch_rows}.")
    if steering is not None and isinstance(steering.vector, SteeringVector):
        steering.vector.check_compatible(model, allow_other_model=True)


@torch.inference_mode()
def generate_unit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unit: WorkUnit,
    prompts: pd.DataFrame,
    *,
    alphas: Sequence[float],
    steering: Steering | None = None,
    settings: DecodingSettings | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    progress: bool = False,
    decode: DecodeOptions | None = None,
    vector: SteeringVector | None = None,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
    samples_per_prompt: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    prompt_format: PromptFormat | None = None,
    positions: Positions | None = None,
    units: Units | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Generate all alphas x samples of one unit's prompts.

    Args:
        model: A causal LM (see :func:`steerlib.models.loading.load_model`).
        tokenizer: Its tokenizer.
        unit: The unit (see :func:`sweep_units`).
        prompts: Table holding the unit's prompts (``prompt_id``, ``prompt``; a ``subset``
            column and other prompt columns are kept).
        alphas: Coefficients.
        steering: How the unit is steered, whole (any variant); ``None``: bound from
            ``vector``, ``variant`` and ``probe`` at ``unit.layer`` (:func:`unit_steering`).
        settings: Sampling whole (samples, new tokens, temperature, top-p, prompt format,
            positions and units of a ``vector``, seed); the loose arguments override its fields.
        max_batch_rows: Most rows decoded together (a prompt's alphas x samples are never
            split).
        progress: Show a progress bar over generated rows x tokens.
        decode: Decode-loop options (default: the fast path for the device).
        vector: The unit's steering vector (with ``variant`` and ``probe``); neither it nor
            ``steering``: unsteered decoding (alphas must be 0).
        variant: How ``vector`` is applied (:mod:`steerlib.steer.variants`); ``None``: plain
            CAA at ``unit.layer``.
        probe: The toxicity probe of a gated variant.
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: Sampling temperature; 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; the unit's seed derives from it and ``unit.key``.

    Returns:
        One row per completion: :data:`steerlib.generate.settings.COMPLETION_COLUMNS`, then the
        other prompt columns; ordered by the prompts table, alpha, sample. A gated steering
        adds ``gate_fired`` and ``gate_positions`` (steered content positions where the gate
        fired, and all of them).
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
    if steering is None:
        steering = unit_steering(model, vector, unit.layer, settings, variant, probe)
    _check_unit(model, steering, alphas, max_batch_rows)
    table, encoded = encoded_unit(tokenizer, unit, prompts, settings)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, stop_ids)
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(derive_seed(settings.seed, unit.key))
    per_prompt = len(alphas) * settings.samples_per_prompt
    group = max(1, max_batch_rows // per_prompt)
    total = len(encoded) * per_prompt * settings.max_new_tokens
    bar = tqdm(total=total, desc=unit.key, unit="tok", disable=not progress, leave=False)
    direction = unit.direction if steering is not None else "none"
    records: list[dict[str, Any]] = []
    try:
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            counts_out: dict[str, torch.Tensor] = {}
            new_tokens = decode_batch(
                model,
                [encoded[i] for i in chunk],
                alphas=alphas,
                stop_ids=stop_ids,
                pad_id=pad_id,
                steering=steering,
                settings=settings,
                generator=generator,
                on_step=bar.update if progress else None,
                options=decode,
                gate_counts=counts_out,
            )
            decoded = decode_new_tokens(tokenizer, new_tokens, stop_ids)
            gated = steering is not None and steering.gated and counts_out
            gates = counts_out if gated else None
            samples = settings.samples_per_prompt
            records += chunk_records(table, chunk, unit, alphas, samples, direction, decoded, gates)
    finally:
        bar.close()
    return unit_table(records, prompts)


def sweep_sizes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    *,
    max_new_tokens: int = 20,
    prompt_format: PromptFormat = "raw",
    tokens_per_unit: int | None = None,
    max_batch_rows: int | None = None,
) -> SweepSizes:
    """The unit and batch sizes :func:`run_sweep` uses for ``prompts`` (given values win).

    A caller that makes several sweeps of one step (or shares one out over workers) chooses
    them once and passes them to each call, so every call names its units alike.
    """
    longest = max(
        len(ids) for ids in encode_prompts(tokenizer, prompts["prompt"].tolist(), prompt_format)
    )
    return choose_sizes(
        model,
        row_tokens=longest + max_new_tokens,
        max_new_tokens=max_new_tokens,
        max_batch_rows=max_batch_rows,
        tokens_per_unit=tokens_per_unit,
    )


def _check_vectors(vectors: Mapping[str, SteeringVector]) -> None:
    if not vectors:
        raise ConfigError("vectors is empty: give at least one steering vector.")
    unset = [name for name, vector in vectors.items() if vector is None]
    if unset:
        raise ConfigError(
            f"vectors {unset} are None; the unsteered baseline comes from generate_completions."
        )


def _sweep_units(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    directions: list[str],
    layers: list[int],
    alphas: Sequence[float],
    settings: DecodingSettings,
    *,
    tokens_per_unit: int | None,
    max_batch_rows: int | None,
    key_prefix: str,
) -> tuple[list[WorkUnit], int]:
    """Every unit of a sweep, and the batch rows (both sized for the device where not given)."""
    if tokens_per_unit is None or max_batch_rows is None:
        sizes = sweep_sizes(
            model,
            tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            prompt_format=settings.prompt_format,
            max_batch_rows=max_batch_rows,
            tokens_per_unit=tokens_per_unit,
        )
        tokens_per_unit, max_batch_rows = sizes.tokens_per_unit, sizes.max_batch_rows
    assert tokens_per_unit is not None and max_batch_rows is not None
    units = sweep_units(
        prompts,
        layers=layers,
        directions=directions,
        tokens_per_unit=tokens_per_unit,
        alphas=alphas,
        samples_per_prompt=settings.samples_per_prompt,
        max_new_tokens=settings.max_new_tokens,
        tokenizer=tokenizer,
        prompt_format=settings.prompt_format,
        key_prefix=key_prefix,
    )
    return units, max_batch_rows


def run_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vectors: Mapping[str, SteeringVector],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    settings: DecodingSettings | None = None,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
    done: Container[str] = (),
    on_unit: Callable[[WorkUnit, pd.DataFrame], None] | None = None,
    progress: bool = True,
    tokens_per_unit: int | None = None,
    max_batch_rows: int | None = None,
    key_prefix: str = "",
    decode: DecodeOptions | None = None,
    samples_per_prompt: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    prompt_format: PromptFormat | None = None,
    positions: Positions | None = None,
    units: Units | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Run a steering sweep: every vector x layer x alpha x prompt x sample.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Table with ``prompt_id`` and ``prompt`` (other columns such as ``subset`` are
            kept).
        vectors: ``{direction: vector}``, e.g. ``{"caa": v, "random": v.random_like()}``; the
            keys name the units and fill the output's ``direction`` column.
        layers: Steered layers (one at a time).
        alphas: Coefficients.
        settings: Sampling whole (:class:`~steerlib.generate.settings.DecodingSettings`); the
            loose arguments override its fields.
        variant: How every vector is applied (one variant for the whole call, bound per unit:
            :func:`unit_steering`); ``None``: plain CAA.
        probe: The toxicity probe of a gated variant.
        done: Keys of units to skip (already on disk).
        on_unit: Called as ``on_unit(unit, table)`` after each generated unit (score it and
            write it atomically there).
        progress: Show progress bars.
        tokens_per_unit: See :func:`sweep_units`; ``None``: chosen by
            :func:`steerlib.generate.sizing.choose_sizes` (on a CPU 16,384; on CUDA one batch of
            the rows that fit the card's memory, so a resumed run names its units alike on the
            same card).
        max_batch_rows: See :func:`generate_unit`; ``None``: chosen likewise (CPU: 640; CUDA:
            from the free memory).
        key_prefix: See :func:`sweep_units`.
        decode: Decode-loop options (default: the fast path for the device).
        samples_per_prompt: See :func:`generate_unit` (this and the next: ``settings``' fields).
        max_new_tokens: New tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; each unit's seed derives from it and the unit key.

    Returns:
        The concatenated tables of the units generated by this call (not the skipped ones).

    Example:
        >>> table = run_sweep(model, tok, prompts, {"caa": v}, layers=[18],
        ...                   alphas=[-1, 0, 1.5], samples_per_prompt=25)  # doctest: +SKIP
    """
    _check_vectors(vectors)
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
    all_units, max_batch_rows = _sweep_units(
        model,
        tokenizer,
        prompts,
        list(vectors),
        list(layers),
        alphas,
        settings,
        tokens_per_unit=tokens_per_unit,
        max_batch_rows=max_batch_rows,
        key_prefix=key_prefix,
    )
    todo = [unit for unit in all_units if unit.key not in done]
    tables: list[pd.DataFrame] = []
    bar = tqdm(todo, desc="sweep", unit="unit", disable=not progress)
    try:
        for unit in bar:
            bar.set_postfix_str(unit.key)
            steering = unit_steering(
                model, vectors[unit.direction], unit.layer, settings, variant, probe
            )
            table = generate_unit(
                model,
                tokenizer,
                unit,
                prompts,
                alphas=alphas,
                steering=steering,
                settings=settings,
                max_batch_rows=max_batch_rows,
                progress=progress,
                decode=decode,
            )
            if on_unit is not None:
                on_unit(unit, table)
            tables.append(table)
    finally:
        bar.close()
    if not tables:
        columns = COMPLETION_COLUMNS + [c for c in prompts.columns if c not in COMPLETION_COLUMNS]
        return pd.DataFrame(columns=columns)
    return pd.concat(tables, ignore_index=True)


def __getattr__(name: str) -> Any:
    """``SweepUnit``, the former name of :class:`WorkUnit`, with a deprecation warning."""
    if name == "SweepUnit":
        return _former_unit_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
