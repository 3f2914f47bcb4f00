"""Batched, optionally steered, sampled generation that returns a tidy table.

A whole alpha sweep of one layer runs as ONE batch per group of rows: each row is a
(prompt, alpha, sample) triple, and the steering hook applies each row's own alpha (see
:func:`steerlib.steer.hooks.steering`). Rows are sorted by prompt length before batching, so a batch
pads little. Each batch's random seed derives from the run seed and the batch's row keys, so a
CPU run is repeatable and a resumed run draws the same samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeAlias

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.steer.hooks import Positions, Units, steering
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
    "sampling_kwargs",
    "stop_token_ids",
]

PromptFormat: TypeAlias = Literal["raw", "chat"]
"""``"raw"``: the prompt text as is (RealToxicityPrompts continuation). ``"chat"``: the prompt
as the user turn of the model's chat template, followed by the assistant header."""


@dataclass(frozen=True)
class DecodingSettings:
    """How completions are sampled and steered, as one frozen value.

    It holds the keyword arguments that :func:`steerlib.generate.engine.run_sweep`,
    :func:`steerlib.generate.engine.generate_unit` and :func:`generate_completions` share (pass
    ``**settings.as_kwargs()``).

    Attributes:
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: Steered positions, ``"all"`` or ``"generated"``.
        units: Alpha units, ``"raw"`` or ``"norm"``.
        seed: Base seed; each unit's or batch's seed derives from it.

    Example:
        >>> DecodingSettings(max_new_tokens=8).as_kwargs()["top_p"]
        0.9
    """

    samples_per_prompt: int = 1
    max_new_tokens: int = 20
    temperature: float = 0.7
    top_p: float = 0.9
    prompt_format: PromptFormat = "raw"
    positions: Positions = "all"
    units: Units = "raw"
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, self.max_new_tokens, self.samples_per_prompt)

    @classmethod
    def of(cls, params: Any) -> DecodingSettings:
        """The settings of a run's parameters (a :class:`~steerlib.experiment.config.RunParams`)."""
        return cls(**{name: getattr(params, name) for name in cls.__dataclass_fields__})

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments."""
        return asdict(self)


COMPLETION_COLUMNS = [
    "prompt_id",
    "prompt",
    "layer",
    "alpha",
    "direction",
    "sample",
    "completion",
    "n_new_tokens",
]


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed from a base seed and any keys, stable across processes and platforms.

    Example:
        >>> derive_seed(0, "batch", 3) == derive_seed(0, "batch", 3)
        True
    """
    text = "\x1f".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


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


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """``generate`` arguments for nucleus sampling (greedy at temperature 0), top-k disabled.

    Example:
        >>> sampling_kwargs(0.0, 0.9)
        {'do_sample': False, 'temperature': None, 'top_p': None, 'top_k': None}
    """
    sample = temperature > 0
    return {
        "do_sample": sample,
        "temperature": temperature if sample else None,
        "top_p": top_p if sample else None,
        "top_k": None,
    }


def check_sampling(temperature: float, top_p: float, max_new_tokens: int, samples: int) -> None:
    """Raise ConfigError for a sampling setting the samplers cannot use."""
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}.")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if samples < 1:
        raise ConfigError(f"samples_per_prompt must be at least 1, got {samples}.")


@torch.inference_mode()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    *,
    vector: SteeringVector | None = None,
    layer: int | None = None,
    alphas: Sequence[float] = (0.0,),
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    top_p: float = 0.9,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    units: Units = "raw",
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate ``samples_per_prompt`` completions per prompt and alpha.

    Kept in one piece (about 80 lines): the reference generation loop, written plainly on purpose
    (the engine is the fast path; this one is what it is checked against).

    Args:
        model: A causal LM (see :func:`steerlib.models.loading.load_model`).
        tokenizer: Its tokenizer.
        prompts: Table with ``prompt_id`` and ``prompt`` columns; a ``subset`` column is kept.
        vector: Steering vector; ``None`` for unsteered generation (alphas must then be 0).
        layer: Layer to steer (required with a vector).
        alphas: Coefficients; rows of every alpha share batches.
        samples_per_prompt: Samples drawn per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: Sampling temperature; 0 means greedy decoding.
        top_p: Nucleus sampling threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: Steered positions, ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"`` alpha units.
        seed: Base seed; each batch's seed derives from it and the batch's rows.
        batch_size: Rows per ``generate`` call.
        progress: Show a tqdm progress bar.

    Returns:
        One row per completion with :data:`COMPLETION_COLUMNS` (and ``subset`` when given).

    Example:
        >>> df = generate_completions(model, tok, prompts, vector=v, layer=18,
        ...                           alphas=[-1.0, 0.0, 1.5])  # doctest: +SKIP
    """
    check_sampling(temperature, top_p, max_new_tokens, samples_per_prompt)
    if vector is None and any(a != 0 for a in alphas):
        raise ConfigError("alphas other than 0 need a steering vector.")
    if vector is not None and layer is None:
        raise ConfigError("layer is required when a steering vector is given.")
    if vector is not None:
        vector.check_compatible(model, allow_other_model=True)
    for column in ("prompt_id", "prompt"):
        if column not in prompts.columns:
            raise ConfigError(f"the prompts table needs a {column!r} column.")
    encoded = encode_prompts(tokenizer, prompts["prompt"].tolist(), prompt_format)
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(prompts.to_dict("records")):
        for alpha in alphas:
            for sample in range(samples_per_prompt):
                rows.append({"index": index, "alpha": float(alpha), "sample": sample, **record})
    rows.sort(key=lambda r: (len(encoded[r["index"]]), r["index"], r["alpha"], r["sample"]))
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    direction = vector.direction if vector is not None else "none"
    out: list[dict[str, Any]] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        input_ids, attention_mask = left_pad([encoded[r["index"]] for r in batch], pad_id)
        keys = [(r["prompt_id"], r["alpha"], r["sample"]) for r in batch]
        torch.manual_seed(derive_seed(seed, layer, direction, *keys))
        context = (
            steering(
                model, vector, [r["alpha"] for r in batch], layer, positions=positions, units=units
            )
            if vector is not None
            else nullcontext()
        )
        with context:
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **sampling_kwargs(temperature, top_p),
            )
        texts, counts = decode_new_tokens(
            tokenizer, generated[:, input_ids.shape[1] :].cpu(), stop_ids
        )
        for row, text, count in zip(batch, texts, counts, strict=True):
            out.append(
                {
                    **{k: v for k, v in row.items() if k != "index"},
                    "layer": -1 if layer is None else int(layer),
                    "direction": direction,
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
