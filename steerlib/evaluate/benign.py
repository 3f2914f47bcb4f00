"""What steering costs on benign text: the KL divergence and the steered human perplexity.

:func:`benign_kl`: mean KL divergence ``KL(P_unsteered || P_steered)`` of the next-token
distributions over held-out benign text, per (direction, layer, alpha): how far steering moves
the model where there is nothing to detoxify, and the perplexity the steered model assigns to
those human-written texts. Each pass takes one :class:`~steerlib.steer.steering.Steering` whole
(:func:`steered_log_probs`), bound from the variant at each layer. Steering is applied at every
position here, except for a variant that steers generated positions only: given each text's
prompt part (``prefixes``), it is judged teacher-forced, the continuation steered and the prompt
not (:func:`continuation_starts`). The batches, the unsteered pass and the judging are
:mod:`steerlib.evaluate.benign_pass`'s (one unsteered pass per batch of texts, whatever the
settings; alpha 0 needs no steered pass).
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
from steerlib.evaluate.benign_pass import (
    TextBatch,
    base_log_probs,
    continuation_starts,
    judge,
    steered_log_probs,
    text_batches,
    unsteered_nll,
)
from steerlib.evaluate.metrics import run_bootstrap
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Units
from steerlib.steer.steering import Steering
from steerlib.steer.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlib.steer.probe import ToxicityProbe
    from steerlib.steer.variants import Variant

__all__ = [
    "KL_COLUMNS",
    "benign_kl",
    "bind_steering",
    "continuation_starts",
    "steered_log_probs",
]

KL_COLUMNS = [
    "direction",
    "layer",
    "alpha",
    "kl_benign",
    "human_perplexity",
    "n_tokens",
    "n_texts",
]

_Job = tuple[str, int, Steering]
"""``(direction, layer, steering)``: one steered setting of a :func:`benign_kl` call."""


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
    extra: Sequence[tuple[int, float]] = (),
    on_pass: Callable[[int], Any] | None = None,
) -> pd.DataFrame:
    """Mean per-token KL(unsteered || steered) and the steered perplexity on benign text.

    ``human_perplexity`` is the perplexity the steered model assigns to the same fixed,
    human-written benign texts for every setting (the fluency cost judged on text the model
    did not write, as AurA reports it on Wikipedia): ``exp`` of the mean negative
    log-likelihood of each next token. At alpha 0 it is the unsteered model's perplexity.
    All nonzero alphas of one (direction, layer) run in one batch per group of texts (per-row
    alphas); alpha 0 needs no steered pass (KL 0, the unsteered perplexity: it steers nothing,
    :mod:`steerlib.evaluate.benign_pass`). One unsteered pass per group of texts serves every
    setting, ``extra`` ones included.

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
        extra: ``(layer, alpha)`` settings judged besides ``layers`` x ``alphas`` (each layer's
            searched alpha, say), for every direction of ``vectors``, each in a steered pass of
            its own. Their rows follow the grid's, one block per setting in the order given:
            the table separate calls (one per setting) would give, with one unsteered pass.
        on_pass: Called with 1 after each forward pass (unsteered, or one steered setting of
            a batch of texts): ``ceil(len(texts) / batch_size) * (1 + settings)`` calls in all.

    Raises:
        ConfigError: ``prefixes`` or ``halves`` of another length than ``texts``; ``extra``
            with a bound Steering.

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
    if isinstance(vectors, Steering):
        if extra:
            raise ConfigError("benign_kl takes extra settings with a mapping of vectors only.")
        parts = [([(vectors.direction, vectors.centre, vectors)], list(alphas))]
    else:
        parts = [(_kl_jobs(model, vectors, layers, units, variant, probe), list(alphas))] + [
            (_kl_jobs(model, vectors, [layer], units, variant, probe), [alpha])
            for layer, alpha in extra
        ]
    teacher_forced = any(b.positions == "generated" for jobs, _ in parts for _, _, b in jobs)
    batches = text_batches(
        tokenizer,
        texts,
        device=next(model.parameters()).device,
        prefixes=prefixes,
        teacher_forced=teacher_forced,
        batch_size=batch_size,
        max_length=max_length,
    )
    sums = [
        _KLSums.empty(len(texts), [(d, layer, a) for d, layer, _ in jobs for a in part_alphas])
        for jobs, part_alphas in parts
    ]
    steered = sum(len(jobs) for jobs, _ in parts)
    bar = tqdm(total=len(batches) * (steered + 1), desc="benign KL", disable=not progress)

    def tick(n: int = 1) -> None:
        bar.update(n)
        if on_pass is not None:
            on_pass(n)

    for batch in batches:
        _kl_batch(model, batch, parts, sums, tick)
    bar.close()
    tables = [_kl_table(s, halves, n_resamples=n_resamples, seed=seed) for s in sums]
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def _kl_jobs(
    model: PreTrainedModel,
    vectors: Mapping[str, SteeringVector],
    layers: Sequence[int],
    units: Units,
    variant: Variant | None,
    probe: ToxicityProbe | None,
) -> list[_Job]:
    """``(direction, layer, steering)`` of every pass: the variant bound at each layer."""
    return [
        (direction, layer, bind_steering(model, vector, layer, units, variant, probe))
        for direction, vector in vectors.items()
        for layer in layers
    ]


def bind_steering(
    model: PreTrainedModel,
    vector: SteeringVector,
    layer: int,
    units: Units = "raw",
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> Steering:
    """``vector`` at ``layer`` under ``variant`` (plain CAA when None), as benign_kl binds it."""
    if variant is None:
        return Steering.plain(vector, layer, units=units)
    return variant.bind(vector, layer, num_layers=num_layers(model), units=units, probe=probe)


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


def _kl_batch(
    model: PreTrainedModel,
    batch: TextBatch,
    parts: list[tuple[list[_Job], list[float]]],
    sums: list[_KLSums],
    tick: Any,
) -> None:
    """Add one batch of texts to ``sums`` (one per part), for every job and alpha of each part."""
    base = base_log_probs(model, batch, keep_for=[b for jobs, _ in parts for _, _, b in jobs])
    tick()
    base_nll = unsteered_nll(batch, base)
    for part_sums, (jobs, alphas) in zip(sums, parts, strict=True):
        part_sums.tokens[batch.rows] = batch.real.sum(-1).cpu().numpy()
        part_sums.predicted[batch.rows] = batch.scored.sum(-1).cpu().numpy()
        for direction, layer, bound in jobs:
            kl, nll = judge(model, batch, base, bound, alphas, base_nll)
            for k, alpha in enumerate(alphas):
                part_sums.kl[(direction, layer, alpha)][batch.rows] = kl[k]
                part_sums.nll[(direction, layer, alpha)][batch.rows] = nll[k]
            tick()
    batch.residuals.clear()  # the batch is done: its kept residuals are not needed again


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
