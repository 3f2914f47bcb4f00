"""Step 05's KL pass: benign KL and human-text perplexity of each variant, with intervals."""

from __future__ import annotations

import pandas as pd

from steerlib.experiment.alpha_search import held_out_prefixes
from steerlib.experiment.families import VariantSweep
from steerlib.experiment.plan import SweepPlan, with_variant
from steerlib.experiment.run import Run
from steerlib.experiment.timings import advance

__all__ = ["KL_RESAMPLES", "kl_table"]

KL_RESAMPLES = 2000
"""Bootstrap resamples of the held-out texts' intervals (fixed: step 05 does not read
``n_resamples``, so changing it does not redo the sweep)."""


def kl_table(
    run: Run,
    held_out: tuple[list[str], list[str]],
    plan: SweepPlan,
    searched: pd.DataFrame,
    sweep: VariantSweep,
) -> pd.DataFrame:
    """Benign KL and human-text perplexity of ``sweep``'s variant, with intervals.

    At every grid setting and every searched alpha; on all held-out texts and on each half
    (``split``: the search half is ``"selection"``, the report half ``"confirmation"``).
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
        **sweep.steer,
    }
    kl = benign_kl(
        model,
        tokenizer,
        texts,
        sweep.vectors,
        layers=plan.layers,
        alphas=run.params.alphas,
        **options,
    )
    if len(searched):
        searched = with_variant(searched)
        searched = searched[searched["variant"] == sweep.name]
    extra = (
        searched[["layer", "alpha"]].drop_duplicates().itertuples(index=False)
        if len(searched)
        else []
    )
    tables = [kl] + [
        benign_kl(
            model, tokenizer, texts, sweep.vectors, layers=[int(layer)], alphas=[alpha], **options
        )
        for layer, alpha in extra
    ]
    advance()
    return pd.concat(tables, ignore_index=True).assign(variant=sweep.name)
