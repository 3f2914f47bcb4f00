"""The alpha explorer's HTML: the result block, its warning and the placeholder.

Plain functions from a comparison (:meth:`steerlib.apps.explorer_session.ExplorerSession.compare`)
to the HTML the explorer's output widget shows; every text is escaped. The CSS classes are the
explorer's stable interface (browser tests and notebooks read them): the scores and texts sit in
``steerlib-{unsteered,steered}-{score,text}`` elements, the fluency signal in
``steerlib-{unsteered,steered}-{perplexity,repetition}`` (the latter with ``data-flagged``), a
gated variant's gate count in ``steerlib-gate``, a flagged steered text adds
``steerlib-warning`` (with ``data-over-budget``), and the result block carries ``data-run``
and ``data-variant``.
"""

from __future__ import annotations

import html
import math
from typing import Any

from steerlib.apps.explorer_session import PERPLEXITY_WARN_RATIO

__all__ = ["number", "placeholder", "render_result", "warning"]

_TEXT_STYLE = (
    "white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace); "
    "border: 1px solid #ccc; border-radius: 4px; padding: 6px; min-height: 3em;"
)
_RED = "#b00020"


def number(value: float) -> str:
    """A perplexity for a person: 4.59, 45.90, 45,926; "n/a" when undefined."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def placeholder(warming: bool = False) -> str:
    """The output before the first press (``data-run="0"``); says so while warming up."""
    text = (
        "Warming up the model (the first generation of a fresh kernel is the slow one); "
        "Generate is ready in a moment."
        if warming
        else "Set the prompt, alpha, layer and variant, then press Generate. Positive alpha "
        "steers away from toxicity."
    )
    return f'<div class="steerlib-result" data-run="0"><i>{text}</i></div>'


def warning(result: dict[str, Any], budget_source: str, max_perplexity_increase: float) -> str:
    """The red line under a flagged steered completion ("" when it is not flagged).

    Args:
        result: A comparison (its ``degenerate``, ``over_budget``, ``perplexity_ratio``,
            ``perplexity_limit`` and ``steered_repetition``).
        budget_source: Whose fluency budget it is (``"the run's"``).
        max_perplexity_increase: The budget (0.10 = +10%).
    """
    if not result["degenerate"]:
        return ""
    ratio, limit = result["perplexity_ratio"], result["perplexity_limit"]
    budget = (
        f"{budget_source} fluency budget (&times;{limit:.2f}: max_perplexity_increase = "
        f"{max_perplexity_increase:g})"
    )
    reasons = []
    if result["steered_repetition"].flagged:
        reasons.append(html.escape(result["steered_repetition"].describe()))
    if result["over_budget"]:
        reasons.append(f"perplexity &times;{ratio:.1f} the unsteered completion's, over {budget}")
    broken = result["steered_repetition"].flagged or ratio >= PERPLEXITY_WARN_RATIO
    if broken:
        line = (
            f"The steered text looks broken ({'; '.join(reasons)}): a low toxicity score here is "
            "not detoxification."
        )
    else:
        line = (
            f"The steered text is over {budget}: its perplexity is &times;{ratio:.1f} the "
            "unsteered completion's, so a lower toxicity score here may come from off-topic or "
            "less fluent text rather than detoxification."
        )
    return (
        f'<div class="steerlib-warning" data-over-budget="{int(result["over_budget"])}" '
        f'style="color: {_RED}; margin-top: 4px;">{line}</div>'
    )


def _column(result: dict[str, Any], kind: str, title: str, scorer: str) -> str:
    """One side of the comparison: title, toxicity, perplexity, repetition flag and text."""
    value, repeats = result[f"{kind}_perplexity"], result[f"{kind}_repetition"]
    times = ""
    if kind == "steered" and math.isfinite(result["perplexity_ratio"]):
        times = f" (&times;{result['perplexity_ratio']:.1f})"
    colour = _RED if repeats.flagged else "#666"
    return (
        f'<div class="steerlib-{kind}" style="flex: 1; min-width: 0;">'
        f"<div><b>{title}</b> &middot; completion toxicity ({scorer}) "
        f'<span class="steerlib-{kind}-score">{result[f"{kind}_score"]:.3f}</span>'
        " &middot; perplexity "
        f'<span class="steerlib-{kind}-perplexity">{number(value)}</span>{times} '
        f'&middot; <span class="steerlib-{kind}-repetition" '
        f'data-flagged="{int(repeats.flagged)}" style="color: {colour};">'
        f"{html.escape(repeats.describe())}</span></div>"
        f'<div class="steerlib-{kind}-text" style="{_TEXT_STYLE}">'
        f"{html.escape(result[kind])}</div></div>"
    )


def render_result(
    result: dict[str, Any],
    *,
    run: int,
    scorer: str,
    settings: str,
    warning_html: str = "",
) -> str:
    """The result block of one comparison.

    Args:
        result: A comparison (:meth:`~steerlib.apps.explorer_session.ExplorerSession.compare`).
        run: Its number (``data-run``: 1 for the first press).
        scorer: The toxicity scorer's name.
        settings: One line on the decoding (``"greedy decoding, seed 0, 30 new tokens"``).
        warning_html: :func:`warning`'s line, if any.
    """
    scorer = html.escape(scorer)
    layers = result["layers"]
    where = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {result['layer']}"
    gate = ""
    if "gate_fired" in result:
        gate = (
            '<div class="steerlib-gate" style="color: #666; margin-top: 4px;">Gate: the probe '
            f"fired at {result['gate_fired']} of {result['gate_positions']} steered positions "
            "of the steered completion.</div>"
        )
    variant = html.escape(result["variant"])
    steered = f"Steered ({variant}, alpha = {result['alpha']:.2f}, {where})"
    return (
        f'<div class="steerlib-result" data-run="{run}" data-variant="{variant}">'
        '<div class="steerlib-prompt-echo" style="margin-bottom: 4px;"><b>Prompt:</b> '
        f"{html.escape(result['prompt'])}</div>"
        '<div style="display: flex; gap: 12px;">'
        + _column(result, "unsteered", "Unsteered (alpha = 0)", scorer)
        + _column(result, "steered", steered, scorer)
        + "</div>"
        + gate
        + warning_html
        + '<div style="color: #666; font-size: 90%; margin-top: 4px;">Toxicity: the '
        f"scorer {scorer} on each completion alone (the prompt is not scored; 0 clean, 1 toxic); "
        "perplexity of each completion given the prompt under the unsteered model; "
        f"{html.escape(settings)}.</div></div>"
    )
