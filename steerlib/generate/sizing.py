"""How many rows the sweep engine decodes together, chosen from the device's free memory.

A decode batch holds, per row, its KV cache (``layers x 2 x kv_heads x head_dim`` numbers per
token, for the prompt and every new token) and a few vocabulary-wide float32 vectors (the
logits and the sampler's scratch). On an accelerator the batch is as large as a share of the
free memory allows (large batches keep the matrix units busy); on a CPU the engine keeps its
fixed defaults, which were tuned there. :func:`sizes_for_memory` is the pure rule;
:func:`choose_sizes` reads the device and the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from steerlib.errors import ConfigError

__all__ = [
    "CPU_MAX_BATCH_ROWS",
    "CPU_TOKENS_PER_UNIT",
    "SweepSizes",
    "choose_sizes",
    "kv_bytes_per_token",
    "sizes_for_memory",
]

CPU_MAX_BATCH_ROWS = 640
"""Most rows decoded together on a CPU (SmolLM2: ~2 MB of KV cache per row at 45 tokens)."""
CPU_TOKENS_PER_UNIT = 16384
"""Generated tokens (rows x new tokens) per unit on a CPU: a few tens of seconds of work."""
MEMORY_SHARE = 0.6
"""Share of the free device memory the decode batch may plan for (the rest is the margin:
allocator fragmentation, the prefill's activations, the straightforward loop's leftovers)."""
VOCAB_FLOATS_PER_ROW = 6
"""Vocabulary-wide 4-byte numbers per row at a step: the logits in the model dtype and in float32
(the softmax numerators overwrite them), and headroom for the full sorts of a few rows."""
MAX_ROWS = 16384
"""Upper bound on rows per batch (past it a step no longer gets more efficient)."""
MIN_ROWS = 16


@dataclass(frozen=True)
class SweepSizes:
    """Batch and unit sizes of a sweep, and where they came from.

    Attributes:
        max_batch_rows: Most rows decoded together.
        tokens_per_unit: Generated tokens per unit (a unit fills at least one batch).
        source: How they were chosen, for reports (``"CPU defaults"``, ``"given"``, or the
            memory figures behind them).
    """

    max_batch_rows: int
    tokens_per_unit: int
    source: str


def kv_bytes_per_token(model: nn.Module) -> int:
    """Bytes of KV cache one token of one row takes: layers x 2 x kv_heads x head_dim x dtype.

    Raises:
        ConfigError: The config does not give the layer count, heads and hidden size.
    """
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not (layers and heads and hidden):
        raise ConfigError(
            "the model config does not give its layers, heads and hidden size; pass "
            "max_batch_rows and tokens_per_unit explicitly."
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    dtype_bytes = next(model.parameters()).element_size()
    return int(layers * 2 * kv_heads * head_dim * dtype_bytes)


def sizes_for_memory(
    free_bytes: int,
    *,
    kv_bytes_per_token: int,
    row_tokens: int,
    vocab_size: int,
    max_new_tokens: int,
    share: float = MEMORY_SHARE,
) -> SweepSizes:
    """Rows per batch and tokens per unit that fit ``share`` of ``free_bytes``.

    Args:
        free_bytes: Free device memory with the model loaded.
        kv_bytes_per_token: See :func:`kv_bytes_per_token`.
        row_tokens: Positions a row's cache holds (longest prompt plus new tokens).
        vocab_size: The model's vocabulary.
        max_new_tokens: New tokens per completion.
        share: Share of ``free_bytes`` to plan for.

    Returns:
        Rows a multiple of 64 up to 16,384 (at least 16), and a unit of one full batch.

    Example:
        >>> sizes_for_memory(100 * 2**30, kv_bytes_per_token=131072, row_tokens=45,
        ...                  vocab_size=200064, max_new_tokens=20).max_batch_rows
        8192
    """
    if free_bytes <= 0 or kv_bytes_per_token <= 0 or row_tokens <= 0 or vocab_size <= 0:
        raise ConfigError("free memory, KV bytes, row tokens and vocabulary must be positive.")
    per_row = kv_bytes_per_token * row_tokens + VOCAB_FLOATS_PER_ROW * 4 * vocab_size
    fit = int(share * free_bytes) // per_row
    rows = min(fit, MAX_ROWS)
    rows = rows // 64 * 64 if rows >= 64 else max(MIN_ROWS, rows)
    source = (
        f"{share:.0%} of {free_bytes / 2**30:.1f} GiB free / "
        f"{per_row / 2**20:.2f} MiB per row ({kv_bytes_per_token / 1024:.0f} KiB KV per token x "
        f"{row_tokens} positions + {VOCAB_FLOATS_PER_ROW} x 4 B x {vocab_size} vocabulary)"
    )
    return SweepSizes(rows, rows * max_new_tokens, source)


def choose_sizes(
    model: nn.Module,
    *,
    row_tokens: int,
    max_new_tokens: int,
    max_batch_rows: int | None = None,
    tokens_per_unit: int | None = None,
    free_bytes: int | None = None,
) -> SweepSizes:
    """Sizes for a sweep of ``model`` on its device; given values win.

    On CUDA the free memory is read with ``torch.cuda.mem_get_info`` (or taken from
    ``free_bytes``); elsewhere the CPU defaults stand.

    Args:
        model: The model (its device, dtype and config matter).
        row_tokens: Positions a row's cache holds (longest prompt plus new tokens).
        max_new_tokens: New tokens per completion.
        max_batch_rows: Rows per batch to use instead of the chosen ones.
        tokens_per_unit: Tokens per unit to use instead of the chosen ones.
        free_bytes: Free memory to plan with instead of the device's (tests).
    """
    device = next(model.parameters()).device
    if free_bytes is None and device.type == "cuda":
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if free_bytes is None:
        chosen = SweepSizes(CPU_MAX_BATCH_ROWS, CPU_TOKENS_PER_UNIT, f"{device.type} defaults")
    else:
        vocab = int(model.get_output_embeddings().weight.shape[0])
        chosen = sizes_for_memory(
            free_bytes,
            kv_bytes_per_token=kv_bytes_per_token(model),
            row_tokens=row_tokens,
            vocab_size=vocab,
            max_new_tokens=max_new_tokens,
        )
    if max_batch_rows is None and tokens_per_unit is None:
        return chosen
    return SweepSizes(
        max_batch_rows or chosen.max_batch_rows,
        tokens_per_unit or chosen.tokens_per_unit,
        f"given (else {chosen.max_batch_rows} rows / {chosen.tokens_per_unit} tokens per unit: "
        f"{chosen.source})",
    )
