"""Tokens in and out of generation: prompt formats, left padding, the pad and stop ids.

:func:`pad_token_id` is the one place that decides the padding id of every generation and
fluency path: the tokenizer's pad token, else the smallest stop id, else its end-of-sequence
token; never a made-up 0 (``load_model`` sets the pad token to the EOS token where a tokenizer has
none, so a run never reaches the fallbacks).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.settings import PromptFormat

__all__ = [
    "decode_new_tokens",
    "encode_prompts",
    "format_prompts",
    "left_pad",
    "model_cache",
    "pad_token_id",
    "stop_token_ids",
]


def format_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_format: PromptFormat = "raw",
) -> list[str]:
    """Apply the prompt format to each prompt.

    Raises:
        ConfigError: Unknown format, or ``"chat"`` for a tokenizer without a chat template.
    """
    if prompt_format == "raw":
        return list(prompts)
    if prompt_format != "chat":
        raise ConfigError(f"prompt_format must be 'raw' or 'chat', not {prompt_format!r}.")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("prompt_format='chat' needs a tokenizer with a chat template; use 'raw'.")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        for text in prompts
    ]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_format: PromptFormat = "raw",
) -> list[list[int]]:
    """Token ids of each formatted prompt (no padding).

    Chat-formatted text already holds its special tokens, so none are added to it.
    """
    texts = format_prompts(tokenizer, prompts, prompt_format)
    add_special = prompt_format == "raw"
    encoded = tokenizer(texts, add_special_tokens=add_special)["input_ids"]
    for text, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise ConfigError(f"prompt {text!r} encodes to no tokens.")
    return [list(ids) for ids in encoded]


def model_cache(output: Any) -> Any:
    """The KV cache of a forward pass's output (``cache``, else ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids of the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def decode_new_tokens(
    tokenizer: PreTrainedTokenizerBase, new_tokens: torch.Tensor, stop_ids: set[int]
) -> tuple[list[str], list[int]]:
    """Decode generated tokens up to (not including) the first stop token.

    Returns:
        The texts and the number of tokens each kept.
    """
    texts, counts = [], []
    for row in new_tokens.tolist():
        length = next((i for i, tok in enumerate(row) if tok in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:length], skip_special_tokens=True))
        counts.append(length)
    return texts, counts


def pad_token_id(tokenizer: PreTrainedTokenizerBase, stop_ids: Collection[int] = ()) -> int:
    """The padding id: the tokenizer's pad token, else the smallest stop id, else its EOS token.

    Padded positions are masked out of attention and of every statistic, and a row that stops
    is cut at its stop token, so any real token id would do; a stop id (the EOS token) is the
    conventional choice (``generate`` pads with it too).

    Args:
        tokenizer: The tokenizer.
        stop_ids: The end-of-sequence ids of the generation (:func:`stop_token_ids`), if known.

    Raises:
        ConfigError: A tokenizer with neither a pad nor an EOS token, and no stop ids given.
    """
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if stop_ids:
        return min(stop_ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        return eos
    raise ConfigError(
        "the tokenizer has no pad token and no end-of-sequence token: set "
        "tokenizer.pad_token (steerlib.models.loading.load_model sets it to the EOS token)."
    )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask
