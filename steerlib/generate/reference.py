"""The reference generator: plain ``model.generate`` inside a steering block, nothing clever.

Slow and obviously correct on purpose. Every generation path is checked against it: the sweep
engine in the tests (every variant, on the tiny random models), and in ``python -m steerlib
bench`` (its "straightforward" loop, timed against the engine, and its greedy parity check).
:func:`generate_completions` (:mod:`steerlib.generate.generation`) draws its batches with
:func:`generate_rows` too. Any variant works, through one
:class:`~steerlib.steer.steering.Steering` value; sampling follows one
:class:`~steerlib.generate.settings.DecodingSettings`.

:func:`reference_sweep` is the reference experiment's loop: for each alpha, ``generate`` with
``num_return_sequences`` over batches of prompts in their given order (each batch pads to its
longest prompt, and every sample re-encodes its prompt, as ``generate`` expands the inputs
before the prefill).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.generate.settings import DecodingSettings, derive_seed, sampling_kwargs
from steerlib.generate.tokens import (
    decode_new_tokens,
    encode_prompts,
    left_pad,
    pad_token_id,
    stop_token_ids,
)
from steerlib.steer.handle import AlphaSpec, SteeringHandle
from steerlib.steer.steering import Steering

__all__ = ["generate_rows", "reference_sweep"]


@torch.inference_mode()
def generate_rows(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    steering: Steering | None,
    alphas: AlphaSpec,
    settings: DecodingSettings,
    pad_id: int,
    num_return_sequences: int = 1,
) -> torch.Tensor:
    """New tokens of one left-padded batch, by ``generate`` under ``steering``.

    Args:
        model: A causal LM.
        input_ids: ``(batch, width)`` left-padded prompt ids.
        attention_mask: Its mask.
        steering: How the batch is steered; ``None``: unsteered (alphas ignored).
        alphas: One alpha for the batch, or one per row (after ``num_return_sequences``).
        settings: Sampling settings (``max_new_tokens``, ``temperature``, ``top_p``).
        pad_id: Padding id (also written after a row stops).
        num_return_sequences: Samples per input row.

    Returns:
        ``(batch * num_return_sequences, max_new_tokens or fewer)`` new token ids on the CPU.
    """
    device = next(model.parameters()).device
    context: AbstractContextManager[SteeringHandle | None] = (
        steering.hooks(model, alphas) if steering is not None else nullcontext()
    )
    with context:
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=num_return_sequences,
            pad_token_id=pad_id,
            **sampling_kwargs(settings.temperature, settings.top_p),
        )
    return generated[:, input_ids.shape[1] :].cpu()


@torch.inference_mode()
def reference_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    steering: Steering | None,
    *,
    alphas: Sequence[float],
    settings: DecodingSettings,
    batch_prompts: int = 8,
) -> pd.DataFrame:
    """Per alpha, ``generate`` with ``num_return_sequences`` over batches of prompts.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Table with ``prompt_id`` and ``prompt``.
        steering: How every row is steered (any variant); ``None``: unsteered.
        alphas: Coefficients, one loop each.
        settings: Sampling settings; ``settings.seed`` seeds each (alpha, batch) call.
        batch_prompts: Prompts per ``generate`` call (1: no padding at all).

    Returns:
        One row per completion (``prompt_id``, ``alpha``, ``sample``, ``completion``,
        ``n_new_tokens``), ordered alpha, prompt, sample.
    """
    encoded = encode_prompts(tokenizer, prompts["prompt"].tolist(), settings.prompt_format)
    ids = prompts["prompt_id"].tolist()
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, stop_ids)
    samples = settings.samples_per_prompt
    rows: list[dict[str, Any]] = []
    for alpha in alphas:
        for start in range(0, len(encoded), batch_prompts):
            input_ids, mask = left_pad(encoded[start : start + batch_prompts], pad_id)
            torch.manual_seed(derive_seed(settings.seed, "straightforward", alpha, start))
            new_tokens = generate_rows(
                model,
                input_ids,
                mask,
                steering=steering,
                alphas=float(alpha),
                settings=settings,
                pad_id=pad_id,
                num_return_sequences=samples,
            )
            texts, counts = decode_new_tokens(tokenizer, new_tokens, stop_ids)
            for row, (text, count) in enumerate(zip(texts, counts, strict=True)):
                rows.append(
                    {
                        "prompt_id": ids[start + row // samples],
                        "alpha": float(alpha),
                        "sample": row % samples,
                        "completion": text,
                        "n_new_tokens": count,
                    }
                )
    return pd.DataFrame(rows)
