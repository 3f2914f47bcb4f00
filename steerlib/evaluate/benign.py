"""What steering costs on benign text: the KL divergence and the steered human perplexity.

:func:`benign_kl`: mean KL divergence ``KL(P_unsteered || P_steered)`` of the next-token
distributions over held-out benign text, per (direction, layer, alpha): how far steering moves
the model where there is nothing to detoxify, and the perplexity the steered model assigns to
those human-written texts. Each pass takes one :class:`~steerlib.steer.steering.Steering` whole
(:func:`steered_log_probs`), bound from the variant at each layer. Steering is applied at every
position here, except for a variant that steers generated positions only: given each text's
prompt part (``prefixes``), it is judged teacher-forced, the continuation steered and the prompt
not (:func:`continuation_starts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.evaluate.metrics import run_bootstrap
from steerlib.generate.tokens import left_pad, pad_token_id
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Units
from steerlib.steer.steering import Steering
from steerlib.steer.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlib.steer.probe import ToxicityProbe
    from steerlib.steer.variants import Variant

__all__ = ["KL_COLUMNS", "benign_kl", "continuation_starts", "steered_log_probs"]

KL_COLUMNS = [
    "direction",
    "layer",
    "alpha",
    "kl_benign",
    "human_perplexity",
    "n_tokens",
    "n_texts",
]


@torch.inference_mode()
def benign_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    vectors: Mapping[str, SteeringVector] | Steering,
    *,
    alphas: Sequence[float],
    layers: Sequence[int] = (),
    units: Units = "raw",
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = False,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
    prefixes: Sequence[str | None] | None = None,
    halves: Sequence[str] | None = None,
    n_resamples: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean per-token KL(unsteered || steered) and the steered perplexity on benign text.

    ``human_perplexity`` is the perplexity the steered model assigns to the same fixed,
    human-written benign texts for every setting (the fluency cost judged on text the model
    did not write, as AurA reports it on Wikipedia): ``exp`` of the mean negative
    log-likelihood of each next token. At alpha 0 it is the unsteered model's perplexity.
    All alphas of one (direction, layer) run in one batch per group of texts (per-row alphas).

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign texts (not used to build the vectors).
        vectors: ``{direction: vector}``, for example ``{"caa": v, "random": v.random_like()}``,
            each steered at each of ``layers`` by ``variant``; or one bound
            :class:`~steerlib.steer.steering.Steering`, judged alone (``layers``, ``units``,
            ``variant`` and ``probe`` then unused; its row's layer is its middle layer).
        layers: Steered layers (with a mapping of vectors).
        alphas: Coefficients.
        units: Alpha units, ``"raw"`` or ``"norm"``.
        batch_size: Texts per forward pass (each is repeated once per alpha).
        max_length: Longest tokenized text.
        progress: Show a tqdm progress bar.
        variant: How the vector is applied (:mod:`steerlib.steer.variants`; plain CAA when
            ``None``). Every position is steered, except with a variant whose positions
            are ``"generated"`` (``caa_generated``): it is judged with its own positions,
            teacher-forced (see ``prefixes``).
        probe: The toxicity probe of a gated variant.
        prefixes: The prompt part of each text (a string prefix of it: held-out texts are
            prompt + continuation, :func:`steerlib.data.subsets.pair_texts`). Used only by a
            variant that steers generated positions: the tokens the prefix covers are left
            unsteered and the rest (the continuation) is steered, and the KL and perplexity
            are taken over the steered positions only. A text that is no longer
            than its prefix (no continuation) plays its first half of tokens as the prompt.
            ``None``: every text is split at half its tokens.
        halves: One half name per text (e.g. ``"selection"``/``"confirmation"``, see
            :func:`steerlib.data.subsets.held_out_halves`); each half then gets its own rows.
        n_resamples: Bootstrap resamples of the intervals (0: none). The texts are the
            clusters: :func:`steerlib.evaluate.metrics.run_bootstrap` (BCa) resamples whole texts,
            the
            statistic being the pooled per-token value (``exp`` of the pooled NLL for the
            perplexity).
        seed: Seed of the bootstrap.

    Raises:
        ConfigError: ``prefixes`` or ``halves`` of another length than ``texts``.

    Returns:
        One row per (direction, layer, alpha) with :data:`KL_COLUMNS`; with ``halves``, one per
        (split, direction, layer, alpha), ``split`` being ``"all"`` or a half. With
        ``n_resamples``, also ``human_perplexity_ci_low/_high`` and ``kl_benign_ci_low/_high``
        (NaN for fewer than two texts); ``n_texts`` is the number of texts of the row.
    """
    if halves is not None and len(halves) != len(texts):
        raise ConfigError(f"halves has {len(halves)} names for {len(texts)} texts; give one each.")
    if not texts:
        return pd.DataFrame(columns=KL_COLUMNS)
    device = next(model.parameters()).device
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = pad_token_id(tokenizer)
    jobs = (
        [(vectors.direction, vectors.centre, vectors)]
        if isinstance(vectors, Steering)
        else _kl_jobs(model, vectors, layers, units, variant, probe)
    )
    teacher_forced = any(bound.positions == "generated" for _, _, bound in jobs)
    first = (
        continuation_starts(tokenizer, encoded, prefixes, max_length) if teacher_forced else None
    )
    sums = _KLSums.empty(len(encoded), [(d, layer, a) for d, layer, _ in jobs for a in alphas])
    starts = list(range(0, len(encoded), batch_size))
    bar = tqdm(total=len(starts) * (len(jobs) + 1), desc="benign KL", disable=not progress)
    for start in starts:
        ids, mask = left_pad(encoded[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        # Left padding shifts each row's continuation by its padding.
        row_first = (
            None
            if first is None
            else torch.tensor(first[start : start + batch_size]) + (mask == 0).sum(-1).cpu()
        )
        _kl_batch(model, ids, mask, row_first, jobs, alphas, sums, start, bar.update)
    bar.close()
    return _kl_table(sums, halves, n_resamples=n_resamples, seed=seed)


def _kl_jobs(
    model: PreTrainedModel,
    vectors: Mapping[str, SteeringVector],
    layers: Sequence[int],
    units: Units,
    variant: Variant | None,
    probe: ToxicityProbe | None,
) -> list[tuple[str, int, Steering]]:
    """``(direction, layer, steering)`` of every pass: the variant bound at each layer."""
    jobs = []
    for direction, vector in vectors.items():
        for layer in layers:
            bound = (
                Steering.plain(vector, layer, units=units)
                if variant is None
                else variant.bind(
                    vector, layer, num_layers=num_layers(model), units=units, probe=probe
                )
            )
            jobs.append((direction, layer, bound))
    return jobs


@dataclass
class _KLSums:
    """Per-text sums of one :func:`benign_kl` call, filled batch by batch.

    Attributes:
        kl: Per setting ``(direction, layer, alpha)``: each text's summed token KL.
        nll: Per setting: each text's summed negative log-likelihood of its next tokens.
        tokens: Each text's judged positions (the KL's denominator).
        predicted: Each text's judged next-token predictions (the perplexity's denominator).
    """

    kl: dict[tuple[str, int, float], np.ndarray]
    nll: dict[tuple[str, int, float], np.ndarray]
    tokens: np.ndarray
    predicted: np.ndarray

    @classmethod
    def empty(cls, n_texts: int, keys: Sequence[tuple[str, int, float]]) -> _KLSums:
        """Zeros for ``n_texts`` texts and the given settings."""
        return cls(
            {key: np.zeros(n_texts) for key in keys},
            {key: np.zeros(n_texts) for key in keys},
            np.zeros(n_texts),
            np.zeros(n_texts),
        )


def steered_log_probs(
    model: PreTrainedModel,
    steering: Steering,
    ids: torch.Tensor,
    mask: torch.Tensor,
    alphas: Sequence[float],
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(alpha, batch, seq, vocab)`` next-token log-probabilities of a batch under ``steering``.

    Every alpha is one copy of the batch in one forward pass (per-row alphas). Every position
    is steered, or, with ``first`` (teacher forcing), each row's positions from ``first[row]``
    on (the prompt part before it left as it is).
    """
    n_alpha = len(alphas)
    rep_ids, rep_mask = ids.repeat(n_alpha, 1), mask.repeat(n_alpha, 1)
    row_alphas = torch.tensor(alphas, dtype=torch.float32).repeat_interleave(ids.shape[0])
    with steering.with_(positions="all").hooks(model, row_alphas) as handle:
        handle.set_steer_from(first)
        logits = model(input_ids=rep_ids, attention_mask=rep_mask).logits.float()
    return torch.log_softmax(logits, -1).view(n_alpha, *ids.shape, -1)


def _kl_batch(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    row_first: torch.Tensor | None,
    jobs: list[tuple[str, int, Steering]],
    alphas: Sequence[float],
    sums: _KLSums,
    start: int,
    tick: Callable[[], Any],
) -> None:
    """Add one batch of texts (rows ``start`` on) to ``sums``, for every job and alpha."""
    base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    tick()
    real = mask.bool()
    if row_first is not None:  # judged where it steers: the continuation's positions
        positions = torch.arange(ids.shape[1])[None, :]
        real &= (positions >= row_first[:, None]).to(real.device)
    here = slice(start, start + ids.shape[0])
    sums.tokens[here] = real.sum(-1).cpu().numpy()
    # Position t predicts token t + 1; both must be real tokens (and t a steered one).
    scored = real[:, :-1] & mask.bool()[:, 1:]
    sums.predicted[here] = scored.sum(-1).cpu().numpy()
    targets = ids[:, 1:].unsqueeze(-1)
    n_alpha = len(alphas)
    for direction, layer, bound in jobs:
        steered = steered_log_probs(model, bound, ids, mask, alphas, row_first)
        kl = (base.exp() * (base - steered)).sum(-1)  # (alpha, batch, seq)
        token_logp = steered[:, :, :-1].gather(-1, targets.expand(n_alpha, -1, -1, -1))
        per_kl = (kl * real).sum(-1).cpu().numpy()  # (alpha, batch)
        per_nll = -(token_logp.squeeze(-1) * scored).sum(-1).cpu().numpy()
        for k, alpha in enumerate(alphas):
            sums.kl[(direction, layer, alpha)][here] = per_kl[k]
            sums.nll[(direction, layer, alpha)][here] = per_nll[k]
        tick()


def _kl_table(
    sums: _KLSums, halves: Sequence[str] | None, *, n_resamples: int, seed: int
) -> pd.DataFrame:
    """One row per (split, direction, layer, alpha) of pooled KL and human perplexity."""
    n_texts = len(sums.tokens)
    names = np.asarray(["all"] * n_texts if halves is None else list(halves), dtype=object)
    groups = [("all", np.ones(n_texts, dtype=bool))]
    if halves is not None:
        groups += [(str(h), names == h) for h in sorted(set(names))]
    rows = []
    for split, chosen in groups:
        for (d, layer, a), kl_sums in sums.kl.items():
            row = {
                "split": split,
                "direction": d,
                "layer": int(layer),
                "alpha": float(a),
                **_pooled(
                    sums.nll[(d, layer, a)][chosen],
                    sums.predicted[chosen],
                    kl_sums[chosen],
                    sums.tokens[chosen],
                    n_resamples=n_resamples,
                    seed=seed,
                ),
            }
            rows.append(row)
    table = pd.DataFrame(rows)
    return table if halves is not None else table.drop(columns="split")


def _pooled(
    nll: np.ndarray,
    predicted: np.ndarray,
    kl: np.ndarray,
    tokens: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
) -> dict[str, float]:
    """Pooled human perplexity and KL of a group of texts, with text-cluster intervals."""
    out = {
        "kl_benign": float(kl.sum() / max(tokens.sum(), 1)),
        "human_perplexity": math.exp(float(nll.sum() / max(predicted.sum(), 1))),
        "n_tokens": int(tokens.sum()),
        "n_texts": len(nll),
    }
    if n_resamples <= 0:
        return out
    options = {"confidence": 0.95, "n_resamples": n_resamples, "seed": seed, "method": "BCa"}
    for name, (values, counts), transform in (
        ("human_perplexity", (nll, predicted), np.exp),
        ("kl_benign", (kl, tokens), lambda x: x),
    ):
        low = high = math.nan
        if len(values) >= 2 and counts.sum() > 0:

            def statistic(v: np.ndarray, c: np.ndarray, axis: int = -1, f: Any = transform) -> Any:
                return f(np.sum(v, axis=axis) / np.maximum(np.sum(c, axis=axis), 1))

            low, high = run_bootstrap((values, counts), statistic, vectorized=True, **options)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def continuation_starts(
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[Sequence[int]],
    prefixes: Sequence[str | None] | None,
    max_length: int = 256,
) -> list[int]:
    """Index of each encoded text's first continuation token (after its prompt part).

    The prompt part is the longest run of leading tokens the text shares with its prefix
    encoded alone (a token merged across the seam counts as continuation). A text with no
    token after its prefix, or with no prefix given (``None``), is split at half its tokens,
    so every text has a steered part to judge. The index is at least 1: the first token (BOS or the
    attention sink) is never the continuation.

    Args:
        tokenizer: The tokenizer that encoded the texts.
        encoded: Token ids of each text (as the texts were encoded, special tokens included).
        prefixes: The prompt part of each text, or ``None``.
        max_length: The texts' truncation length.

    Raises:
        ConfigError: ``prefixes`` of another length than ``encoded``.
    """
    if prefixes is not None and len(prefixes) != len(encoded):
        raise ConfigError(
            f"got {len(prefixes)} prefixes for {len(encoded)} texts: give each held-out text's "
            "prompt part, in the texts' order (or None to split each text at half its tokens)."
        )
    starts = []
    for row, ids in enumerate(encoded):
        shared = 0
        if prefixes is not None and prefixes[row]:
            head = tokenizer(prefixes[row], truncation=True, max_length=max_length)["input_ids"]
            while shared < min(len(head), len(ids)) and head[shared] == ids[shared]:
                shared += 1
        if not 1 <= shared < len(ids):
            shared = len(ids) // 2
        starts.append(max(1, shared))
    return starts
