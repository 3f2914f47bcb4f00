"""Step 05's KL pass: benign KL and human-text perplexity of each variant, with intervals."""

from __future__ import annotations

import pandas as pd

from steerlib.experiment.alpha_search import held_out_prefixes
from steerlib.experiment.families import VariantSweep
from steerlib.experiment.plan import SweepPlan, with_variant
from steerlib.experiment.run import Run
from steerlib.experiment.timings import advance

__all__ = ["KL_BATCH", "KL_RESAMPLES", "kl_passes", "kl_table", "searched_settings"]

KL_RESAMPLES = 2000
"""Bootstrap resamples of the held-out texts' intervals (fixed: step 05 does not read
``n_resamples``, so changing it does not redo the sweep)."""
KL_BATCH = 8
"""Held-out texts per forward pass (:func:`steerlib.evaluate.benign.benign_kl`'s default)."""


def searched_settings(searched: pd.DataFrame, sweep: VariantSweep) -> list[tuple[int, float]]:
    """The ``(layer, alpha)`` of ``sweep``'s rows at searched alphas, in their order."""
    if not len(searched):
        return []
    searched = with_variant(searched)
    searched = searched[searched["variant"] == sweep.name]
    pairs = searched[["layer", "alpha"]].drop_duplicates().itertuples(index=False)
    return [(int(layer), float(alpha)) for layer, alpha in pairs]


def kl_passes(
    held_out: tuple[list[str], list[str]],
    plan: SweepPlan,
    searched: pd.DataFrame,
    sweep: VariantSweep,
) -> int:
    """The forward passes :func:`kl_table` makes for ``sweep`` (its progress count)."""
    settings = len(sweep.vectors) * (len(plan.layers) + len(searched_settings(searched, sweep)))
    return -(-len(held_out[0]) // KL_BATCH) * (1 + settings)


def kl_table(
    run: Run,
    held_out: tuple[list[str], list[str]],
    plan: SweepPlan,
    searched: pd.DataFrame,
    sweep: VariantSweep,
) -> pd.DataFrame:
    """Benign KL and human-text perplexity of ``sweep``'s variant, with intervals.

    At every grid setting and every searched alpha; on all held-out texts and on each half
    (``split``: the search half is ``"selection"``, the report half ``"confirmation"``). Each
    forward pass counts one (:func:`kl_passes` in all) toward the phase's progress.
    """
    from steerlib.evaluate.fluency import benign_kl

    model, tokenizer = run.model()
    texts, halves = held_out
    options = {
        "units": run.params.units,
        "prefixes": held_out_prefixes(run, texts, sweep),
        "halves": halves,
        "n_resamples": KL_RESAMPLES,
        "seed": run.params.seed,
        "batch_size": KL_BATCH,
        **sweep.steer,
    }
    extra = searched_settings(searched, sweep)
    # One call: one unsteered pass per batch of texts serves the grid and every searched alpha
    # (their rows as separate calls gave them, block by block).
    kl = benign_kl(
        model,
        tokenizer,
        texts,
        sweep.vectors,
        layers=plan.layers,
        alphas=run.params.alphas,
        extra=extra,
        on_pass=advance,
        **options,
    )
    return kl.assign(variant=sweep.name)
