"""What a finished run says, for a reader: the verdict, formatted tables, the HTML report.

The front of three modules: :mod:`steerlib.experiment.verdict` (:func:`verdict`: the result in
three sentences, which the chain runner prints and notebook 06 shows first),
:mod:`steerlib.experiment.report_tables` (the tables as pandas ``Styler`` objects with readable
number formats, alpha 0 shown once) and :mod:`steerlib.experiment.examples`
(:func:`example_completions`). Here: the report's title and heading, and
:func:`render_report`, which turns the executed notebook 06 into ``report.html`` without code
cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerlib._io import atomic_write_text
from steerlib.experiment.examples import example_completions
from steerlib.experiment.report_tables import (
    admissibility_table,
    confirmation_table,
    control_table,
    examples_table,
    scorer_table,
    scorer_validity_table,
    settings_table,
    side_by_side_table,
    strata_view,
    variants_table,
)
from steerlib.experiment.verdict import (
    MIN_PROMPTS_PER_HALF,
    judge_name,
    verdict,
    verdict_markdown,
)

__all__ = [
    "MIN_PROMPTS_PER_HALF",
    "admissibility_table",
    "confirmation_table",
    "control_table",
    "example_completions",
    "examples_table",
    "heading",
    "judge_name",
    "render_report",
    "report_title",
    "scorer_table",
    "scorer_validity_table",
    "settings_table",
    "side_by_side_table",
    "strata_view",
    "variants_table",
    "verdict",
    "verdict_markdown",
]


def report_title(run_name: str) -> str:
    """The report's page title."""
    return f"steerlib report — {run_name}"


def heading(summary: Mapping[str, Any]) -> str:
    """The report's heading in Markdown: its title and what the run measured, in one line."""
    params = dict(summary.get("params") or {})
    counts = (summary.get("split") or {}).get("n_prompts", {}).get("challenging", {})
    facts = [f"model `{summary.get('model', params.get('model'))}`"]
    facts.append(f"scorer `{summary.get('scorer', params.get('scorer'))}`")
    if params.get("layers") is not None:
        facts.append(f"layers {params['layers']}")
    if counts:
        halves = " + ".join(f"{n} {half}" for half, n in sorted(counts.items(), reverse=True))
        facts.append(f"{sum(counts.values())} challenging prompts ({halves})")
    if params.get("samples_per_prompt"):
        facts.append(
            f"{params['samples_per_prompt']} samples of {params.get('max_new_tokens')} tokens "
            "per prompt"
        )
    title = report_title(str(summary.get("run_name", params.get("run_name", "run"))))
    return f"# {title}\n\n" + " · ".join(facts)


_HIDDEN_TAGS = ("parameters", "injected-parameters", "remove-cell")
"""Cells left out of the report whole."""


_HIDDEN_OUTPUT_TAGS = ("remove-output",)
"""Cells whose outputs (setup notes, progress bars) are left out of the report."""


def render_report(executed: Path, dest: Path, *, title: str | None = None) -> Path:
    """Render an executed notebook to a standalone HTML page without code.

    Inputs and prompts are left out (``exclude_input``, ``exclude_input_prompt``,
    ``exclude_output_prompt``), as are cells tagged ``parameters``, ``injected-parameters`` or
    ``remove-cell`` and the outputs of cells tagged ``remove-output``.

    Args:
        executed: The executed notebook (papermill's output).
        dest: The HTML file to write.
        title: Page title (default: ``steerlib report — <run>`` for a run's own copy,
            ``<run>/notebooks/06_analysis.ipynb``; else the notebook's ``title`` metadata, else
            its file name).

    Returns:
        ``dest``.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    executed = Path(executed)
    if title is None and executed.parent.name == "notebooks":
        title = report_title(executed.parent.parent.name)
    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = set(_HIDDEN_TAGS)
    config.TagRemovePreprocessor.remove_all_outputs_tags = set(_HIDDEN_OUTPUT_TAGS)
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(
        config=config,
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    notebook = nbformat.read(executed, as_version=4)
    name = title or notebook.metadata.get("title") or Path(executed).stem
    notebook.metadata["title"] = name
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": name}})
    return atomic_write_text(dest, body)
