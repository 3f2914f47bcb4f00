"""The alpha explorer's controls: each ipywidget, built with its stable CSS class.

One function per control (the prompt box, the alpha slider, the layer and variant menus, the
Generate and Recommended buttons, the status bar, the output) and :func:`layout`, which boxes
them; :class:`~steerlib.apps.widgets.AlphaExplorer` wires them to its session. The classes
(``steerlib-prompt``, ``steerlib-alpha``, ``steerlib-layer``, ``steerlib-variant``,
``steerlib-generate``, ``steerlib-recommended``, ``steerlib-status``, ``steerlib-output``,
``steerlib-explorer``) are what browser tests and notebooks find the controls by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

try:
    import ipywidgets as widgets
except ImportError as _missing:  # pragma: no cover - the notebooks extra is not installed
    raise ImportError(
        "the alpha explorer needs ipywidgets: pip install 'steerlib[notebooks]' (or `make setup`)."
    ) from _missing

__all__ = [
    "FINE_ALPHA_STEP",
    "alpha_slider",
    "alpha_step",
    "generate_button",
    "layer_label",
    "layer_menu",
    "layout",
    "output",
    "prompt_box",
    "recommended_button",
    "set_warming",
    "status_bar",
    "variant_menu",
]

FINE_ALPHA_STEP = 0.01
"""The slider's step when an alpha it must reach is off its coarser grid (the readout's 0.01)."""


def alpha_step(step: float, *alphas: float | None) -> float:
    """The slider's step: ``step``, or :data:`FINE_ALPHA_STEP` when an alpha is off its grid.

    The slider only stops at multiples of its step, so a recommended alpha of 0.91 on a 0.1
    grid could be opened at but never returned to (and its readout would show 0.90).

    Example:
        >>> alpha_step(0.1, 0.9), alpha_step(0.1, 0.91), alpha_step(0.1, None)
        (0.1, 0.01, 0.1)
    """
    off = [
        a
        for a in alphas
        if a is not None and not math.isclose(a / step, round(a / step), abs_tol=1e-6)
    ]
    return min(step, FINE_ALPHA_STEP) if off else step


def layer_label(layer: int, swept: Sequence[int] = (), recommended: int | None = None) -> str:
    """The layer menu's label: ``"12 (swept, recommended)"``, ``"18 (swept)"`` or ``"5"``."""
    marks = ["swept"] if int(layer) in {int(x) for x in swept} else []
    if recommended is not None and int(layer) == int(recommended):
        marks.append("recommended")
    return f"{layer} ({', '.join(marks)})" if marks else str(layer)


def prompt_box(prompt: str) -> widgets.Textarea:
    """The prompt ``Textarea``."""
    box = widgets.Textarea(
        value=prompt, description="Prompt", layout=widgets.Layout(width="100%", height="5em")
    )
    box.add_class("steerlib-prompt")
    return box


def alpha_slider(
    alpha: float, slider_range: tuple[float, float, float], recommended: float | None
) -> widgets.FloatSlider:
    """The alpha ``FloatSlider``.

    Its range is widened to hold ``alpha`` and ``recommended``, and its step is fine enough to
    stop at both (:func:`alpha_step`).
    """
    low, high, step = slider_range
    reach = [float(alpha)] + ([] if recommended is None else [float(recommended)])
    slider = widgets.FloatSlider(
        value=float(alpha),
        min=min(low, *reach),
        max=max(high, *reach),
        step=alpha_step(step, *reach),
        description="alpha",
        readout_format=".2f",
        continuous_update=False,
        layout=widgets.Layout(width="60%"),
    )
    slider.add_class("steerlib-alpha")
    return slider


def layer_menu(
    options: Sequence[int], layer: int, swept: Sequence[int], recommended: int | None
) -> widgets.Dropdown:
    """The layer ``Dropdown``, marking the swept and the recommended layers."""
    menu = widgets.Dropdown(
        options=[(layer_label(x, swept, recommended), x) for x in options],
        value=int(layer),
        description="layer",
    )
    menu.add_class("steerlib-layer")
    return menu


def variant_menu(offered: Sequence[str], variant: str | None) -> widgets.Dropdown:
    """The steering-variant ``Dropdown`` (opens at ``variant``, else the first offered)."""
    menu = widgets.Dropdown(
        options=list(offered),
        value=variant if variant is not None else offered[0],
        description="variant",
    )
    menu.add_class("steerlib-variant")
    return menu


def generate_button() -> widgets.Button:
    """The "Generate" button."""
    button = widgets.Button(
        description="Generate",
        button_style="primary",
        tooltip="Generate the unsteered and the steered completion",
        icon="play",
    )
    button.add_class("steerlib-generate")
    return button


def set_warming(button: widgets.Button, warming: bool) -> None:
    """Show the Generate button as "Warming up…" (disabled) or as ready."""
    button.description = "Warming up…" if warming else "Generate"
    button.icon = "hourglass-half" if warming else "play"
    button.disabled = warming


def recommended_button(alpha: float | None, reachable: bool) -> widgets.Button:
    """The "Recommended (alpha 0.91)" button; hidden and disabled when not ``reachable``."""
    button = widgets.Button(
        description=f"Recommended (alpha {alpha or 0.0:.2f})",
        tooltip="Back to the run's recommended layer, variant and alpha",
        disabled=not reachable,
        layout=widgets.Layout(display=None if reachable else "none"),
    )
    button.add_class("steerlib-recommended")
    return button


def status_bar(text: str) -> widgets.Label:
    """The status ``Label``."""
    label = widgets.Label(value=text)
    label.add_class("steerlib-status")
    return label


def output(html_text: str) -> widgets.HTML:
    """The output ``HTML`` widget (results and errors)."""
    shown = widgets.HTML(value=html_text)
    shown.add_class("steerlib-output")
    return shown


def layout(
    inputs: Sequence[widgets.Widget], actions: Sequence[widgets.Widget], shown: widgets.HTML
) -> widgets.VBox:
    """The explorer's box.

    The prompt box (first input), a row of the other inputs, a row of the actions, then the
    output.
    """
    box = widgets.VBox(
        [inputs[0], widgets.HBox(list(inputs[1:])), widgets.HBox(list(actions)), shown]
    )
    box.add_class("steerlib-explorer")
    return box
