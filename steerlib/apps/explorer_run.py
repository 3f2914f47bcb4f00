"""Opening the alpha explorer on a run: its vector, model, scorer, start point and budget.

:func:`explorer_arguments` reads a run folder (``params.json``, ``vectors.safetensors``, and
``summary.json`` when step 06 has run) and returns what :class:`~steerlib.apps.widgets.
AlphaExplorer` is built from: the model and scorer (loaded unless given), the vector (with the
clamp levels the variants need), and the keyword arguments that open it at the run's
recommended point (:func:`start_point`) with the run's decoding settings, swept layers,
variants, probe and fluency budget.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError, DataError, SteerlibError
from steerlib.evaluate.operating_point import read_recommended
from steerlib.evaluate.scoring import Scorer
from steerlib.experiment.config import RunParams
from steerlib.experiment.runs import RunPaths
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.vectors import SteeringVector

__all__ = ["MISSING_RUN_HINT", "explorer_arguments", "run_budget", "start_point"]

MISSING_RUN_HINT = "run notebooks/04_vectors.ipynb first (or `python -m steerlib run`)"


def start_point(
    recommended: dict[str, Any] | None, layers: Sequence[int]
) -> tuple[int | None, float, str]:
    """Where an explorer on a run opens: the recommended point, or alpha 0 with a hint.

    Args:
        recommended: The run's ``recommended`` record
            (:func:`~steerlib.evaluate.operating_point.read_recommended`; ``None`` when step 06 has
            not run).
        layers: The layers the explorer offers.

    Returns:
        ``(layer, alpha, hint)``: the recommended layer and alpha, or ``(None, 0.0, hint)``;
        the hint is one line for the status bar.
    """
    point = recommended or {}
    layer, alpha = point.get("layer"), point.get("alpha")
    if layer is not None and alpha and int(layer) in {int(x) for x in layers}:
        return (
            int(layer),
            float(alpha),
            f"Opened at the run's recommended point: layer {int(layer)}, alpha {float(alpha):.2f}"
            f" ({point.get('variant', point.get('direction', 'caa'))}). Press Generate.",
        )
    if recommended is None:
        why = "step 06 (the analysis) has not run"
    elif layer is not None and alpha:
        why = f"its layer {int(layer)} is not in this vector"
    else:
        why = str(point.get("status") or point.get("error") or "the summary names none")
    return (
        None,
        0.0,
        f"No recommended point ({why}): starting at alpha 0, the unsteered model; move the "
        "slider to steer.",
    )


def run_budget(recommended: dict[str, Any] | None, params: RunParams) -> float:
    """The run's fluency budget (``max_perplexity_increase``, 0.10 = +10%).

    The one step 06 judged the recommended point with (``summary.json``'s
    ``recommended.checks``), else the run's parameter.
    """
    checks = (recommended or {}).get("checks") or {}
    value = checks.get("max_perplexity_increase")
    return float(value) if value is not None else float(params.max_perplexity_increase)


def _open(run_name: str, runs_dir: str | os.PathLike[str] | None) -> tuple[RunPaths, RunParams]:
    """The run's paths and validated parameters; refuses a run without params or vectors."""
    paths = RunPaths.for_run(run_name, runs_dir)
    absent = [p.name for p in (paths.params, paths.vectors) if not p.is_file()]
    if absent:
        raise DataError(
            f"run {run_name!r} has no {' or '.join(absent)} in {paths.root}: {MISSING_RUN_HINT}."
        )
    return paths, RunParams.validate_mapping({**paths.stored_params(), "run_name": run_name})


def _load(
    params: RunParams,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase | None,
    scorer: Scorer | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Scorer]:
    """The given model, tokenizer and scorer, or the run's, loaded."""
    if (model is None) != (tokenizer is None):
        raise ConfigError("pass both model and tokenizer, or neither (to load the run's).")
    if model is None:
        from steerlib.models.loading import load_model

        model, tokenizer = load_model(
            params.model,
            device=params.device,
            dtype=params.dtype,
            trust_remote_code=params.trust_remote_code,
        )
    if scorer is None:
        from steerlib.evaluate.scoring import load_scorer

        scorer = load_scorer(params.scorer, device=params.device)
    assert tokenizer is not None  # given with the model, or loaded with it
    return model, tokenizer, scorer


def _swept(model: PreTrainedModel, params: RunParams, vector: SteeringVector) -> list[int]:
    """The run's swept layers that the vector holds (none when the model lacks them)."""
    from steerlib.models.layers import resolve_layers

    try:
        return [x for x in resolve_layers(model, params.layers) if x in vector.layers]
    except ConfigError:  # layers the model does not have: nothing to mark
        return []


def _variant_inputs(
    params: RunParams, paths: RunPaths, vector: SteeringVector, names: list[str]
) -> tuple[ToxicityProbe | None, SteeringVector, dict[str, str]]:
    """``(probe, vector, {variant left out: why})`` for the run's gated and clamp variants."""
    needing = [name for name in names if name in ("gated", "clamp")]
    if not needing:
        return None, vector, {}
    from steerlib.experiment.run import Run
    from steerlib.experiment.steps import variant_inputs

    try:
        probe, vector = variant_inputs(Run(params, paths), vector)
    except (SteerlibError, OSError) as exc:
        return None, vector, dict.fromkeys(needing, " ".join(str(exc).split()))
    return probe, vector, {}


def _opening(
    recommended: dict[str, Any] | None,
    offered: Sequence[int],
    variants: Sequence[str],
    names: list[str],
    kwargs: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """The layer, variant and alpha to open at (filling ``None`` ones) and the status hint.

    ``variants`` are the run's, ``names`` those of them offered.
    """
    best_layer, best_alpha, hint = start_point(recommended, offered)
    best_variant = str((recommended or {}).get("variant") or "caa")
    if best_variant not in variants:
        best_variant = variants[0]
    chosen = dict(kwargs)
    if chosen.get("variant") is None:
        chosen["variant"] = best_variant if best_variant in names else names[0]
    if chosen.get("layer") is None:
        chosen["layer"] = best_layer
    if chosen.get("alpha") is not None:
        return chosen, None
    at_best = chosen["layer"] is None or (
        chosen["layer"] == best_layer and chosen["variant"] == best_variant
    )
    chosen["alpha"] = best_alpha if at_best else 0.0
    if best_layer is not None and not at_best:
        hint = (
            f"Starting at alpha 0 on layer {chosen['layer']} ({chosen['variant']}); the "
            f"run recommends layer {best_layer}, alpha {best_alpha:.2f} ({best_variant})."
        )
    return chosen, hint


def _recommended(
    recommended: dict[str, Any] | None, offered: Sequence[int], names: list[str]
) -> dict[str, Any]:
    """The explorer's ``recommended_*`` arguments (``None`` where the run recommends none)."""
    layer, alpha, _ = start_point(recommended, offered)
    chosen = str((recommended or {}).get("variant") or "caa")
    known = layer is not None and chosen in names
    return {
        "recommended_layer": layer,
        "recommended_alpha": alpha if known else None,
        "recommended_variant": chosen if known else None,
    }


def explorer_arguments(
    run_name: str,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    scorer: Scorer | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[tuple[PreTrainedModel, PreTrainedTokenizerBase, SteeringVector, Scorer], dict[str, Any]]:
    """What an explorer on run ``run_name`` is built from.

    The arguments are :meth:`steerlib.apps.widgets.AlphaExplorer.from_run`'s.

    Returns:
        ``((model, tokenizer, vector, scorer), keyword arguments)``: the run's settings
        (decoding, swept and recommended layers, variants, probe, fluency budget, hint), with
        ``kwargs`` over them.

    Raises:
        DataError: The run has no ``params.json`` or ``vectors.safetensors``.
        DamagedRunError: Its ``summary.json`` is damaged.
        ConfigError: ``params.json`` holds a wrong value, or only one of model/tokenizer.
    """
    paths, params = _open(run_name, runs_dir)
    vector = SteeringVector.load(paths.vectors)
    model, tokenizer, scorer = _load(params, model, tokenizer, scorer)
    offered = kwargs.get("layers") or vector.layers
    recommended = read_recommended(paths.summary)
    probe, vector, missing = _variant_inputs(params, paths, vector, list(params.variants))
    names = [name for name in params.variants if name not in missing]
    chosen, hint = _opening(recommended, offered, params.variants, names, kwargs)
    if missing:
        why = f"{' and '.join(missing)} not offered: {missing[next(iter(missing))]}"
        hint = f"{hint or 'Press Generate.'} ({why})"
    defaults = {
        "prompt_format": params.prompt_format,
        "positions": params.positions,
        "units": params.units,
        "top_p": params.top_p,
        "seed": params.seed,
        "swept_layers": _swept(model, params, vector),
        **_recommended(recommended, offered, names),
        "hint": hint,
        "variants": names,
        "probe": probe,
        "multilayer_span": params.multilayer_span,
        "max_perplexity_increase": run_budget(recommended, params),
        "budget_source": "the run's",
    }
    return (model, tokenizer, vector, scorer), {**defaults, **chosen}
