"""What steering costs: continuation perplexity and the KL divergence on benign text.

* :func:`continuation_perplexity`: perplexity of each completion given its prompt under the
  UNSTEERED model (the detoxification literature's fluency measure; any causal LM may judge).
* :func:`benign_kl`: mean KL divergence ``KL(P_unsteered || P_steered)`` of the next-token
  distributions over held-out benign text, per (direction, layer, alpha): how far steering moves
  the model where there is nothing to detoxify. Steering is applied at every position here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generation import PromptFormat, encode_prompts, left_pad
from steerlib.hooks import Units, steering
from steerlib.vectors import SteeringVector

__all__ = ["KL_COLUMNS", "benign_kl", "continuation_perplexity"]

KL_COLUMNS = ["direction", "layer", "alpha", "kl_benign", "n_tokens"]


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


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

    Args:
        model: The judge, normally the unsteered model that generated the completions.
        tokenizer: Its tokenizer.
        prompts: Prompt texts (formatted with ``prompt_format`` as during generation).
        completions: Completion texts, one per prompt.
        prompt_format: ``"raw"`` or ``"chat"``.
        batch_size: Sequences per forward pass.
        progress: Show a tqdm progress bar.

    Returns:
        ``exp(mean negative log-likelihood of the completion tokens)`` per row.

    Example:
        >>> continuation_perplexity(model, tok, ["The sky is"], [" blue."])  # doctest: +SKIP
        array([23.1])
    """
    if len(prompts) != len(completions):
        raise ConfigError("prompts and completions must have the same length.")
    prompt_ids = encode_prompts(tokenizer, prompts, prompt_format)
    completion_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        for text in completions
    ]
    result = np.full(len(prompts), np.nan)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(completion_ids[i]))
    order = [i for i in order if completion_ids[i]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        sequences = [prompt_ids[i] + completion_ids[i] for i in rows]
        ids, mask = left_pad(sequences, pad_id)
        # Only the completion tokens are scored: with left padding they sit at the end, so the
        # output head (a large share of a small model's work) runs on the last positions only.
        keep = max(len(completion_ids[i]) for i in rows) + 1
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep
        ).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, -keep + 1 :].to(device)
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, i in enumerate(rows):
            n = len(completion_ids[i])
            # Completion token j (of n) is predicted at kept position keep - 1 - n + j.
            nll = -token_lp[row, keep - 1 - n :].mean()
            result[i] = float(torch.exp(nll))
    return result


@torch.inference_mode()
def benign_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    vectors: Mapping[str, SteeringVector],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    units: Units = "raw",
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Mean per-token ``KL(P_unsteered || P_steered)`` over benign text.

    All alphas of one (direction, layer) run in one batch per group of texts (per-row alphas).

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign texts (not used to build the vectors).
        vectors: ``{direction: vector}``, for example ``{"caa": v, "random": v.random_like()}``.
        layers: Steered layers.
        alphas: Coefficients.
        units: ``"raw"`` or ``"norm"``.
        batch_size: Texts per forward pass (each is repeated once per alpha).
        max_length: Longest tokenized text.
        progress: Show a tqdm progress bar.

    Returns:
        One row per (direction, layer, alpha) with :data:`KL_COLUMNS`.
    """
    if not texts:
        return pd.DataFrame(columns=KL_COLUMNS)
    device = _device(model)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = {(d, layer, a): 0.0 for d in vectors for layer in layers for a in alphas}
    total_tokens = 0
    jobs = [(d, layer) for d in vectors for layer in layers]
    starts = list(range(0, len(encoded), batch_size))
    bar = tqdm(total=len(starts) * (len(jobs) + 1), desc="benign KL", disable=not progress)
    for start in starts:
        ids, mask = left_pad(encoded[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        bar.update()
        real = mask.bool()
        total_tokens += int(real.sum())
        n_alpha = len(alphas)
        rep_ids, rep_mask = ids.repeat(n_alpha, 1), mask.repeat(n_alpha, 1)
        row_alphas = torch.tensor(alphas, dtype=torch.float32).repeat_interleave(ids.shape[0])
        for direction, layer in jobs:
            with steering(model, vectors[direction], row_alphas, layer, units=units):
                logits = model(input_ids=rep_ids, attention_mask=rep_mask).logits.float()
            steered = torch.log_softmax(logits, -1).view(n_alpha, *base.shape)
            kl = (base.exp() * (base - steered)).sum(-1)  # (alpha, batch, seq)
            for k, alpha in enumerate(alphas):
                sums[(direction, layer, alpha)] += float(kl[k][real].sum())
            bar.update()
    bar.close()
    rows = [
        {
            "direction": d,
            "layer": int(layer),
            "alpha": float(a),
            "kl_benign": s / total_tokens,
            "n_tokens": total_tokens,
        }
        for (d, layer, a), s in sums.items()
    ]
    return pd.DataFrame(rows, columns=KL_COLUMNS)
