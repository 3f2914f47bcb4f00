"""The static figures a reader gets: titles that fit, labels that do not overlap (issue 25).

The figures are drawn by :func:`steerlib.experiment.figures.draw_figures` (what step 06 and
``python -m steerlib figures`` draw) from a default-run-shaped sweep (three layers, the alpha
grid plus one searched alpha per layer, CAA and its random control, two halves, a second
variant) summarized by the project's own functions. They are rendered by kaleido to SVG at
their export size, and the check reads where plotly put every title line, point label,
annotation and marker: a title line must end inside the figure and above the plot, no label
may overlap another label or a marker, no annotation a marker or label, and no legend may
list a searched alpha as a category. A second test shows the check fails on the figure of
the issue (fast placement tests: ``tests/test_plotting.py``).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from steerlib.data.subsets import assign_split
from steerlib.evaluate import admissibility, controls, metrics, operating_point
from steerlib.experiment import figures as run_figures
from steerlib.figures import files as figure_files
from steerlib.steer.vectors import SteeringVector

LAYERS = (12, 18, 24)
GRID = [-1.0, 0.0, 0.5, 1.5]
SEARCHED = {12: 0.63, 18: 0.91, 24: 0.72}
"""One searched alpha per layer, as the chain's alpha search adds (the default run's shape)."""
WORDS = "the a cat sat on mat and we went to see our friends at home today with them".split()


def _completion(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=12))


def default_sweep(
    n_prompts: int = 12,
    samples: int = 2,
    seed: int = 0,
    *,
    gain: float = 1.0,
    directions: tuple[str, ...] = ("caa", "random"),
) -> pd.DataFrame:
    """Sweep rows shaped like the default run's: baseline, CAA and random at every setting.

    Alpha 0 gives the same completions at every layer (the unsteered model, one seed), so its
    points coincide on the trade-off figure, as in a real run.
    """
    rows = []
    settings = [(-1, 0.0, "none")] + [
        (layer, alpha, direction)
        for layer in LAYERS
        for alpha in sorted({*GRID, SEARCHED[layer]})
        for direction in directions
    ]
    for subset, base in (("challenging", 0.55), ("benign", 0.08)):
        for prompt in range(n_prompts):
            for sample in range(samples):
                noise = np.random.default_rng([seed, prompt, sample, base > 0.5])
                start, wobble = float(noise.uniform(-0.2, 0.2)), float(noise.normal(0, 0.03))
                for layer, alpha, direction in settings:
                    strength = {12: 0.25, 18: 0.35, 24: 0.15}.get(layer, 0.0)
                    effect = gain * strength * alpha * (1.0 if direction == "caa" else 0.15)
                    key = [seed, prompt, sample, layer + 1, round((alpha + 2) * 100)]
                    rng = np.random.default_rng(key)
                    rows.append(
                        {
                            "prompt_id": f"{subset}-{prompt}",
                            "subset": subset,
                            "layer": layer,
                            "alpha": alpha,
                            "direction": direction,
                            "sample": sample,
                            "completion": _completion(rng if alpha else noise),
                            "toxicity": float(np.clip(base + start - effect + wobble, 0.01, 0.99)),
                            "perplexity": 40.0 + 6.0 * alpha**2 * (layer / 12) + 10 * wobble,
                        }
                    )
    sweep = pd.DataFrame(rows)
    return sweep.assign(split=assign_split(sweep, seed))


def default_kl() -> pd.DataFrame:
    """Held-out perplexity and KL per setting; alpha 0 is the unsteered model's at every layer."""
    rows = [
        {
            "layer": layer,
            "alpha": alpha,
            "direction": direction,
            "kl_benign": 0.02 * alpha**2,
            "human_perplexity": 52.0
            * (1 + (0.12 if direction == "caa" else 0.05) * alpha**2 * layer / 18),
        }
        for layer in LAYERS
        for alpha in sorted({*GRID, SEARCHED[layer]})
        for direction in ("caa", "random")
    ]
    return pd.DataFrame(rows)


def default_vector() -> SteeringVector:
    """A CAA vector over the default layers, with the diagnostics step 04 records."""
    generator = torch.Generator().manual_seed(0)
    directions = {layer: torch.randn(16, generator=generator) for layer in LAYERS}
    diagnostics = [
        {
            "layer": layer,
            "norm_ratio": 0.3 + 0.1 * i,
            "sink_cosine_raw": 0.4,
            "sink_cosine": 0.01,
            "split_half_cosine": 0.8,
        }
        for i, layer in enumerate(LAYERS)
    ]
    return SteeringVector(directions, provenance={"diagnostics": diagnostics})


@pytest.fixture(scope="module")
def run_tables() -> dict[str, Any]:
    """The tables step 06 saves for a default-shaped run, made by the project's functions."""
    sweep = default_sweep()
    summary = metrics.summarize(sweep, kl=default_kl(), n_resamples=100)
    summary = admissibility.admissibility(summary)
    recommended = operating_point.recommend_operating_point(summary)
    overall = summary[summary["split"] == "all"]
    evaluation = sweep[sweep["direction"] != "none"]
    control = controls.delta_vs_control(overall, evaluation, n_resamples=100)
    gated = metrics.summarize(
        default_sweep(gain=1.3, directions=("caa",)), kl=default_kl(), n_resamples=100
    )
    gated = admissibility.admissibility(gated).assign(variant="gated")
    record = {
        "recommended_by_variant": {"caa": recommended},
        "control": control.to_dict("records"),
        "fluency_measure": str(summary["fluency_measure"].iloc[0]),
    }
    return {
        "summary": pd.concat([summary.assign(variant="caa"), gated], ignore_index=True),
        "record": record,
        "sweep": sweep.assign(variant="caa"),
        "recommended": recommended,
    }


def draw(tables: dict[str, Any]) -> dict[str, go.Figure]:
    """Every figure step 06 draws for the run (the variants' figure included)."""
    return run_figures.draw_figures(
        tables["summary"], tables["record"], tables["sweep"], default_vector(), GRID
    )


# ---------------------------------------------------------------- reading a rendered SVG

EM = 0.55
"""Estimated character width as a share of the font size (DejaVu Sans, which Chromium draws
plotly's 'Open Sans' with here, averages about 0.52 on these labels)."""
Box = tuple[float, float, float, float]


def _all(element: ET.Element, tag: str) -> list[ET.Element]:
    """``element`` and its descendants with SVG tag ``tag``."""
    return [e for e in element.iter() if e.tag.rsplit("}", 1)[-1] == tag]


def _translate(element: ET.Element) -> tuple[float, float]:
    found = re.search(r"translate\(([-\d.e]+),\s*([-\d.e]+)\)", element.get("transform", ""))
    return (float(found.group(1)), float(found.group(2))) if found else (0.0, 0.0)


def _font_size(element: ET.Element) -> float:
    found = re.search(r"font-size:\s*([\d.]+)px", element.get("style", ""))
    return float(found.group(1)) if found else 12.0


def _classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def _text_box(x: float, baseline: float, text: str, size: float, anchor: str) -> Box:
    width = len(text) * size * EM
    left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor or "start"]
    return (left, baseline - 0.75 * size, left + width, baseline + 0.2 * size)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def title_lines(root: ET.Element) -> list[tuple[str, Box]]:
    """Each line of the rendered title with its estimated box, in figure pixels."""
    lines = []
    for text in _all(root, "text"):
        if "gtitle" not in _classes(text):
            continue
        size, x = _font_size(text), float(text.get("x", 0))
        for tspan in _all(text, "tspan"):
            if "line" not in _classes(tspan):
                continue
            content = "".join(tspan.itertext()).replace("\u200b", "")
            small = any("70%" in t.get("style", "") for t in _all(tspan, "tspan"))
            line_size = size * 0.7 if small else size
            drop = float(tspan.get("dy", "0em").removesuffix("em")) * size
            baseline = float(tspan.get("y", text.get("y", 0))) + drop
            lines.append((content, _text_box(x, baseline, content, line_size, "start")))
    return lines


def plot_frames(root: ET.Element) -> list[ET.Element]:
    """The groups that hold a subplot's traces (clipped to its plot area), one per subplot."""
    return [g for g in _all(root, "g") if g.get("clip-path", "").endswith("plot)")]


def labels_and_markers(frame: ET.Element) -> tuple[list[tuple[str, Box]], list[Box]]:
    """Scatter text labels and marker boxes of one subplot, in its own pixel frame."""
    labels, markers = [], []
    for group in _all(frame, "g"):
        if "textpoint" not in _classes(group):
            continue
        dx, dy = _translate(group)
        for text in _all(group, "text"):
            content = "".join(text.itertext())
            if content.strip():
                x, y = float(text.get("x", 0)) + dx, float(text.get("y", 0)) + dy
                box = _text_box(x, y, content, _font_size(text), text.get("text-anchor", ""))
                labels.append((content, box))
    for path in _all(frame, "path"):
        if "point" in _classes(path):
            x, y = _translate(path)
            numbers = [abs(float(v)) for v in re.findall(r"-?[\d.]+", path.get("d", ""))]
            half = max(numbers, default=0.0)
            markers.append((x - half, y - half, x + half, y + half))
    return labels, markers


def annotations(root: ET.Element) -> list[tuple[str, Box]]:
    """Each annotation's text and its box as the browser measured it, in figure pixels."""
    found = []
    for group in _all(root, "g"):
        if "cursor-pointer" not in _classes(group) or not _all(group, "rect"):
            continue
        tx, ty = _translate(group)
        rect = _all(group, "rect")[0]
        x, y = tx + float(rect.get("x", 0)), ty + float(rect.get("y", 0))
        box = (x, y, x + float(rect.get("width", 0)), y + float(rect.get("height", 0)))
        found.append(("".join(t for text in _all(group, "text") for t in text.itertext()), box))
    return found


def legend_entries(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in _all(root, "text") if "legendtext" in _classes(t)]


def problems(svg: bytes, width: int) -> list[str]:
    """What a reader would trip over in a rendered figure: cut titles, overlapping labels."""
    root = ET.fromstring(svg)
    found = []
    tops = [_translate(frame)[1] for frame in plot_frames(root)]
    for line, box in title_lines(root):
        if box[2] > width or box[1] < 0:
            found.append(f"title line {line!r} runs out of the figure ({box})")
        if tops and box[3] > min(tops):
            found.append(f"title line {line!r} runs into the plot (plot top {min(tops)})")
    notes = annotations(root)
    for frame in plot_frames(root):
        labels, markers = labels_and_markers(frame)
        dx, dy = _translate(frame)
        for note, box in notes:
            moved = (box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy)
            hits = sum(_overlap(moved, marker) for marker in markers)
            found += [f"annotation {note!r} covers {hits} marker(s)"] if hits else []
            found += [
                f"annotation {note!r} overlaps label {t!r}" for t, b in labels if _overlap(moved, b)
            ]
        for i, (text, box) in enumerate(labels):
            found += [
                f"label {text!r} overlaps label {other!r}"
                for other, box2 in labels[i + 1 :]
                if _overlap(box, box2)
            ]
            hits = sum(_overlap(box, marker) for marker in markers)
            if hits:
                found.append(f"label {text!r} covers {hits} marker(s)")
    return found


def render_svg(fig: go.Figure, size: str) -> tuple[bytes, int]:
    """``fig`` rendered by kaleido at its export size, as save_figure renders PNGs."""
    width, height = figure_files.FIGURE_SIZES[size]
    return figure_files._static_bytes(fig, "svg", width, height, 1), width


def needs_browser() -> None:
    browser = figure_files.find_browser()
    if browser is None:
        pytest.skip("no Chrome/Chromium found (Debian: apt-get install chromium)")
    os.environ["BROWSER_PATH"] = browser


@pytest.mark.browser
def test_rendered_figures_have_titles_that_fit_and_labels_that_do_not_overlap(
    run_tables: dict[str, Any],
) -> None:
    needs_browser()
    figures = draw(run_tables)
    assert {"pareto", "pareto_variants", "emt_vs_alpha", "vector_norms"} <= set(figures)
    every = {}
    for name, fig in figures.items():
        svg, width = render_svg(fig, run_figures.FIGURE_SIZE.get(name, "page"))
        every[name] = problems(svg, width)
        root = ET.fromstring(svg)
        assert title_lines(root), name  # the check reads a title from every figure
        legend = legend_entries(root)
        for alpha in SEARCHED.values():  # the search's alphas are no legend categories
            assert not [entry for entry in legend if f"alpha {alpha:g}" in entry], (name, legend)
        if name.startswith("pareto"):
            labels = [
                label for frame in plot_frames(root) for label in labels_and_markers(frame)[0]
            ]
            assert len(labels) >= 5, name  # the check sees the labels it checks
            legend = legend_entries(root)
            assert not [e for e in legend if re.fullmatch(r"alpha -?[\d.]+", e)], legend
    assert every == {name: [] for name in figures}


@pytest.mark.browser
def test_the_check_catches_a_cut_title_and_overlapping_labels() -> None:
    """The figure of issue 25: a long one-line title, labels on coinciding points."""
    needs_browser()
    fig = go.Figure(
        go.Scatter(
            x=[52.0, 52.0, 53.5, 53.6],
            y=[0.58, 0.58, 0.41, 0.41],
            mode="markers+text",
            text=["L12 α0", "L18 α0", "L18 α0.5", "L12 α0.63"],
            textposition="top center",
        )
    )
    fig.update_layout(
        title="Expected maximum toxicity vs Steered perplexity on held-out benign text "
        "(lower is better on both)<br><sup>layers 12, 18, 24 · subset challenging</sup>",
        template="plotly_white",
    )
    found = problems(*render_svg(fig, "page_tall"))
    assert any("runs out of the figure" in p for p in found), found
    assert any("'L18 α0' overlaps label 'L12 α0'" in p or "'L12 α0' overlaps" in p for p in found)
    assert any("'L18 α0.5'" in p and "overlaps" in p for p in found), found
