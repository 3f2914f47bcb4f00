"""Next-token sampling for the sweep engine: greedy, or temperature and tiered top-p.

:func:`sample_next` (the CPU path) looks at the 64 most likely tokens first, then 1,024, then
8,192, and sorts the whole vocabulary only for rows whose nucleus is larger still.
:func:`sample_static` (the accelerator path) does the same without a host sync and with fixed
shapes (so it can be captured in a CUDA graph): one partial top-k for every row, and a full sort
for a fixed number of rows, the least covered; it reports whether more rows needed one. Both
give the distribution of ``transformers``' ``TemperatureLogitsWarper`` and ``TopPLogitsWarper``.
Both draw a token as ``torch.multinomial`` draws one sample, ``argmax(p / q)`` with ``q`` from
``Exponential(1)``; written out, that is the same draw without ``multinomial``'s host-side
check.
"""

from __future__ import annotations

import torch

__all__ = ["nucleus_candidates", "sample_next", "sample_static"]

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


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row, with probability proportional to ``weights`` (no host sync).

    The same draw as ``torch.multinomial(weights, 1, generator=generator)``, which for one
    sample computes ``argmax(weights / q)`` with ``q ~ Exponential(1)``, but without its
    validity check (a host sync).
    """
    q = torch.empty_like(weights).exponential_(1, generator=generator)
    return (weights / q).argmax(-1, keepdim=True)


def nucleus_candidates(
    logits: torch.Tensor, *, temperature: float, top_p: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Temperature and top-p over each row's ``top_k`` most likely tokens, with fixed shapes.

    Args:
        logits: ``(rows, vocab)`` float32 scores (used as scratch space).
        temperature: Sampling temperature (> 0).
        top_p: Nucleus threshold in (0, 1].
        top_k: Candidates per row.

    Returns:
        ``(probs, ids, covered, weights, total)``: ``(rows, top_k)`` probabilities of the
        candidates inside the nucleus (0 outside it), their token ids, whether each row's
        nucleus lies within its candidates (only then are ``probs`` its nucleus distribution),
        the ``(rows, vocab)`` softmax numerators and their ``(rows, 1)`` sums.
    """
    top_k = min(top_k, logits.shape[-1])
    scaled = logits.div_(temperature)
    weights = scaled.sub_(scaled.amax(-1, keepdim=True)).exp_()
    total = weights.sum(-1, keepdim=True)
    top_w, ids = weights.topk(top_k, dim=-1)
    probs = top_w / total
    covered = probs.sum(-1) >= top_p
    if top_k == logits.shape[-1]:
        covered = torch.ones_like(covered)
    probs = probs * _nucleus(probs, top_p)
    return probs, ids, covered, weights, total


def sample_static(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    top_k: int,
    sort_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token of each row without host syncs and with fixed shapes (CUDA-graph safe).

    One partial top-k of ``top_k`` tokens serves every row whose nucleus it covers; the
    ``sort_rows`` rows with the least mass in their top-k get a full-vocabulary sort, and their
    draw replaces the top-k draw where the top-k did not cover the nucleus. A row is drawn
    from exactly its nucleus distribution unless more than ``sort_rows`` rows needed a sort:
    the returned flag says so, and the caller then decodes again with :func:`sample_next`.

    Args:
        logits: ``(rows, vocab)`` float32 scores (used as scratch space).
        temperature: Sampling temperature; 0 for greedy decoding.
        top_p: Nucleus threshold in (0, 1].
        generator: Random generator on the logits' device.
        top_k: Candidates per row in the common case.
        sort_rows: Rows that may get a full sort per call (0: none).

    Returns:
        ``(tokens, overflow)``: ``(rows,)`` token ids and a 0-dim bool tensor, true when more
        rows needed a full sort than ``sort_rows`` (their draws are then not exact).
    """
    if temperature == 0:
        return logits.argmax(-1), torch.zeros((), dtype=torch.bool, device=logits.device)
    if top_p >= 1.0:
        weights = torch.softmax(logits.div_(temperature), dim=-1)
        tokens = _draw(weights, generator).squeeze(1)
        return tokens, torch.zeros((), dtype=torch.bool, device=logits.device)
    probs, ids, covered, weights, total = nucleus_candidates(
        logits, temperature=temperature, top_p=top_p, top_k=top_k
    )
    tokens = ids.gather(1, _draw(probs, generator)).squeeze(1)
    uncovered = ~covered
    n_sort = min(sort_rows, logits.shape[0])
    if n_sort:
        rows = probs.sum(-1).topk(n_sort, largest=False).indices
        ordered, order = weights[rows].sort(dim=-1, descending=True)
        ordered = ordered / total[rows]
        picked = order.gather(1, _draw(ordered * _nucleus(ordered, top_p), generator)).squeeze(1)
        tokens[rows] = torch.where(uncovered[rows], picked, tokens[rows])
    return tokens, uncovered.sum() > n_sort
