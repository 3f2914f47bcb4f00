"""Figures (floor 6): plotly figures returned by functions, and their files.

* :mod:`~steerlib.figures.plotting` — every figure of the analysis;
* :mod:`~steerlib.figures.files` — PNG/PDF/HTML files and the browser kaleido needs.
"""
