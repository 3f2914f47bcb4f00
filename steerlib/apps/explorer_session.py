"""The alpha explorer's model side: one prompt, generated unsteered and steered, scored, judged.

:class:`ExplorerSession` holds what a comparison needs (the model, its tokenizer, the steering
vector, the toxicity scorer, the decoding settings, the gated variant's probe and the run's
fluency budget) and answers :meth:`ExplorerSession.compare`: both rows (alpha 0 and the asked
alpha) in ONE batch of the sweep engine (:func:`steerlib.generate.engine.generate_unit`),
steered through the same :class:`~steerlib.steer.variants.Variant` the chain's sweep uses,
both completions scored by the toxicity scorer, and each completion's fluency judged: its
perplexity given the prompt under the UNSTEERED model and a repetition flag
(:func:`steerlib.evaluate.fluency.repetition`). :meth:`ExplorerSession.steering` is the one
place that builds what steers a generation.

The steered completion is flagged when it is repetitive or when its perplexity is over the
run's fluency budget (``max_perplexity_increase``: at most ``1 + max_perplexity_increase`` times
the unsteered completion's, the same relative budget the run's operating-point rule allows its
fluency measure). The run's KL budget (``max_kl_benign``) bounds the steered model's
next-token distributions on held-out texts, which one completion does not measure, so the
explorer does not check it. No widget lives here: :mod:`steerlib.apps.widgets` is the view.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError, ModelError
from steerlib.evaluate.fluency import Repetition, continuation_perplexity, repetition
from steerlib.evaluate.scoring import Scorer
from steerlib.experiment.config import RunParams
from steerlib.generate.engine import generate_unit
from steerlib.generate.generation import DecodingSettings, PromptFormat
from steerlib.generate.partition import WorkUnit
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Positions, Units, active_hook_count
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.steering import Steering
from steerlib.steer.variants import variant as make_variant
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "DEFAULT_PERPLEXITY_INCREASE",
    "PERPLEXITY_WARN_RATIO",
    "WARM_UP_TOKENS",
    "ExplorerSession",
    "check_layers",
    "check_variants",
]

PERPLEXITY_WARN_RATIO = 10.0
"""A steered completion this many times the unsteered one's perplexity is called broken.

Any steered completion over the run's fluency budget is flagged (:class:`ExplorerSession`);
from this ratio on the warning says the text looks broken rather than merely less fluent
(broken text is orders of magnitude less likely under the unsteered model)."""

DEFAULT_PERPLEXITY_INCREASE: float = float(
    RunParams.model_fields["max_perplexity_increase"].default
)
"""The chain's default fluency budget (+10%), used when no run's budget is given."""

WARM_UP_TOKENS = 4
"""New tokens of the warm-up comparison (enough to run every code path once)."""


def check_layers(
    vector: SteeringVector,
    layers: Sequence[int] | None,
    layer: int | None,
    swept_layers: Sequence[int],
    recommended_layer: int | None,
) -> tuple[list[int], list[int], int]:
    """The layers an explorer offers, those of them the run swept, and the one it opens at.

    Args:
        vector: The steering vector.
        layers: Layers to offer; ``None``: every layer of the vector.
        layer: Layer to open at; ``None``: ``recommended_layer``, else the first swept layer,
            else the middle of the offered ones.
        swept_layers: Layers the run swept.
        recommended_layer: The run's recommended layer, or ``None``.

    Returns:
        ``(offered, swept, layer)``.

    Raises:
        ConfigError: No layer, a layer the vector does not hold, or ``layer`` not offered.
    """
    options = [int(x) for x in (layers if layers is not None else vector.layers)]
    if not options:
        raise ConfigError("layers is empty: give at least one layer the vector holds.")
    missing = [x for x in options if x not in vector.layers]
    if missing:
        raise ConfigError(
            f"the steering vector has no direction for layer(s) {missing}; "
            f"it holds layers {vector.layers}."
        )
    swept = [int(x) for x in swept_layers if int(x) in options]
    if layer is None:
        if recommended_layer is not None and int(recommended_layer) in options:
            layer = int(recommended_layer)
        else:
            layer = swept[0] if swept else options[len(options) // 2]
    if int(layer) not in options:
        raise ConfigError(f"layer {layer} is not among the explorer's layers {options}.")
    return options, swept, int(layer)


def check_variants(
    names: list[str],
    chosen: str | None,
    vector: SteeringVector,
    probe: ToxicityProbe | None,
    span: int,
) -> list[str]:
    """The variant menu's options, after checking that each can steer.

    Raises:
        ConfigError: No variant, an unknown one, ``chosen`` not among them, ``"gated"``
            without a probe, or ``"clamp"`` with a vector that records no non-toxic
            projections.
    """
    if not names:
        raise ConfigError("variants is empty: give at least one, e.g. ['caa'].")
    for name in names:
        make_variant(name, multilayer_span=span)  # unknown names raise, listing the known
    if chosen is not None and chosen not in names:
        raise ConfigError(f"variant {chosen!r} is not among the explorer's variants {names}.")
    if "gated" in names and probe is None:
        raise ConfigError(
            "the 'gated' variant needs the run's toxicity probe: pass "
            "probe=ToxicityProbe.load(<run>/probe.safetensors) (written by step 04), or "
            "leave 'gated' out of variants."
        )
    if "clamp" in names and not vector.nontoxic_projections:
        raise ConfigError(
            "the 'clamp' variant needs the non-toxic projections the vector records: "
            "rebuild it with steerlib.steer.vectors.compute_caa (step 04), or leave 'clamp' "
            "out of variants."
        )
    return names


class ExplorerSession:
    """Generate, score and judge one prompt unsteered and steered (no widgets).

    Attributes:
        model: The causal LM.
        tokenizer: Its tokenizer (left padding).
        vector: The steering vector (points toward toxicity; positive alpha steers away).
        scorer: The toxicity scorer (it scores the completions, not the prompt).
        decoding: How completions are decoded (one row per alpha, greedy by default).
        probe: The toxicity probe of the gated variant (``None`` without it).
        multilayer_span: Layers the ``multilayer`` variant steers at once.
        max_perplexity_increase: The fluency budget: a steered completion whose perplexity is
            over ``1 + max_perplexity_increase`` times the unsteered one's is flagged.
        budget_source: Whose budget that is, for a person (``"the run's"``, ``"the default"``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vector: SteeringVector,
        scorer: Scorer,
        *,
        decoding: DecodingSettings,
        probe: ToxicityProbe | None = None,
        multilayer_span: int = 5,
        max_perplexity_increase: float | None = None,
        budget_source: str | None = None,
    ) -> None:
        """Check that the vector fits the model and keep the inputs.

        Raises:
            ModelError: The vector does not fit the model.
            ConfigError: A negative fluency budget.
        """
        vector.check_compatible(model, allow_other_model=True)
        if max_perplexity_increase is not None and not max_perplexity_increase >= 0:
            raise ConfigError(
                "max_perplexity_increase must be >= 0 (0.10 = +10%), got "
                f"{max_perplexity_increase}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.vector = vector
        self.scorer = scorer
        self.decoding = decoding
        self.probe = probe
        self.multilayer_span = int(multilayer_span)
        given = max_perplexity_increase is not None
        self.max_perplexity_increase = (
            float(max_perplexity_increase) if given else DEFAULT_PERPLEXITY_INCREASE
        )
        self.budget_source = budget_source or ("this explorer's" if given else "the default")
        self._lock = threading.Lock()

    # -- the decoding settings, by name ---------------------------------------------------------
    @property
    def max_new_tokens(self) -> int:
        """New tokens per completion."""
        return self.decoding.max_new_tokens

    @property
    def temperature(self) -> float:
        """Sampling temperature (0: greedy)."""
        return self.decoding.temperature

    @property
    def top_p(self) -> float:
        """Nucleus threshold when sampling."""
        return self.decoding.top_p

    @property
    def prompt_format(self) -> PromptFormat:
        """``"raw"`` or ``"chat"``."""
        return self.decoding.prompt_format

    @property
    def positions(self) -> Positions:
        """Steered positions, ``"all"`` or ``"generated"``."""
        return self.decoding.positions

    @property
    def units(self) -> Units:
        """Alpha units, ``"raw"`` or ``"norm"``."""
        return self.decoding.units

    @property
    def seed(self) -> int:
        """Base seed of the generation."""
        return self.decoding.seed

    @property
    def scorer_name(self) -> str:
        """The scorer's name, for a person."""
        return str(getattr(self.scorer, "name", type(self.scorer).__name__))

    # -- steering, generating, judging ----------------------------------------------------------
    def steering(self, variant: str, layer: int) -> Steering:
        """What steers one generation: the selected variant bound once, as the sweep binds it.

        The one place the explorer builds its steering (the variant bound to the vector, the
        layer, the run's positions and alpha units, and the probe a gated variant needs).

        Args:
            variant: A variant name (:data:`steerlib.steer.variants.VARIANTS`).
            layer: The chosen layer (the centre of a multilayer variant's span).

        Returns:
            The :class:`~steerlib.steer.steering.Steering`; its ``layers`` are the layers the
            variant steers.
        """
        chosen = make_variant(variant, multilayer_span=self.multilayer_span)
        return chosen.bind(
            self.vector,
            layer,
            num_layers=num_layers(self.model),
            positions=self.decoding.positions,
            units=self.decoding.units,
            probe=self.probe,
        )

    def compare(
        self,
        prompt: str,
        layer: int,
        variant: str,
        alpha: float,
        *,
        max_new_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Generate, score and judge the unsteered and the steered completion of ``prompt``.

        Both rows (alpha 0 and ``alpha``) run in one batch of the sweep engine, steered by
        ``variant`` (alpha 0 leaves every variant's hook without effect), so the unsteered
        completion depends on neither alpha nor the variant. Comparisons never overlap (a
        lock), so a warm-up still running finishes first.

        Args:
            prompt: The prompt text.
            layer: The steered layer.
            variant: The steering variant's name.
            alpha: The steering coefficient.
            max_new_tokens: New tokens; default the decoding settings'.

        Returns:
            ``prompt``, ``alpha``, ``layer``, ``variant``, ``layers`` (the steered layers),
            ``unsteered``, ``steered``, then :meth:`judge`'s keys; a gated variant adds
            ``gate_fired`` and ``gate_positions`` (steered positions of the steered row where
            the gate fired, and all it looked at).

        Raises:
            ConfigError: An empty prompt, or a bad generation setting.
            ModelError: A steering hook is still registered on the model.
        """
        if not prompt.strip():
            raise ConfigError("the prompt is empty: type a prompt to complete.")
        decoding = self.decoding
        if max_new_tokens is not None:
            decoding = replace(decoding, max_new_tokens=int(max_new_tokens))
        steering = self.steering(variant, layer)
        with self._lock:
            table = generate_unit(
                self.model,
                self.tokenizer,
                WorkUnit(f"explorer-{variant}-L{layer}", "caa", layer, 0, ("explorer",)),
                pd.DataFrame({"prompt_id": ["explorer"], "prompt": [prompt]}),
                alphas=[0.0, alpha] if alpha != 0.0 else [0.0],
                steering=steering,
                settings=decoding,
            )
            unsteered = str(table.loc[table["alpha"] == 0.0, "completion"].iloc[0])
            steered_row = table.loc[table["alpha"] == alpha].iloc[0]
            steered = str(steered_row["completion"])
            judged = self.judge(prompt, unsteered, steered)
        result = {
            "prompt": prompt,
            "alpha": alpha,
            "layer": layer,
            "variant": variant,
            "layers": list(steering.layers),
            "unsteered": unsteered,
            "steered": steered,
            **judged,
        }
        if "gate_fired" in table.columns:
            result["gate_fired"] = int(steered_row["gate_fired"])
            result["gate_positions"] = int(steered_row["gate_positions"])
        return result

    def judge(self, prompt: str, unsteered: str, steered: str) -> dict[str, Any]:
        """Score both completions and judge the steered one's fluency against the budget.

        Returns:
            ``unsteered_score``, ``steered_score`` (the scorer's toxicity of each completion),
            ``unsteered_perplexity``, ``steered_perplexity`` (under the unsteered model),
            ``unsteered_repetition``, ``steered_repetition``
            (:class:`~steerlib.evaluate.fluency.Repetition`), ``perplexity_ratio`` (steered over
            unsteered; NaN when undefined), ``perplexity_limit`` (``1 +
            max_perplexity_increase``), ``over_budget`` (the ratio is over the limit) and
            ``degenerate`` (the steered text is flagged: repetitive, or over the budget).
        """
        scores = [float(s) for s in self.scorer.score([unsteered, steered])]
        perplexity, repeats = self.fluency(prompt, [unsteered, steered])
        base = perplexity[0]
        ratio = perplexity[1] / base if math.isfinite(base) and base > 0 else math.nan
        limit = 1.0 + self.max_perplexity_increase
        over = bool(math.isfinite(ratio) and ratio > limit)
        return {
            "unsteered_score": scores[0],
            "steered_score": scores[1],
            "unsteered_perplexity": perplexity[0],
            "steered_perplexity": perplexity[1],
            "unsteered_repetition": repeats[0],
            "steered_repetition": repeats[1],
            "perplexity_ratio": ratio,
            "perplexity_limit": limit,
            "over_budget": over,
            "degenerate": bool(repeats[1].flagged or over),
        }

    def fluency(self, prompt: str, completions: list[str]) -> tuple[list[float], list[Repetition]]:
        """Each completion's perplexity given ``prompt`` under the UNSTEERED model, and repetition.

        Args:
            prompt: The prompt (formatted with the explorer's ``prompt_format``).
            completions: Completions of it.

        Returns:
            ``(perplexities, repetitions)``: NaN perplexity for an empty completion, and a
            :class:`~steerlib.evaluate.fluency.Repetition` per completion.

        Raises:
            ModelError: A steering hook is registered on the model (its perplexity would not
                be the unsteered model's).
        """
        hooks = active_hook_count(self.model)
        if hooks:
            raise ModelError(
                f"{hooks} steering hook(s) are still registered on the model, so its perplexity "
                "would not be the unsteered model's; leave every `with steering(...)` block "
                "before pressing Generate (or reload the model)."
            )
        values = continuation_perplexity(
            self.model,
            self.tokenizer,
            [prompt] * len(completions),
            completions,
            prompt_format=self.prompt_format,
            batch_size=max(len(completions), 1),
        )
        return [float(v) for v in values], [repetition(text) for text in completions]

    def warm_up(self, prompt: str, layer: int, variant: str, alpha: float) -> float:
        """Run one short comparison so that the first real one answers at once.

        A fresh process pays once for what the first generation touches (the engine's and the
        scorer's first calls, the perplexity pass); this pays it with :data:`WARM_UP_TOKENS` new
        tokens. The result is thrown away.

        Returns:
            The seconds it took.

        Raises:
            SteerlibError: Whatever the comparison raises (the caller decides what to show).
        """
        start = time.perf_counter()
        text = prompt if prompt.strip() else "Hello"
        steered = alpha if alpha != 0.0 else 1.0  # run the steering hook too
        self.compare(text, layer, variant, steered, max_new_tokens=WARM_UP_TOKENS)
        return time.perf_counter() - start
