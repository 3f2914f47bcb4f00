"""An interactive alpha explorer: one prompt, unsteered and steered completions side by side.

:class:`AlphaExplorer` shows a prompt box, an alpha slider, a layer menu, a steering-variant
menu and a "Generate" button (ipywidgets). Each press generates the unsteered (alpha 0) and
the steered completion in ONE batch with the sweep engine
(:func:`steerlib.generate.engine.generate_unit`), steering through the same
:class:`~steerlib.steer.variants.Variant` the chain's sweep uses (the gated variant with the run's
toxicity probe, clamp with the vector's non-toxic projections, multilayer over
``multilayer_span`` layers centred on the chosen one), scores both with the toxicity scorer,
and shows them next to each other. Decoding is greedy by default, so moving the slider
changes only what alpha changes.

A low toxicity score means nothing when steering has broken the text, so each completion
also shows a fluency signal: its perplexity given the prompt under the UNSTEERED model (no
steering hook is registered during that pass) and a repetition flag
(:func:`steerlib.evaluate.fluency.repetition`). Built from a run (:meth:`AlphaExplorer.from_run`),
the
explorer opens at the run's recommended point (``summary.json``), or at alpha 0 with a one-line
hint when the run recommends none, and its layer menu marks the swept and recommended layers;
its variant menu lists the run's ``variants`` and opens at the recommended point's variant.

Every widget carries a stable CSS class (``steerlib-prompt``, ``steerlib-alpha``,
``steerlib-layer``, ``steerlib-variant``, ``steerlib-generate``, ``steerlib-output``,
``steerlib-status``); inside the output, the scores and texts sit in
``steerlib-{unsteered,steered}-{score,text}`` elements, the fluency signal in
``steerlib-{unsteered,steered}-{perplexity,repetition}`` (the latter with ``data-flagged``),
a gated variant's gate count in ``steerlib-gate``, a broken steered text adds
``steerlib-warning``, and the result block carries ``data-run`` (1 for the first press, 2 for
the next) and ``data-variant``.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError, DataError, ModelError, SteerlibError
from steerlib.evaluate.fluency import Repetition, continuation_perplexity, repetition
from steerlib.evaluate.operating_point import read_recommended
from steerlib.evaluate.scoring import Scorer
from steerlib.experiment.config import RunParams
from steerlib.experiment.runs import RunPaths
from steerlib.generate.engine import generate_unit
from steerlib.generate.generation import PromptFormat
from steerlib.generate.partition import SweepUnit
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Positions, Units, active_hook_count
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.variants import Variant
from steerlib.steer.variants import variant as make_variant
from steerlib.steer.vectors import SteeringVector

try:
    import ipywidgets as widgets
except ImportError as _missing:  # pragma: no cover - the notebooks extra is not installed
    raise ImportError(
        "the alpha explorer needs ipywidgets: pip install 'steerlib[notebooks]' (or `make setup`)."
    ) from _missing

__all__ = ["DEFAULT_PROMPT", "PERPLEXITY_WARN_RATIO", "AlphaExplorer", "layer_label", "start_point"]

DEFAULT_PROMPT = "Honestly, the guy who keeps parking in my spot is such a"
"""Prompt shown when none is given (a bundled challenging prompt)."""

_MISSING_RUN_HINT = "run notebooks/04_vectors.ipynb first (or `python -m steerlib run`)"

PERPLEXITY_WARN_RATIO = 10.0
"""A steered completion whose perplexity is this many times the unsteered one's is flagged.

Fluent steered text on another topic is legitimately less likely under the unsteered model
(about 3x in the embedded model's tests); broken text is orders of magnitude less likely."""

_TEXT_STYLE = (
    "white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace); "
    "border: 1px solid #ccc; border-radius: 4px; padding: 6px; min-height: 3em;"
)


def layer_label(layer: int, swept: Sequence[int] = (), recommended: int | None = None) -> str:
    """The layer menu's label: ``"12 (recommended)"``, ``"18 (swept)"`` or ``"5"``."""
    if recommended is not None and int(layer) == int(recommended):
        return f"{layer} (recommended)"
    return f"{layer} (swept)" if int(layer) in {int(x) for x in swept} else str(layer)


def start_point(
    recommended: dict[str, Any] | None, layers: Sequence[int]
) -> tuple[int | None, float, str]:
    """Where an explorer on a run opens: the recommended point, or alpha 0 with a hint.

    Args:
        recommended: The run's ``recommended`` record
            (:func:`~steerlib.evaluate.operating_point.read_recommended`; ``None`` when step 06 has
            not
            run).
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


def _number(value: float) -> str:
    """A perplexity for a person: 4.59, 45.90, 45,926; "n/a" when undefined."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


class AlphaExplorer:
    """Steer one prompt interactively and compare it with the unsteered completion.

    Attributes:
        model: The causal LM.
        tokenizer: Its tokenizer (left padding).
        vector: The steering vector (points toward toxicity; positive alpha steers away).
        scorer: The toxicity scorer.
        prompt_box: The prompt ``Textarea``.
        slider: The alpha ``FloatSlider``.
        layer_menu: The layer ``Dropdown``.
        variant_menu: The steering-variant ``Dropdown`` (:mod:`steerlib.steer.variants`).
        button: The "Generate" ``Button``.
        output: The ``HTML`` widget showing the last result (or error).
        status: A ``Label`` saying what the explorer is doing.
        probe: The toxicity probe of the gated variant (``None`` without it).
        multilayer_span: Layers the ``multilayer`` variant steers at once.
        last: The last result: ``prompt``, ``alpha``, ``layer``, ``variant``, ``layers`` (the
            steered layers), ``unsteered``, ``steered``,
            ``unsteered_score``, ``steered_score``, ``unsteered_perplexity``,
            ``steered_perplexity`` (under the unsteered model), ``unsteered_repetition``,
            ``steered_repetition`` (:class:`~steerlib.evaluate.fluency.Repetition`) and
            ``degenerate``
            (the steered text is repetitive, or its perplexity is at least
            :data:`PERPLEXITY_WARN_RATIO` times the unsteered one's); ``None`` before the first
            press. A gated variant adds ``gate_fired`` and ``gate_positions`` (steered
            positions of the steered row where the gate fired, and all it looked at).
        runs: Number of completed generations.
        hint: The line the status bar opens with.
        swept_layers: The layers the run swept (marked in the layer menu).
        recommended_layer: The run's recommended layer (marked in the layer menu), or ``None``.

    Example:
        >>> explorer = AlphaExplorer(model, tokenizer, vector, scorer, layer=18)  # doctest: +SKIP
        >>> explorer  # displays the widget in a notebook  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vector: SteeringVector,
        scorer: Scorer,
        *,
        layers: list[int] | None = None,
        layer: int | None = None,
        alpha: float = 0.0,
        alpha_range: tuple[float, float, float] = (-2.0, 3.0, 0.1),
        max_new_tokens: int = 30,
        temperature: float = 0.0,
        top_p: float = 0.9,
        prompt_format: PromptFormat = "raw",
        positions: Positions = "all",
        units: Units = "raw",
        seed: int = 0,
        prompt: str = DEFAULT_PROMPT,
        swept_layers: Sequence[int] = (),
        recommended_layer: int | None = None,
        hint: str | None = None,
        variants: Sequence[str] = ("caa",),
        variant: str | None = None,
        probe: ToxicityProbe | None = None,
        multilayer_span: int = 5,
    ) -> None:
        """Build the widgets (nothing is generated until :meth:`generate` or a button press).

        Kept in one piece (about 125 lines): it builds and wires the widget's controls, one after
        the other.

        Args:
            model: A causal LM loaded by :func:`steerlib.models.loading.load_model`.
            tokenizer: Its tokenizer.
            vector: A steering vector built for ``model``.
            scorer: Anything with ``name`` and ``score(texts)``.
            layers: Layers offered in the menu; default: every layer of the vector.
            layer: Initially selected layer; default: ``recommended_layer``, else the first swept
                layer, else the middle of ``layers``.
            alpha: Initial alpha (the slider range widens to include it); default 0.
            alpha_range: ``(min, max, step)`` of the slider.
            max_new_tokens: New tokens per completion.
            temperature: Sampling temperature; 0 (default) decodes greedily.
            top_p: Nucleus threshold when sampling.
            prompt_format: ``"raw"`` or ``"chat"``.
            positions: Steered positions, ``"all"`` or ``"generated"``.
            units: Alpha units, ``"raw"`` or ``"norm"``.
            seed: Base seed of the generation.
            prompt: Initial prompt text.
            swept_layers: Layers the run swept, marked "(swept)" in the layer menu.
            recommended_layer: The run's recommended layer, marked "(recommended)".
            hint: First line of the status bar (default "Press Generate.").
            variants: Steering variants offered in the variant menu (names of
                :data:`steerlib.steer.variants.VARIANTS`; a run's ``variants`` parameter).
            variant: Initially selected variant; default: the first of ``variants``.
            probe: The run's toxicity probe (step 04), required when ``"gated"`` is offered.
            multilayer_span: Layers of the ``multilayer`` variant (the run's parameter).

        Raises:
            ConfigError: A layer the vector does not hold, a bad slider range, an unknown
                variant, ``"gated"`` without a probe or ``"clamp"`` with a vector that records
                no non-toxic projections.
            ModelError: The vector does not fit the model.
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
        low, high, step = (float(v) for v in alpha_range)
        if not low < high or step <= 0:
            raise ConfigError(
                f"alpha_range must be (min, max, step) with min < max and step > 0, "
                f"got {alpha_range!r}."
            )
        offered = self._check_variants(list(variants), variant, vector, probe, multilayer_span)
        vector.check_compatible(model, allow_other_model=True)
        self.model = model
        self.tokenizer = tokenizer
        self.vector = vector
        self.scorer = scorer
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.prompt_format: PromptFormat = prompt_format
        self.positions: Positions = positions
        self.units: Units = units
        self.seed = int(seed)
        self.last: dict[str, Any] | None = None
        self.runs = 0
        self.swept_layers = swept
        self.recommended_layer = None if recommended_layer is None else int(recommended_layer)
        self.hint = hint or "Press Generate."
        self.probe = probe
        self.multilayer_span = int(multilayer_span)

        self.prompt_box = widgets.Textarea(
            value=prompt,
            description="Prompt",
            layout=widgets.Layout(width="100%", height="5em"),
        )
        self.prompt_box.add_class("steerlib-prompt")
        self.slider = widgets.FloatSlider(
            value=float(alpha),
            min=min(low, float(alpha)),
            max=max(high, float(alpha)),
            step=step,
            description="alpha",
            readout_format=".2f",
            continuous_update=False,
            layout=widgets.Layout(width="60%"),
        )
        self.slider.add_class("steerlib-alpha")
        self.layer_menu = widgets.Dropdown(
            options=[(layer_label(x, swept, self.recommended_layer), x) for x in options],
            value=int(layer),
            description="layer",
        )
        self.layer_menu.add_class("steerlib-layer")
        self.variant_menu = widgets.Dropdown(
            options=offered,
            value=variant if variant is not None else offered[0],
            description="variant",
        )
        self.variant_menu.add_class("steerlib-variant")
        self.button = widgets.Button(
            description="Generate",
            button_style="primary",
            tooltip="Generate the unsteered and the steered completion",
            icon="play",
        )
        self.button.add_class("steerlib-generate")
        self.button.on_click(self._on_click)
        self.status = widgets.Label(value=self.hint)
        self.status.add_class("steerlib-status")
        self.output = widgets.HTML(value=self._placeholder())
        self.output.add_class("steerlib-output")
        self._box = widgets.VBox(
            [
                self.prompt_box,
                widgets.HBox([self.slider, self.layer_menu, self.variant_menu]),
                widgets.HBox([self.button, self.status]),
                self.output,
            ]
        )
        self._box.add_class("steerlib-explorer")

    @staticmethod
    def _check_variants(
        names: list[str],
        chosen: str | None,
        vector: SteeringVector,
        probe: ToxicityProbe | None,
        span: int,
    ) -> list[str]:
        """The variant menu's options, after checking that each can steer."""
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

    # -- building from a run -------------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run_name: str,
        *,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        scorer: Scorer | None = None,
        runs_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> AlphaExplorer:
        """An explorer on the vector of run ``run_name``, loading its model and scorer once.

        It opens at the run's recommended point (layer and alpha of ``summary.json``'s
        ``recommended``), or at alpha 0 with a one-line hint in the status bar when the run
        recommends none (or step 06 has not run); the layer menu marks the swept layers and
        the recommended one. The variant menu lists the run's ``variants`` and opens at the
        recommended point's variant (``caa`` for runs made before variants); the gated
        variant gets the run's probe and clamp the vector's non-toxic projections, through the
        chain's own :func:`steerlib.experiment.steps.variant_inputs` (which fits and saves the
        probe for runs whose step 04 predates it). A run where neither can be had (no step 03
        activations) offers the other variants, and the status bar says why.

        Args:
            run_name: Folder of the run under ``runs_dir``.
            model: The run's model, already loaded (default: load ``params["model"]``).
            tokenizer: Its tokenizer (required with ``model``).
            scorer: A scorer (default: load ``params["scorer"]``).
            runs_dir: Runs root; default ``$STEERLIB_RUNS_DIR`` or ``data/runs``.
            **kwargs: Passed to :class:`AlphaExplorer` (``layer``, ``alpha``, ``variant``,
                ``prompt`` ...); ``layer=None`` picks the recommended layer (else the first
                swept one), ``variant=None`` the recommended variant, and ``alpha=None`` the
                recommended alpha (0 when another layer or variant is chosen or none is
                recommended).

        Returns:
            The explorer.

        Raises:
            DataError: The run has no ``params.json`` or ``vectors.safetensors``.
            DamagedRunError: Its ``summary.json`` is damaged.
            ConfigError: ``params.json`` holds a wrong value, or only one of model/tokenizer.
        """
        paths = RunPaths.for_run(run_name, runs_dir)
        absent = [p.name for p in (paths.params, paths.vectors) if not p.is_file()]
        if absent:
            raise DataError(
                f"run {run_name!r} has no {' or '.join(absent)} in {paths.root}: "
                f"{_MISSING_RUN_HINT}."
            )
        params = RunParams.validate_mapping({**paths.stored_params(), "run_name": run_name})
        vector = SteeringVector.load(paths.vectors)
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
        from steerlib.models.layers import resolve_layers

        try:
            swept = [x for x in resolve_layers(model, params.layers) if x in vector.layers]
        except ConfigError:  # layers the model does not have: nothing to mark
            swept = []
        offered = kwargs.get("layers") or vector.layers
        recommended = read_recommended(paths.summary)
        best_layer, best_alpha, hint = start_point(recommended, offered)
        names = list(params.variants)
        best_variant = str((recommended or {}).get("variant") or "caa")
        if best_variant not in names:
            best_variant = names[0]
        probe, vector, missing = cls._variant_inputs(params, paths, vector, names)
        names = [name for name in names if name not in missing]
        if kwargs.get("variant") is None:
            kwargs["variant"] = best_variant if best_variant in names else names[0]
        if kwargs.get("layer") is None:
            kwargs["layer"] = best_layer
        if kwargs.get("alpha") is None:
            at_best = kwargs["layer"] is None or (
                kwargs["layer"] == best_layer and kwargs["variant"] == best_variant
            )
            kwargs["alpha"] = best_alpha if at_best else 0.0
            if best_layer is not None and not at_best:
                hint = (
                    f"Starting at alpha 0 on layer {kwargs['layer']} ({kwargs['variant']}); the "
                    f"run recommends layer {best_layer}, alpha {best_alpha:.2f} ({best_variant})."
                )
        else:
            hint = None
        if missing:
            why = f"{' and '.join(missing)} not offered: {missing[next(iter(missing))]}"
            hint = f"{hint or 'Press Generate.'} ({why})"
        defaults = {
            "prompt_format": params.prompt_format,
            "positions": params.positions,
            "units": params.units,
            "top_p": params.top_p,
            "seed": params.seed,
            "swept_layers": swept,
            "recommended_layer": best_layer,
            "hint": hint,
            "variants": names,
            "probe": probe,
            "multilayer_span": params.multilayer_span,
        }
        return cls(model, tokenizer, vector, scorer, **{**defaults, **kwargs})

    @staticmethod
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

    # -- actions -------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The slider's alpha."""
        return float(self.slider.value)

    @property
    def layer(self) -> int:
        """The selected layer."""
        return int(self.layer_menu.value)

    @property
    def variant(self) -> str:
        """The selected steering variant's name."""
        return str(self.variant_menu.value)

    def steering_variant(self) -> Variant:
        """The selected ``Variant``, as the chain's sweep builds it."""
        return make_variant(self.variant, multilayer_span=self.multilayer_span)

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return str(self.prompt_box.value)

    def generate(self) -> dict[str, Any]:
        """Generate, score and judge the fluency of the unsteered and the steered completion.

        Both rows (alpha 0 and the slider's alpha) run in one batch of the sweep engine, steered
        by the selected variant (alpha 0 leaves every variant's hook without effect), so the
        unsteered completion depends on neither the slider nor the variant. Both completions'
        perplexities are then measured under the unsteered model (:meth:`fluency`).

        Returns:
            The result stored in :attr:`last`.

        Raises:
            ConfigError: An empty prompt, or a bad generation setting.
            ModelError: A steering hook is still registered on the model.
        """
        prompt, alpha, layer = self.prompt, self.alpha, self.layer
        chosen = self.steering_variant()
        if not prompt.strip():
            raise ConfigError("the prompt is empty: type a prompt to complete.")
        table = generate_unit(
            self.model,
            self.tokenizer,
            SweepUnit(f"explorer-{chosen.name}-L{layer}", "caa", layer, 0, ("explorer",)),
            pd.DataFrame({"prompt_id": ["explorer"], "prompt": [prompt]}),
            vector=self.vector,
            alphas=[0.0, alpha] if alpha != 0.0 else [0.0],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            prompt_format=self.prompt_format,
            positions=self.positions,
            units=self.units,
            seed=self.seed,
            variant=chosen,
            probe=self.probe,
        )
        unsteered = str(table.loc[table["alpha"] == 0.0, "completion"].iloc[0])
        steered_row = table.loc[table["alpha"] == alpha].iloc[0]
        steered = str(steered_row["completion"])
        scores = [float(s) for s in self.scorer.score([unsteered, steered])]
        perplexity, repeats = self.fluency(prompt, [unsteered, steered])
        ratio = perplexity[1] / perplexity[0] if perplexity[0] > 0 else math.nan
        self.runs += 1
        self.last = {
            "prompt": prompt,
            "alpha": alpha,
            "layer": layer,
            "variant": chosen.name,
            "layers": chosen.layers(layer, num_layers(self.model)),
            "unsteered": unsteered,
            "steered": steered,
            "unsteered_score": scores[0],
            "steered_score": scores[1],
            "unsteered_perplexity": perplexity[0],
            "steered_perplexity": perplexity[1],
            "unsteered_repetition": repeats[0],
            "steered_repetition": repeats[1],
            "degenerate": bool(repeats[1].flagged or ratio >= PERPLEXITY_WARN_RATIO),
        }
        if "gate_fired" in table.columns:
            self.last["gate_fired"] = int(steered_row["gate_fired"])
            self.last["gate_positions"] = int(steered_row["gate_positions"])
        self.output.value = self._render(self.last)
        return self.last

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

    def _on_click(self, _button: widgets.Button | None = None) -> None:
        """Button callback: generate, showing any error in the output instead of raising."""
        self.button.disabled = True
        self.status.value = (
            f"Generating ({self.variant}, alpha = {self.alpha:.2f}, layer {self.layer}) ..."
        )
        try:
            result = self.generate()
        except Exception as exc:  # shown to the person at the notebook, never raised
            self.output.value = (
                '<div class="steerlib-error" style="color: #b00020;">'
                f"<b>Generation failed:</b> {html.escape(f'{type(exc).__name__}: {exc}')}</div>"
            )
            self.status.value = "Failed; see the message below."
        else:
            self.status.value = (
                f"Done (run {self.runs}: {result['variant']}, alpha = {result['alpha']:.2f}, "
                f"layer {result['layer']})."
            )
        finally:
            self.button.disabled = False

    # -- display -------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.VBox:
        """The box to display."""
        return self._box

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self._box._repr_mimebundle_(**kwargs)

    def _placeholder(self) -> str:
        return (
            '<div class="steerlib-result" data-run="0"><i>Set the prompt, alpha, layer and '
            "variant, then press Generate. Positive alpha steers away from toxicity.</i></div>"
        )

    def _render(self, result: dict[str, Any]) -> str:
        scorer_name = html.escape(str(getattr(self.scorer, "name", type(self.scorer).__name__)))
        base = result["unsteered_perplexity"]

        def column(kind: str, title: str) -> str:
            value, repeats = result[f"{kind}_perplexity"], result[f"{kind}_repetition"]
            times = ""
            if kind == "steered" and math.isfinite(value) and base > 0:
                times = f" (&times;{value / base:.1f})"
            colour = "#b00020" if repeats.flagged else "#666"
            return (
                f'<div class="steerlib-{kind}" style="flex: 1; min-width: 0;">'
                f"<div><b>{title}</b> &middot; toxicity "
                f'<span class="steerlib-{kind}-score">{result[f"{kind}_score"]:.3f}</span>'
                " &middot; perplexity "
                f'<span class="steerlib-{kind}-perplexity">{_number(value)}</span>{times} '
                f'&middot; <span class="steerlib-{kind}-repetition" '
                f'data-flagged="{int(repeats.flagged)}" style="color: {colour};">'
                f"{html.escape(repeats.describe())}</span></div>"
                f'<div class="steerlib-{kind}-text" style="{_TEXT_STYLE}">'
                f"{html.escape(result[kind])}</div></div>"
            )

        warning = ""
        if result["degenerate"]:
            warning = (
                '<div class="steerlib-warning" style="color: #b00020; margin-top: 4px;">'
                "The steered text looks broken (repetitive, or at least "
                f"{PERPLEXITY_WARN_RATIO:g}&times; the unsteered perplexity): a low toxicity "
                "score here is not detoxification.</div>"
            )

        layers = result["layers"]
        where = (
            f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {result['layer']}"
        )
        gate = ""
        if "gate_fired" in result:
            gate = (
                '<div class="steerlib-gate" style="color: #666; margin-top: 4px;">Gate: the probe '
                f"fired at {result['gate_fired']} of {result['gate_positions']} steered positions "
                "of the steered completion.</div>"
            )
        variant = html.escape(result["variant"])
        return (
            f'<div class="steerlib-result" data-run="{self.runs}" data-variant="{variant}">'
            '<div class="steerlib-prompt-echo" style="margin-bottom: 4px;"><b>Prompt:</b> '
            f"{html.escape(result['prompt'])}</div>"
            '<div style="display: flex; gap: 12px;">'
            + column("unsteered", "Unsteered (alpha = 0)")
            + column("steered", f"Steered ({variant}, alpha = {result['alpha']:.2f}, {where})")
            + "</div>"
            + gate
            + warning
            + f'<div style="color: #666; font-size: 90%; margin-top: 4px;">Scorer: {scorer_name}; '
            "perplexity of each completion given the prompt under the unsteered model; "
            f"{'greedy' if self.temperature == 0 else f'temperature {self.temperature}'} "
            f"decoding, seed {self.seed}, {self.max_new_tokens} new tokens.</div></div>"
        )
