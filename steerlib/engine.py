"""Sweep engine: a whole (prompt x alpha x sample) sweep with far less work than ``generate``.

The straightforward sweep calls ``model.generate`` once per alpha with
``num_return_sequences``: every sample re-encodes its prompt, every batch pads to its longest
prompt, and each call holds only one alpha's rows. This engine runs its own decode loop:

* one batch carries many (prompt, alpha, sample) rows, each with its own alpha (the per-row
  alpha of :func:`steerlib.hooks.steering`);
* each prompt's prefill runs once per (prompt, alpha) and its KV cache is expanded across the
  samples; with ``positions="generated"`` once per prompt for all alphas, because the prompt's
  cache does not depend on alpha then (the first new token is then unsteered, exactly as with
  ``steering(..., positions="generated")`` around ``generate``);
* prompts are bucketed by token length, so a prefill pads little;
* the KV cache is written into buffers sized for the whole decode, where ``generate``'s
  ``DynamicCache`` copies every layer's cache at every step (on a 2-core CPU with a batch of
  640 rows that copying was a third of the time);
* rows that emit end-of-sequence are dropped from the batch (and from the cache);
* top-p sampling looks at the 64 most likely tokens first, then 1,024, then 8,192, and sorts
  the whole vocabulary only for rows whose nucleus is larger still (same distribution as
  ``TopPLogitsWarper``; steered text is often flat enough to need the second tier).

The work is split into :class:`~steerlib.partition.SweepUnit` s (one direction, one layer, one
length bucket of prompts, all alphas and samples), the unit of resume and of streaming to disk:
:func:`run_sweep` skips units already done and hands each finished unit's table to a callback. A
unit's random seed derives from the run seed and the unit key, so a resumed CPU run reproduces the
rows of an uninterrupted one. The code path is the same on CPU (float32), CUDA (bfloat16) and MPS
(float16).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generation import (
    COMPLETION_COLUMNS,
    PromptFormat,
    check_sampling,
    decode_new_tokens,
    derive_seed,
    encode_prompts,
    left_pad,
    model_cache,
    stop_token_ids,
)
from steerlib.hooks import Gate, Positions, SteeringHandle, SteeringMode, Units, steering
from steerlib.kvcache import PreallocatedLayer, preallocate_cache
from steerlib.layers import num_layers
from steerlib.partition import DEFAULT_TOKENS_PER_UNIT, SweepUnit, check_prompts, sweep_units
from steerlib.probe import ToxicityProbe
from steerlib.sampling import sample_next
from steerlib.variants import Variant
from steerlib.vectors import SteeringVector

__all__ = [
    "DEFAULT_MAX_BATCH_ROWS",
    "DEFAULT_TOKENS_PER_UNIT",
    "PreallocatedLayer",
    "SweepUnit",
    "decode_batch",
    "generate_unit",
    "preallocate_cache",
    "run_sweep",
    "sample_next",
    "sweep_units",
]

DEFAULT_MAX_BATCH_ROWS = 640
"""Most rows decoded together; bounds the KV cache (SmolLM2: ~2 MB per row at 45 tokens)."""
_DROP_FRACTION = 1 / 16
"""Finished rows are dropped once they are this fraction of the batch (a drop copies the cache)."""


# ------------------------------------------------------------------------------------------
# Decode loop


@torch.inference_mode()
def decode_batch(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    vector: SteeringVector | Mapping[int, torch.Tensor] | None,
    layer: int | Sequence[int] | None,
    alphas: Sequence[float],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    positions: Positions,
    units: Units,
    stop_ids: set[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    mode: SteeringMode = "add",
    gate: Gate | Mapping[int, Gate] | None = None,
    split_alpha: bool = False,
    gate_counts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate every (prompt, alpha, sample) row of a group of prompts in one batch.

    Kept in one piece (about 115 lines): the decoding loop updates a dozen per-row tensors (cache,
    positions, finished rows, seeds) in step; split into helpers it would pass them all back and
    forth.

    Args:
        model: A causal LM with a ``DynamicCache``-style KV cache.
        prompt_ids: Token ids of each prompt (unpadded).
        vector: Steering vector, or ``None`` for unsteered decoding (alphas ignored).
        layer: Steered layer, or several (see ``split_alpha``).
        alphas: Coefficients; every prompt gets every alpha.
        samples_per_prompt: Rows per (prompt, alpha).
        max_new_tokens: Decode steps.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        positions: ``"all"`` (prefill steered, once per (prompt, alpha)) or ``"generated"``
            (prefill unsteered, once per prompt).
        units: Alpha units of :func:`steerlib.hooks.steering`.
        stop_ids: End-of-sequence ids; a row stops after emitting one.
        pad_id: Padding id (also written after a row stops).
        generator: Random generator for sampling (on the model's device).
        on_step: Called with the number of rows decoded at each step (progress bars).
        mode: Steering mode of :func:`steerlib.hooks.steering`.
        gate: The probe of ``mode="gated"``.
        split_alpha: Divide alpha across the steered layers.
        gate_counts: Filled (with ``mode="gated"``) with ``fired`` and ``gated``, per output
            row: steered content positions where the gate fired, and all of them.

    Returns:
        ``(prompts x alphas x samples, max_new_tokens)`` new token ids on the CPU, rows ordered
        prompt, then alpha, then sample.
    """
    device = next(model.parameters()).device
    n_alphas, n_samples = len(alphas), samples_per_prompt
    steered = vector is not None
    if steered and layer is None:
        raise ConfigError("layer is required when a steering vector is given.")
    share_prefill = positions == "generated" or not steered
    if share_prefill:
        prefill_seqs = list(prompt_ids)
        prefill_alpha = [0.0]
        expand = n_alphas * n_samples
    else:
        prefill_seqs = [seq for seq in prompt_ids for _ in alphas]
        prefill_alpha = [float(a) for _ in prompt_ids for a in alphas]
        expand = n_samples
    row_alpha = torch.tensor(
        [float(a) for _ in prompt_ids for a in alphas for _ in range(n_samples)]
    )
    n_rows = row_alpha.numel()
    input_ids, mask = left_pad(prefill_seqs, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(stop_ids) or [-1], device=device)
    out = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    context: AbstractContextManager[SteeringHandle | None] = (
        steering(
            model,
            vector,
            prefill_alpha,
            layer,
            positions=positions,
            units=units,
            mode=mode,
            gate=gate,
            split_alpha=split_alpha,
        )
        if steered
        else nullcontext()
    )
    with context as handle:
        result = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = model_cache(result)
        logits = result.logits[:, -1, :].float()
        del result
        if temperature == 0:
            tokens = logits.argmax(-1).repeat_interleave(expand)
        else:
            tokens = sample_next(
                logits.repeat_interleave(expand, dim=0),
                temperature=temperature,
                top_p=top_p,
                generator=generator,
                overwrite=True,
            )
        del logits
        preallocate_cache(cache, input_ids.shape[1] + max_new_tokens, repeats=expand)
        if expand > 1:
            mask = mask.repeat_interleave(expand, dim=0)
        last = position[:, -1].repeat_interleave(expand)
        active = torch.arange(n_rows, device=device)
        alpha_now = row_alpha
        if handle is not None:
            handle.expand_rows(expand)
            handle.set_alpha(alpha_now)
        out[:, 0] = tokens
        done = torch.isin(tokens, stops)
        if on_step is not None:
            on_step(n_rows)
        for step in range(1, max_new_tokens):
            n_done = int(done.sum())
            if n_done == len(active):
                break
            if n_done and n_done >= _DROP_FRACTION * len(active):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                mask, last, tokens, active = mask[keep], last[keep], tokens[keep], active[keep]
                done = done[keep]
                alpha_now = alpha_now[keep.cpu()]
                if handle is not None:
                    handle.select_rows(keep)
                    handle.set_alpha(alpha_now)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            last = last + 1
            result = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last[:, None],
                cache=cache,
                use_cache=True,
            )
            cache = model_cache(result)
            logits = result.logits[:, -1, :].float()
            del result
            tokens = sample_next(
                logits, temperature=temperature, top_p=top_p, generator=generator, overwrite=True
            )
            del logits
            # Rows that stopped earlier keep the pad id written at the start.
            tokens = torch.where(done, torch.full_like(tokens, pad_id), tokens)
            out[active, step] = tokens
            done = done | torch.isin(tokens, stops)
            if on_step is not None:
                on_step(len(active))
        if handle is not None and gate_counts is not None and mode == "gated":
            fired, gated = handle.gate_counts()
            gate_counts["fired"], gate_counts["gated"] = fired, gated
    return out.cpu()


# ------------------------------------------------------------------------------------------
# Units and sweeps


def _unit_prompts(unit: SweepUnit, prompts: pd.DataFrame) -> pd.DataFrame:
    by_id = prompts.assign(prompt_id=prompts["prompt_id"].astype(str)).set_index(
        "prompt_id", drop=False
    )
    missing = [pid for pid in unit.prompt_ids if pid not in by_id.index]
    if missing:
        raise ConfigError(
            f"unit {unit.key} names prompt ids {missing[:3]} that the prompts table lacks; "
            "build the units from the same prompts table."
        )
    return by_id.loc[list(unit.prompt_ids)].reset_index(drop=True)


@torch.inference_mode()
def generate_unit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unit: SweepUnit,
    prompts: pd.DataFrame,
    *,
    vector: SteeringVector | None,
    alphas: Sequence[float],
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    top_p: float = 0.9,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    units: Units = "raw",
    seed: int = 0,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    progress: bool = False,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> pd.DataFrame:
    """Generate all alphas x samples of one unit's prompts.

    Kept in one piece (about 90 lines): it expands one unit's rows, batches them and collects the
    table, each part a few lines over the same row index.

    Args:
        model: A causal LM (see :func:`steerlib.models.load_model`).
        tokenizer: Its tokenizer.
        unit: The unit (see :func:`sweep_units`).
        prompts: Table holding the unit's prompts (``prompt_id``, ``prompt``; a ``subset``
            column and other prompt columns are kept).
        vector: The unit's steering vector; ``None`` for unsteered decoding (alphas must be 0).
        alphas: Coefficients.
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: Sampling temperature; 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; the unit's seed derives from it and ``unit.key``.
        max_batch_rows: Most rows decoded together (a prompt's alphas x samples are never
            split).
        progress: Show a progress bar over generated rows x tokens.
        variant: How the vector is applied (:mod:`steerlib.variants`); ``None``: plain CAA at
            ``unit.layer``.
        probe: The toxicity probe of a gated variant.

    Returns:
        One row per completion: :data:`steerlib.generation.COMPLETION_COLUMNS`, then the other
        prompt columns; ordered by the prompts table, alpha, sample. A gated variant adds
        ``gate_fired`` and ``gate_positions`` (steered content positions where the gate fired,
        and all of them).
    """
    check_sampling(temperature, top_p, max_new_tokens, samples_per_prompt)
    if not alphas:
        raise ConfigError("alphas is empty: give at least one coefficient.")
    if vector is None and any(a != 0 for a in alphas):
        raise ConfigError("alphas other than 0 need a steering vector.")
    if max_batch_rows < 1:
        raise ConfigError(f"max_batch_rows must be at least 1, got {max_batch_rows}.")
    if vector is not None:
        vector.check_compatible(model, allow_other_model=True)
    check_prompts(prompts)
    table = _unit_prompts(unit, prompts)
    encoded = encode_prompts(tokenizer, table["prompt"].tolist(), prompt_format)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, unit.key))
    per_prompt = len(alphas) * samples_per_prompt
    group = max(1, max_batch_rows // per_prompt)
    total = len(encoded) * per_prompt * max_new_tokens
    bar = tqdm(total=total, desc=unit.key, unit="tok", disable=not progress, leave=False)
    direction = unit.direction if vector is not None else "none"
    steer: dict[str, Any] = {"layers": unit.layer, "positions": positions, "mode": "add"}
    if variant is not None and vector is not None:
        steer = variant.steering_kwargs(unit.layer, num_layers(model), positions, probe)
    gated = steer["mode"] == "gated"
    records: list[dict[str, Any]] = []
    try:
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            counts_out: dict[str, torch.Tensor] = {}
            new_tokens = decode_batch(
                model,
                [encoded[i] for i in chunk],
                vector=vector,
                layer=steer["layers"],
                alphas=alphas,
                samples_per_prompt=samples_per_prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                positions=steer["positions"],
                units=units,
                stop_ids=stop_ids,
                pad_id=pad_id,
                generator=generator,
                on_step=bar.update if progress else None,
                mode=steer["mode"],
                gate=steer.get("gate"),
                split_alpha=steer.get("split_alpha", False),
                gate_counts=counts_out,
            )
            texts, counts = decode_new_tokens(tokenizer, new_tokens, stop_ids)
            row = 0
            for index in chunk:
                record = table.iloc[index].to_dict()
                for alpha in alphas:
                    for sample in range(samples_per_prompt):
                        records.append(
                            {
                                **record,
                                "layer": int(unit.layer),
                                "alpha": float(alpha),
                                "direction": direction,
                                "sample": sample,
                                "completion": texts[row],
                                "n_new_tokens": counts[row],
                                **(
                                    {
                                        "gate_fired": int(counts_out["fired"][row]),
                                        "gate_positions": int(counts_out["gated"][row]),
                                    }
                                    if gated and counts_out
                                    else {}
                                ),
                            }
                        )
                        row += 1
    finally:
        bar.close()
    out = pd.DataFrame(records)
    extra = [c for c in prompts.columns if c not in COMPLETION_COLUMNS]
    rank = {pid: i for i, pid in enumerate(prompts["prompt_id"].astype(str))}
    out = out.sort_values(
        ["prompt_id", "alpha", "sample"],
        key=lambda s: s.map(rank) if s.name == "prompt_id" else s,
        kind="stable",
    )
    gate_columns = ["gate_fired", "gate_positions"] if "gate_fired" in out.columns else []
    return out[COMPLETION_COLUMNS + extra + gate_columns].reset_index(drop=True)


def run_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vectors: Mapping[str, SteeringVector],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    top_p: float = 0.9,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    units: Units = "raw",
    seed: int = 0,
    done: Container[str] = (),
    on_unit: Callable[[SweepUnit, pd.DataFrame], None] | None = None,
    progress: bool = True,
    tokens_per_unit: int = DEFAULT_TOKENS_PER_UNIT,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    key_prefix: str = "",
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
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
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; each unit's seed derives from it and the unit key.
        done: Keys of units to skip (already on disk).
        on_unit: Called as ``on_unit(unit, table)`` after each generated unit (score it and
            write it atomically there).
        progress: Show progress bars.
        tokens_per_unit: See :func:`sweep_units`.
        max_batch_rows: See :func:`generate_unit`.
        key_prefix: See :func:`sweep_units`.
        variant: See :func:`generate_unit` (one variant for the whole call).
        probe: See :func:`generate_unit`.

    Returns:
        The concatenated tables of the units generated by this call (not the skipped ones).

    Example:
        >>> table = run_sweep(model, tok, prompts, {"caa": v}, layers=[18],
        ...                   alphas=[-1, 0, 1.5], samples_per_prompt=25)  # doctest: +SKIP
    """
    if not vectors:
        raise ConfigError("vectors is empty: give at least one steering vector.")
    unset = [name for name, vector in vectors.items() if vector is None]
    if unset:
        raise ConfigError(
            f"vectors {unset} are None; the unsteered baseline comes from generate_completions."
        )
    all_units = sweep_units(
        prompts,
        layers=list(layers),
        directions=list(vectors),
        tokens_per_unit=tokens_per_unit,
        alphas=alphas,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        key_prefix=key_prefix,
    )
    todo = [unit for unit in all_units if unit.key not in done]
    tables: list[pd.DataFrame] = []
    bar = tqdm(todo, desc="sweep", unit="unit", disable=not progress)
    try:
        for unit in bar:
            bar.set_postfix_str(unit.key)
            table = generate_unit(
                model,
                tokenizer,
                unit,
                prompts,
                vector=vectors[unit.direction],
                alphas=alphas,
                samples_per_prompt=samples_per_prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                prompt_format=prompt_format,
                positions=positions,
                units=units,
                seed=seed,
                max_batch_rows=max_batch_rows,
                progress=progress,
                variant=variant,
                probe=probe,
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
