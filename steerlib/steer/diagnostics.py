"""Per-layer diagnostics of a CAA vector: would a reviewer trust this direction?

Each check answers one way a difference of means can mislead:

- ``norm_ratio``: the vector's norm over the median residual norm of the content tokens. A
  vector that is large next to the tokens it is added to says more about one outlying
  position than about the texts.
- ``sink_cosine``: cosine with the mean first-position state (the attention sink). Near 1, the
  vector mostly measures which texts had the sink inside the pooling window.
  ``sink_cosine_raw`` is the same before the sink component is projected out, and
  ``sink_share`` the share of the raw norm that projection removes (0 without it).
- ``split_half_cosine``: cosine between the vectors of two random halves of the pairs. Low,
  the direction is noise at this sample size.
- ``toxic_tokens`` / ``nontoxic_tokens``: mean content length of the two sets (a length
  difference moves the pooled window).
- ``max_share``: mean over texts of the largest share one pooled position has in the sum of
  the pooled norms (``1/window`` when tokens are alike; near 1 when one dominates).

A layer is flagged ``dominated`` when ``|sink_cosine| > 0.5`` or ``max_share > 0.5``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from steerlib.errors import ConfigError

if TYPE_CHECKING:
    from steerlib.steer.activations import ResidualActivations

__all__ = [
    "DOMINATED_MAX_SHARE",
    "DOMINATED_SINK_COSINE",
    "diagnostics_table",
    "dominated_layers",
    "sink_directions",
    "vector_diagnostics",
]

DOMINATED_SINK_COSINE = 0.5
"""``|cosine(vector, sink)|`` above this flags a layer."""
DOMINATED_MAX_SHARE = 0.5
"""A mean largest-position share above this flags a layer."""


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def _mean_or_nan(values: torch.Tensor | None, index: int | None = None) -> float:
    if values is None:
        return math.nan
    chosen = values if index is None else values[:, index]
    return float(chosen.float().mean())


def sink_directions(
    toxic: ResidualActivations, nontoxic: ResidualActivations
) -> torch.Tensor | None:
    """Unit mean first-position state of both sets, ``(n_layers, hidden)``; None if unknown."""
    if toxic.sink is None or nontoxic.sink is None:
        return None
    n_tox, n_non = toxic.pooled.shape[0], nontoxic.pooled.shape[0]
    sink = (toxic.sink * n_tox + nontoxic.sink * n_non) / (n_tox + n_non)
    return sink / sink.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _difference(
    toxic: ResidualActivations,
    nontoxic: ResidualActivations,
    layer_index: int,
    sink: torch.Tensor | None,
    rows: tuple[Any, Any] | None = None,
) -> torch.Tensor:
    tox, non = toxic.pooled[:, layer_index], nontoxic.pooled[:, layer_index]
    if rows is not None:
        tox, non = tox[torch.as_tensor(rows[0])], non[torch.as_tensor(rows[1])]
    diff = tox.mean(0) - non.mean(0)
    return diff if sink is None else diff - (diff @ sink) * sink


def vector_diagnostics(
    toxic: ResidualActivations,
    nontoxic: ResidualActivations,
    *,
    seed: int = 0,
    project_sink: bool = False,
) -> list[dict[str, Any]]:
    """One record per layer with the checks of this module.

    Args:
        toxic: Pooled activations of the toxic texts.
        nontoxic: Pooled activations of the non-toxic texts (same model and layers).
        seed: Seed of the random split into halves.
        project_sink: Diagnose the vector with its sink component projected out (as
            :func:`steerlib.steer.vectors.compute_caa` builds it by default).

    Returns:
        ``[{"layer", "norm", "median_token_norm", "norm_ratio", "sink_cosine",
        "sink_cosine_raw", "sink_share", "split_half_cosine", "toxic_tokens",
        "nontoxic_tokens", "max_share", "dominated"}]``;
        a check that the activations cannot support (saved before it existed, or fewer than
        two texts a side for the split) is NaN.

    Raises:
        ConfigError: The two sets come from different layers.
    """
    if toxic.layers != nontoxic.layers:
        raise ConfigError("toxic and non-toxic activations come from different layers.")
    n_tox, n_non = toxic.pooled.shape[0], nontoxic.pooled.shape[0]
    rng = np.random.default_rng(seed)
    halves = None
    if min(n_tox, n_non) >= 2:
        tox_order, non_order = rng.permutation(n_tox), rng.permutation(n_non)
        halves = (
            (tox_order[: n_tox // 2], non_order[: n_non // 2]),
            (tox_order[n_tox // 2 :], non_order[n_non // 2 :]),
        )
    sinks = sink_directions(toxic, nontoxic)
    medians = (
        torch.cat([toxic.median_norm, nontoxic.median_norm])
        if toxic.median_norm is not None and nontoxic.median_norm is not None
        else None
    )
    shares = (
        torch.cat([toxic.max_share, nontoxic.max_share])
        if toxic.max_share is not None and nontoxic.max_share is not None
        else None
    )
    records = []
    for i, layer in enumerate(toxic.layers):
        sink = sinks[i] if sinks is not None else None
        raw = _difference(toxic, nontoxic, i, None)
        vector = _difference(toxic, nontoxic, i, sink if project_sink else None)
        norm = float(vector.norm())
        median = float(medians[:, i].median()) if medians is not None else math.nan
        split = math.nan
        if halves is not None:
            a, b = (
                _difference(toxic, nontoxic, i, sink if project_sink else None, half)
                for half in halves
            )
            split = _cosine(a, b)
        sink_cos = _cosine(vector, sink) if sink is not None else math.nan
        raw_cos = _cosine(raw, sink) if sink is not None else math.nan
        share = _mean_or_nan(shares, i)
        records.append(
            {
                "layer": int(layer),
                "norm": norm,
                "median_token_norm": median,
                "norm_ratio": norm / median if median > 0 else math.nan,
                "sink_cosine": sink_cos,
                "sink_cosine_raw": raw_cos,
                "sink_share": 1.0 - norm / float(raw.norm()) if float(raw.norm()) > 0 else 0.0,
                "split_half_cosine": split,
                "toxic_tokens": _mean_or_nan(toxic.n_tokens),
                "nontoxic_tokens": _mean_or_nan(nontoxic.n_tokens),
                "max_share": share,
                "dominated": bool(
                    abs(sink_cos) > DOMINATED_SINK_COSINE or share > DOMINATED_MAX_SHARE
                ),
            }
        )
    return records


def diagnostics_table(diagnostics: list[dict[str, Any]]) -> pd.DataFrame:
    """The diagnostics as a table, one row per layer, rounded for reading."""
    table = pd.DataFrame(diagnostics)
    if table.empty:
        return table
    return table.set_index("layer").round(3)


def dominated_layers(diagnostics: list[dict[str, Any]]) -> list[int]:
    """Layers whose vector is flagged as dominated by one position."""
    return [int(r["layer"]) for r in diagnostics if r.get("dominated")]
