"""What steering costs: continuation perplexity and the KL divergence on benign text.

* :func:`continuation_perplexity`: perplexity of each completion given its prompt under the
  UNSTEERED model (the detoxification literature's fluency measure; any causal LM may judge).
* :func:`benign_kl` (:mod:`steerlib.evaluate.benign`): mean KL divergence
  ``KL(P_unsteered || P_steered)`` of the next-token distributions over held-out benign text,
  per (direction, layer, alpha), and the steered model's perplexity on it;
* :func:`repetition` (:mod:`steerlib.evaluate.repetition`): whether one text has collapsed into
  repeats, the degenerate output a toxicity scorer rates as clean.

The last two stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.evaluate.benign import (
    KL_COLUMNS,
    benign_kl,
    continuation_starts,
)
from steerlib.evaluate.repetition import Repetition, repetition
from steerlib.generate.settings import PromptFormat
from steerlib.generate.tokens import encode_prompts, left_pad, model_cache, pad_token_id

if TYPE_CHECKING:
    pass

__all__ = [
    "KL_COLUMNS",
    "Repetition",
    "benign_kl",
    "continuation_perplexity",
    "continuation_starts",
    "judge_name",
    "judge_prompt_format",
    "repetition",
]


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def judge_name(model: str, perplexity_model: str | None) -> str:
    """The model that judges continuation perplexity: ``perplexity_model``, else the model.

    Example:
        >>> judge_name("smollm2-135m-instruct", "gemma-3-270m")
        'gemma-3-270m'
    """
    return perplexity_model or model


def judge_prompt_format(
    prompt_format: PromptFormat, model: str, perplexity_model: str | None
) -> PromptFormat:
    """How the judge reads the prompts: as generated when the model judges itself, else raw.

    An external judge (another family, as DExperts judged with GPT-2 XL) scores the text a
    reader sees, the raw prompt and its continuation, not the steered model's chat markup;
    its tokenizer adds its own BOS token where it uses one.

    Example:
        >>> judge_prompt_format("chat", "smollm2-135m-instruct", "gemma-3-270m")
        'raw'
    """
    return prompt_format if judge_name(model, perplexity_model) == model else "raw"


@torch.inference_mode()
def continuation_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    prompt_format: PromptFormat = "raw",
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Perplexity of each completion's tokens given its prompt (NaN for an empty completion).

    A sweep has many completions per prompt (alphas x samples), so each distinct prompt in a
    batch is run once and its KV cache is shared by its completions; only the completion
    tokens are run per row. The numbers equal those of one pass over prompt + completion up to
    float rounding.

    Args:
        model: The judge, normally the unsteered model that generated the completions.
        tokenizer: Its tokenizer.
        prompts: Prompt texts (formatted with ``prompt_format`` as during generation).
        completions: Completion texts, one per prompt.
        prompt_format: ``"raw"`` or ``"chat"``.
        batch_size: Completions per forward pass.
        progress: Show a tqdm progress bar.

    Returns:
        ``exp(mean negative log-likelihood of the completion tokens)`` per row.

    Example:
        >>> continuation_perplexity(model, tok, ["The sky is"], [" blue."])  # doctest: +SKIP
        array([23.1])
    """
    if len(prompts) != len(completions):
        raise ConfigError("prompts and completions must have the same length.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    prompt_ids = encode_prompts(tokenizer, prompts, prompt_format)
    completion_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        for text in completions
    ]
    result = np.full(len(prompts), np.nan)
    # Rows grouped by prompt (then by completion length), so a batch holds few distinct prompts.
    order = sorted(
        (i for i in range(len(prompts)) if completion_ids[i]),
        key=lambda i: (len(prompt_ids[i]), prompt_ids[i], len(completion_ids[i])),
    )
    empty_prompt = [i for i in order if not prompt_ids[i]]
    if empty_prompt:
        raise ConfigError(
            f"prompt {prompts[empty_prompt[0]]!r} has no tokens; perplexity needs a prompt to "
            "condition on (use prompt_format='chat' or a non-empty prompt)."
        )
    pad_id = pad_token_id(tokenizer)
    device = _device(model)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(prompt_ids[i]), len(distinct)) for i in rows]
        ids, mask = left_pad([list(p) for p in distinct], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        prefill = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        index = torch.tensor(owner, device=device)
        cache = model_cache(prefill)
        cache.batch_select_indices(index)  # one copy of its prompt's cache per completion
        first = torch.log_softmax(prefill.logits[:, -1].float(), dim=-1)[index]
        del prefill
        # Completions right-padded after their prompt's cache: a pad comes after every real
        # token, so causal attention never lets a real token see one.
        lengths = [len(completion_ids[i]) for i in rows]
        width = max(lengths)
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for row, i in enumerate(rows):
            tokens[row, : lengths[row]] = torch.tensor(completion_ids[i])
        tokens = tokens.to(device)
        new_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(mask)
        offset = mask.sum(-1)[index]
        logits = model(
            input_ids=tokens,
            attention_mask=torch.cat([mask[index], new_mask], dim=1),
            position_ids=offset[:, None] + torch.arange(width, device=device)[None, :],
            cache=cache,
            use_cache=True,
        ).logits.float()
        # Position j of the completion predicts its token j + 1; the prefill predicted token 0.
        token_lp = first.gather(1, tokens[:, :1])
        if width > 1:
            rest = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = torch.cat(
                [token_lp, rest.gather(-1, tokens[:, 1:, None]).squeeze(-1)], dim=1
            )
        token_lp = token_lp.cpu()
        for row, i in enumerate(rows):
            result[i] = float(torch.exp(-token_lp[row, : lengths[row]].mean()))
    return result
