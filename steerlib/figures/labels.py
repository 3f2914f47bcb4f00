"""Point labels that do not overlap, and titles that fit: text geometry estimated in pixels.

A scatter's point labels are placed one by one (most important first) on the side of their
point where their estimated box meets no label already placed, no marker and no edge of the
plot area; a label with no free side is left out of the image (the point's hover text still
says what it is). Boxes follow plotly's own text placement (``textposition``: the text sits
``marker radius / 0.8 + 1`` pixels from the point's centre) with a character width of
:data:`EM_WIDTH` times the font size, a little wider than the average character of the
fonts Chromium renders plotly's figures with, so an estimate that fits fits on the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "EM_WIDTH",
    "Box",
    "Canvas",
    "inward_positions",
    "marker_box",
    "place_labels",
    "text_box",
    "text_width",
]

EM_WIDTH = 0.6
"""Estimated width of one character as a share of the font size (DejaVu Sans averages 0.55)."""
LINE_HEIGHT = 1.2
"""Estimated height of one line of text as a share of the font size."""

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels from the figure's top left corner."""


def text_width(text: str, size: float) -> float:
    """Estimated width in pixels of one line of ``text`` at font ``size``."""
    return len(text) * size * EM_WIDTH


def overlaps(a: Box, b: Box) -> bool:
    """Whether two boxes share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass(frozen=True)
class Canvas:
    """Where a figure's plot area lies in pixels, and its axes' ranges.

    Attributes:
        width: Figure width in pixels.
        height: Figure height in pixels.
        margin: ``(left, top, right, bottom)`` margins in pixels.
        x_range: The x axis range (log10 units on a log axis, as plotly takes it).
        y_range: The y axis range.
        x_log: Whether the x axis is logarithmic.
    """

    width: float
    height: float
    margin: tuple[float, float, float, float]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_log: bool = False

    @property
    def area(self) -> Box:
        """The plot area."""
        left, top, right, bottom = self.margin
        return (left, top, self.width - right, self.height - bottom)

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of the data point ``(x, y)``."""
        left, top, right, bottom = self.area
        if self.x_log:
            x = math.log10(x) if x > 0 else self.x_range[0]
        x_share = (x - self.x_range[0]) / ((self.x_range[1] - self.x_range[0]) or 1.0)
        y_share = (y - self.y_range[0]) / ((self.y_range[1] - self.y_range[0]) or 1.0)
        return left + x_share * (right - left), bottom - y_share * (bottom - top)


def marker_box(px: float, py: float, size: float) -> Box:
    """The square a marker of ``size`` pixels covers around its centre."""
    half = size / 2
    return (px - half, py - half, px + half, py + half)


def text_box(px: float, py: float, text: str, size: float, position: str, marker: float) -> Box:
    """The box of a point's label, where plotly draws it for ``textposition=position``.

    Args:
        px: The point's x in pixels.
        py: The point's y in pixels.
        text: One line of text.
        size: Font size in pixels.
        position: Plotly's ``textposition`` (``"top center"``, ``"middle left"``...).
        marker: The marker's size in pixels (0 without a marker).
    """
    offset = marker / 2 / 0.8 + 1 if marker else 0.0
    width, height = text_width(text, size), size * LINE_HEIGHT
    if "left" in position:
        left = px - offset - width
    elif "right" in position:
        left = px + offset
    else:
        left = px - width / 2
    if "top" in position:
        top = py - offset - height
    elif "bottom" in position:
        top = py + offset
    else:
        top = py - height / 2
    return (left, top, left + width, top + height)


def inward_positions(px: float, canvas: Canvas) -> list[str]:
    """Label positions to try for a point, those pointing into the plot area first."""
    left, _, right, _ = canvas.area
    inward, outward = ("left", "right") if px > (left + right) / 2 else ("right", "left")
    return [
        f"middle {inward}",
        "top center",
        "bottom center",
        f"top {inward}",
        f"bottom {inward}",
        f"middle {outward}",
        f"top {outward}",
        f"bottom {outward}",
    ]


def place_labels(
    canvas: Canvas,
    points: Sequence[tuple[float, float, str, float]],
    *,
    size: float,
    obstacles: Sequence[Box] = (),
    positions: Callable[[float, Canvas], list[str]] = inward_positions,
) -> list[str]:
    """A ``textposition`` for each labelled point, ``""`` where its label is left out.

    Args:
        canvas: The figure's plot area and axis ranges.
        points: ``(x, y, text, marker size)`` in data units, most important first; an empty
            text is a marker that takes room but gets no label.
        size: Font size of the labels in pixels.
        obstacles: Other boxes no label may cover (a legend, an annotation, a large marker).
        positions: The positions to try for a point at pixel x, best first.

    Returns:
        One position per point: where its label goes, or ``""`` (no free place, or no text).
    """
    pixels = [canvas.pixel(x, y) for x, y, _, _ in points]
    taken = list(obstacles) + [
        marker_box(px, py, marker) for (px, py), (*_, marker) in zip(pixels, points, strict=True)
    ]
    area = canvas.area
    placed: list[str] = []
    for (px, py), (_, _, text, marker) in zip(pixels, points, strict=True):
        where = ""
        for position in positions(px, canvas) if text else []:
            box = text_box(px, py, text, size, position, marker)
            inside = area[0] <= box[0] and box[2] <= area[2] and area[1] <= box[1]
            if inside and box[3] <= area[3] and not any(overlaps(box, b) for b in taken):
                taken.append(box)
                where = position
                break
        placed.append(where)
    return placed
