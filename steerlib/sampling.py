"""Next-token sampling for the sweep engine: greedy, or temperature and tiered top-p.

Top-p looks at the 64 most likely tokens first, then 1,024, then 8,192, and sorts the whole
vocabulary only for rows whose nucleus is larger still; the distribution is that of
``transformers``' ``TopPLogitsWarper``.
"""

from __future__ import annotations

import torch

__all__ = ["sample_next"]

_TOP_K_TIERS = (64, 1024, 8192)
"""Partial top-k sizes tried in turn in top-p sampling before a full-vocabulary sort."""


def _nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep mask over probabilities sorted in descending order (``TopPLogitsWarper`` rule).

    A token is kept when the mass of the tokens ranked above it is below ``top_p``; the most
    likely token is always kept.
    """
    above = sorted_probs.cumsum(-1) - sorted_probs
    keep = above < top_p
    keep[..., 0] = True
    return keep


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    overwrite: bool = False,
) -> torch.Tensor:
    """Next token of each row: greedy at temperature 0, else temperature + top-p sampling.

    The distribution is that of ``generate`` with ``TemperatureLogitsWarper`` and
    ``TopPLogitsWarper`` (``top_k`` off). The top 64 tokens are looked at first, then 1,024
    and 8,192; only rows whose nucleus is larger still sort the whole vocabulary.

    Args:
        logits: ``(rows, vocab)`` float32 scores.
        temperature: Sampling temperature; 0 for greedy decoding.
        top_p: Nucleus threshold in (0, 1].
        generator: Random generator on the logits' device.
        overwrite: Let the function use ``logits`` as scratch space (saves a copy).

    Returns:
        ``(rows,)`` token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_p >= 1.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    # In place where allowed: on a CPU each fresh (rows x vocab) tensor costs more in page
    # faults than its arithmetic.
    scaled = logits.div_(temperature) if overwrite else logits / temperature
    weights = scaled.sub_(scaled.amax(-1, keepdim=True)).exp_()  # softmax numerators
    total = weights.sum(-1, keepdim=True)
    vocab = weights.shape[-1]
    chosen = torch.empty(weights.shape[0], dtype=torch.long, device=weights.device)
    remaining = torch.arange(weights.shape[0], device=weights.device)
    # Most rows' nucleus lies within the top 64 tokens; flat distributions (steered far) need
    # more. A partial top-k is far cheaper than sorting the whole vocabulary for every row.
    for k in (*(k for k in _TOP_K_TIERS if k < vocab), vocab):
        rows_w = weights if len(remaining) == len(weights) else weights[remaining]
        if k < vocab:
            top_w, top_idx = rows_w.topk(k, dim=-1)
        else:
            top_w, top_idx = rows_w.sort(dim=-1, descending=True)
        top_p_rows = top_w / total[remaining]
        covered = top_p_rows.sum(-1) >= top_p if k < vocab else torch.ones_like(remaining).bool()
        here = covered.nonzero().squeeze(1)
        if here.numel():
            p = top_p_rows[here]
            pick = torch.multinomial(p * _nucleus(p, top_p), 1, generator=generator)
            chosen[remaining[here]] = top_idx[here].gather(1, pick).squeeze(1)
        remaining = remaining[~covered]
        if not remaining.numel():
            break
    return chosen
