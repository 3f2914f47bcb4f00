"""An interactive alpha explorer: one prompt, unsteered and steered completions side by side.

:class:`AlphaExplorer` shows a prompt box, an alpha slider, a layer menu, a steering-variant
menu, a "Generate" button and, on a run that recommends a point, a "Recommended" button
(ipywidgets). Each press generates the unsteered (alpha 0) and the steered completion in ONE
batch with the sweep engine, scores both with the toxicity scorer and judges the steered one's
fluency against the run's budget; that model side is
:class:`~steerlib.apps.explorer_session.ExplorerSession`, which the explorer extends with its
controls. Decoding is greedy by default, so moving the slider changes only what alpha changes.

The explorer answers at once: a fresh kernel's first generation is slow (the engine's, the
scorer's and the perplexity pass's first calls), so the explorer warms the model up in a
background thread when it is built; the button reads "Warming up…" until it is ready.
Built from a run (:meth:`AlphaExplorer.from_run`, through :mod:`steerlib.apps.explorer_run`),
it opens at the run's recommended point (``summary.json``), or at alpha 0 with a one-line hint
when the run recommends none; its layer menu marks the swept and recommended layers, its
variant menu lists the run's ``variants``, the slider's step puts the recommended alpha on its
grid, and the steered text is flagged when it is over the run's fluency budget.

Every widget carries a stable CSS class (``steerlib-prompt``, ``steerlib-alpha``,
``steerlib-layer``, ``steerlib-variant``, ``steerlib-generate``, ``steerlib-recommended``,
``steerlib-output``, ``steerlib-status``); the output's classes are listed in
:mod:`steerlib.apps.explorer_page`.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.apps import explorer_controls as controls
from steerlib.apps.explorer_controls import FINE_ALPHA_STEP, alpha_step, layer_label
from steerlib.apps.explorer_page import placeholder, render_result, warning
from steerlib.apps.explorer_run import explorer_arguments, start_point
from steerlib.apps.explorer_session import (
    PERPLEXITY_WARN_RATIO,
    ExplorerSession,
    check_layers,
    check_variants,
)
from steerlib.errors import ConfigError
from steerlib.evaluate.scoring import Scorer
from steerlib.generate.generation import DecodingSettings, PromptFormat
from steerlib.steer.hooks import Positions, Units
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

__all__ = [
    "DEFAULT_PROMPT",
    "FINE_ALPHA_STEP",
    "PERPLEXITY_WARN_RATIO",
    "AlphaExplorer",
    "alpha_step",
    "layer_label",
    "start_point",
]

DEFAULT_PROMPT = "Honestly, the guy who keeps parking in my spot is such a"
"""Prompt shown when none is given (a bundled challenging prompt)."""


class AlphaExplorer(ExplorerSession):
    """Steer one prompt interactively and compare it with the unsteered completion.

    Attributes (besides :class:`~steerlib.apps.explorer_session.ExplorerSession`'s):
        prompt_box: The prompt ``Textarea``.
        slider: The alpha ``FloatSlider``.
        layer_menu: The layer ``Dropdown``.
        variant_menu: The steering-variant ``Dropdown`` (:mod:`steerlib.steer.variants`).
        button: The "Generate" ``Button`` ("Warming up…" and disabled while warming up).
        recommended_button: Back to the run's recommended point (hidden without one).
        output: The ``HTML`` widget showing the last result (or error).
        status: A ``Label`` saying what the explorer is doing.
        last: The last comparison
            (:meth:`~steerlib.apps.explorer_session.ExplorerSession.compare`); ``None`` before
            the first press.
        runs: Number of completed generations.
        hint: The line the status bar opens with.
        swept_layers: The layers the run swept (marked in the layer menu).
        recommended_layer: The run's recommended layer (marked in the layer menu), or ``None``.
        recommended_alpha: The run's recommended alpha, or ``None``.
        recommended_variant: The run's recommended variant, or ``None``.
        warm_up_seconds: How long the warm-up took (``None`` until it is done).
        warm_up_error: What the warm-up raised (``None``: nothing; Generate shows it again).

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
        recommended_alpha: float | None = None,
        recommended_variant: str | None = None,
        hint: str | None = None,
        variants: Sequence[str] = ("caa",),
        variant: str | None = None,
        probe: ToxicityProbe | None = None,
        multilayer_span: int = 5,
        max_perplexity_increase: float | None = None,
        budget_source: str | None = None,
        warm_up: bool = True,
    ) -> None:
        """Build the widgets, and start warming the model up (nothing is shown until a press).

        Args:
            model: A causal LM loaded by :func:`steerlib.models.loading.load_model`.
            tokenizer: Its tokenizer.
            vector: A steering vector built for ``model``.
            scorer: Anything with ``name`` and ``score(texts)``.
            layers: Layers offered in the menu; default: every layer of the vector.
            layer: Initially selected layer; default: ``recommended_layer``, else the first swept
                layer, else the middle of ``layers``.
            alpha: Initial alpha (the slider range widens to include it); default 0.
            alpha_range: ``(min, max, step)`` of the slider; the step becomes
                :data:`FINE_ALPHA_STEP` when ``alpha`` or ``recommended_alpha`` is off its grid.
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
            recommended_alpha: The run's recommended alpha: with ``recommended_layer`` and
                ``recommended_variant``, the "Recommended" button returns to that point.
            recommended_variant: The run's recommended variant.
            hint: First line of the status bar (default "Press Generate.").
            variants: Steering variants offered in the variant menu (names of
                :data:`steerlib.steer.variants.VARIANTS`; a run's ``variants`` parameter).
            variant: Initially selected variant; default: the first of ``variants``.
            probe: The run's toxicity probe (step 04), required when ``"gated"`` is offered.
            multilayer_span: Layers of the ``multilayer`` variant (the run's parameter).
            max_perplexity_increase: The fluency budget a steered text is flagged over (the
                run's parameter; default the chain's default, 0.10).
            budget_source: Whose budget that is, for the warning (``"the run's"``).
            warm_up: Warm the model up in a background thread now (default), so the first
                press answers as fast as the next ones.

        Raises:
            ConfigError: A layer the vector does not hold, a bad slider range or generation
                setting, an unknown variant, ``"gated"`` without a probe or ``"clamp"`` with a
                vector that records no non-toxic projections.
            ModelError: The vector does not fit the model.
        """
        options, swept, layer = check_layers(vector, layers, layer, swept_layers, recommended_layer)
        low, high, step = (float(v) for v in alpha_range)
        if not low < high or step <= 0:
            raise ConfigError(
                f"alpha_range must be (min, max, step) with min < max and step > 0, "
                f"got {alpha_range!r}."
            )
        offered = check_variants(list(variants), variant, vector, probe, multilayer_span)
        decoding = DecodingSettings(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            prompt_format=prompt_format,
            positions=positions,
            units=units,
            seed=int(seed),
        )
        super().__init__(
            model,
            tokenizer,
            vector,
            scorer,
            decoding=decoding,
            probe=probe,
            multilayer_span=multilayer_span,
            max_perplexity_increase=max_perplexity_increase,
            budget_source=budget_source,
        )
        self.last: dict[str, Any] | None = None
        self.runs = 0
        self.swept_layers = swept
        self.recommended_layer = None if recommended_layer is None else int(recommended_layer)
        self.recommended_alpha = None if recommended_alpha is None else float(recommended_alpha)
        self.recommended_variant = recommended_variant
        self.hint = hint or "Press Generate."
        self.warm_up_seconds: float | None = None
        self.warm_up_error: str | None = None
        self._ready = threading.Event()
        self._busy = False
        self._build(prompt, options, layer, offered, variant, alpha, (low, high, step))
        if warm_up:
            self._start_warm_up()
        else:
            self._ready.set()

    def _build(
        self,
        prompt: str,
        options: list[int],
        layer: int,
        offered: list[str],
        variant: str | None,
        alpha: float,
        slider_range: tuple[float, float, float],
    ) -> None:
        """Build the controls (:mod:`steerlib.apps.explorer_controls`) and wire the buttons."""
        self.prompt_box = controls.prompt_box(prompt)
        self.slider = controls.alpha_slider(alpha, slider_range, self.recommended_alpha)
        self.layer_menu = controls.layer_menu(
            options, layer, self.swept_layers, self.recommended_layer
        )
        self.variant_menu = controls.variant_menu(offered, variant)
        self.button = controls.generate_button()
        self.button.on_click(self._on_click)
        reachable = (
            self.recommended_alpha is not None
            and self.recommended_layer in options
            and self.recommended_variant in offered
        )
        self.recommended_button = controls.recommended_button(self.recommended_alpha, reachable)
        self.recommended_button.on_click(lambda _button: self.go_to_recommended())
        self.status = controls.status_bar(self.hint)
        self.output = controls.output(placeholder())
        for control in (self.slider, self.layer_menu, self.variant_menu):
            control.observe(self._on_setting, names="value")
        self._box = controls.layout(
            [self.prompt_box, self.slider, self.layer_menu, self.variant_menu],
            [self.button, self.recommended_button, self.status],
            self.output,
        )

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
        the recommended one, and the "Recommended" button returns to that point. The variant
        menu lists the run's ``variants`` and opens at the recommended point's variant (``caa``
        for runs made before variants); the gated variant gets the run's probe and clamp the
        vector's non-toxic projections, through the chain's own
        :func:`steerlib.experiment.steps.variant_inputs` (which fits and saves the probe for
        runs whose step 04 predates it). A run where neither can be had (no step 03
        activations) offers the other variants, and the status bar says why. A steered text is
        flagged over the run's fluency budget (:func:`~steerlib.apps.explorer_run.run_budget`).

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
        args, options = explorer_arguments(
            run_name, model=model, tokenizer=tokenizer, scorer=scorer, runs_dir=runs_dir, **kwargs
        )
        return cls(*args, **options)

    # -- the controls' values ------------------------------------------------------------------
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

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return str(self.prompt_box.value)

    def steering_variant(self) -> Variant:
        """The selected ``Variant``, as the chain's sweep builds it."""
        return make_variant(self.variant, multilayer_span=self.multilayer_span)

    # -- actions -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the warm-up is over (or was not asked for)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the warm-up to end; ``False`` if ``timeout`` seconds passed first."""
        return self._ready.wait(timeout)

    def generate(self) -> dict[str, Any]:
        """Generate, score and judge the unsteered and the steered completion; show them.

        Waits for the warm-up first. The comparison is
        :meth:`~steerlib.apps.explorer_session.ExplorerSession.compare` at the controls'
        prompt, layer, variant and alpha.

        Returns:
            The result stored in :attr:`last`.

        Raises:
            ConfigError: An empty prompt, or a bad generation setting.
            ModelError: A steering hook is still registered on the model.
        """
        self._ready.wait()
        result = self.compare(self.prompt, self.layer, self.variant, self.alpha)
        self.runs += 1
        self.last = result
        self.output.value = self._render(result)
        return result

    def go_to_recommended(self) -> None:
        """Set the variant, the layer and the alpha to the run's recommended point.

        Raises:
            ConfigError: The explorer knows no recommended point it offers.
        """
        if self.recommended_button.disabled:
            raise ConfigError(
                "this explorer has no recommended point it can reach: build it with "
                "AlphaExplorer.from_run on a run whose step 06 recommends one."
            )
        assert self.recommended_alpha is not None  # the button is enabled only with one
        self.variant_menu.value = self.recommended_variant
        self.layer_menu.value = self.recommended_layer
        self.slider.value = self.recommended_alpha
        self.status.value = (
            f"At the run's recommended point: layer {self.recommended_layer}, alpha "
            f"{self.recommended_alpha:.2f} ({self.recommended_variant}). Press Generate."
        )

    def _on_setting(self, _change: dict[str, Any] | None = None) -> None:
        """Echo the kernel's alpha, layer and variant in the status bar after a change.

        The browser sends the slider's last value in its own message, which can reach the
        kernel after a quick press of Generate; the echo shows which values the next press
        will use. A press in progress keeps its own status line; the explorer's opening hint
        (no recommended point, variants not offered) stays after the echo.
        """
        if self._busy:
            return
        then = "Press Generate." if self.ready else "Generate is ready after the warm-up."
        hint = "" if self.hint == "Press Generate." else f" {self.hint}"
        self.status.value = (
            f"Set: {self.variant}, alpha = {self.alpha:.2f}, layer {self.layer}. {then}{hint}"
        )

    def _start_warm_up(self) -> None:
        """Disable Generate, say "Warming up…", and warm the model up in a daemon thread."""
        controls.set_warming(self.button, True)
        self.output.value = placeholder(warming=True)
        threading.Thread(
            target=self._warm_in_background, name="steerlib-explorer-warm-up", daemon=True
        ).start()

    def _warm_in_background(self) -> None:
        """The warm-up thread: one short comparison, then Generate is ready."""
        try:
            self.warm_up_seconds = self.warm_up(self.prompt, self.layer, self.variant, self.alpha)
        except Exception as exc:  # the first press raises it again and shows it there
            self.warm_up_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.output.value = placeholder()
            controls.set_warming(self.button, False)
            if self._busy:  # a press is waiting for the warm-up; it enables the button
                self.button.disabled = True
            self._ready.set()

    def _on_click(self, _button: widgets.Button | None = None) -> None:
        """Button callback: generate, showing any error in the output instead of raising."""
        self._busy = True
        self.button.disabled = True
        waiting = "" if self.ready else "Warming up, then generating"
        self.status.value = (
            f"{waiting or 'Generating'} ({self.variant}, alpha = {self.alpha:.2f}, "
            f"layer {self.layer}) ..."
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
            self._busy = False
            self.button.disabled = False

    # -- display -------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.VBox:
        """The box to display."""
        return self._box

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self._box._repr_mimebundle_(**kwargs)

    def _render(self, result: dict[str, Any]) -> str:
        """The output's HTML for one comparison."""
        decoding = "greedy" if self.temperature == 0 else f"temperature {self.temperature}"
        settings = (
            f"{decoding} decoding, seed {self.seed}, {self.max_new_tokens} new tokens; "
            f"{self.budget_source} fluency budget: the steered perplexity at most "
            f"×{result['perplexity_limit']:.2f} the unsteered one's "
            f"(max_perplexity_increase = {self.max_perplexity_increase:g})"
        )
        return render_result(
            result,
            run=self.runs,
            scorer=self.scorer_name,
            settings=settings,
            warning_html=warning(result, self.budget_source, self.max_perplexity_increase),
        )
