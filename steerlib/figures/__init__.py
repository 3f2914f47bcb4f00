"""Figures (floor 6): plotly figures returned by functions, and their files.

* :mod:`~steerlib.figures.plotting` — every figure of the analysis, importable from one place;
* :mod:`~steerlib.figures.curves` — a metric against alpha, layer or run; toxicity spread;
* :mod:`~steerlib.figures.heatmaps` — layer x alpha heatmaps (a metric, CAA minus control);
* :mod:`~steerlib.figures.pareto` — toxicity against fluency cost, one point per setting;
* :mod:`~steerlib.figures.variants` — the same for every steering variant side by side;
* :mod:`~steerlib.figures.vector_plots` — the steering vector's norms, diagnostics, cosines;
* :mod:`~steerlib.figures.style` — colours, labels, titles wrapped to fit, axis ranges;
* :mod:`~steerlib.figures.labels` — point labels placed where they overlap nothing;
* :mod:`~steerlib.figures.files` — PNG/PDF/HTML files and the browser kaleido needs.
"""
