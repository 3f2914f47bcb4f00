"""What a run shows its reader: the verdict, the report page, the sweep's console progress."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_operating_point import CURSED, fake_run

from steerlib import pipeline
from steerlib.experiment import chain, report
from steerlib.experiment.runs import PROJECT_ROOT


def analyzed(tmp_path: Path, cells: dict, **params: Any) -> tuple[Any, dict[str, Any]]:
    """Step 06 on a synthetic run (layer 3): the analysis and its summary.json record."""
    run = fake_run(tmp_path, cells, n_resamples=200, **params)
    result = pipeline.analyze(run, save_figures=False)
    result.paths = run.paths
    return result, json.loads(run.paths.summary.read_text())


GOOD = {
    **CURSED,
    ("caa", 1.0): {"tox": 0.3, "human": 21.0},
    ("caa", 2.0): {"tox": 0.2, "human": 40.0},
}


def test_verdict_of_a_recommended_point_states_effect_cost_and_control(tmp_path):
    result, record = analyzed(tmp_path, GOOD)
    assert result.record == record
    lines = pipeline.verdict(record)
    assert len(lines) == 3
    point = record["recommended"]
    assert (point["layer"], point["alpha"]) == (3, 1.0)
    effect, cost, control = lines
    assert effect.startswith("Yes, steering cuts toxicity here: layer 3, alpha 1 lowers")
    base, emt = point["baseline_expected_max_toxicity"], point["expected_max_toxicity"]
    assert f"{base:.3g} → {emt:.3g}" in effect
    assert "6 challenging prompts of the confirmation half" in effect
    assert cost.startswith("Fluency cost: perplexity on held-out benign text 20 → 21 (+5%")
    assert "budget +10%" in cost
    # every measure with its change and budget, the judge named, none failing (issue 27)
    assert "perplexity of benign continuations 10 → 10 (+0%, 95% CI 10–10; budget +10%)" in cost
    assert "judge: self-judged (the steered model's own weights" in cost
    assert "KL on held-out benign text 0.01 nats/token (budget 0.095)" in cost
    assert cost.endswith("Every measure within budget on the confirmation half.")
    assert set(point["fluency_budget"]) == {"human_perplexity", "perplexity", "kl_benign"}
    assert point["control"]["beats_control"] is True
    assert control.startswith("Specific to the vector")
    assert f"{point['control']['expected_max_toxicity_random']:.3g}" in control


def test_verdict_names_a_variant_other_than_plain_caa(tmp_path):
    _, record = analyzed(tmp_path, GOOD)
    record["recommended"]["variant"] = "gated"
    effect = pipeline.verdict(record)[0]
    assert effect.startswith("Yes, steering cuts toxicity here: the gated variant at layer 3,")
    record["recommended"]["variant"] = "caa"
    assert "variant" not in pipeline.verdict(record)[0]


def test_verdict_says_when_the_effect_does_not_hold_or_is_not_specific(tmp_path):
    cells = {
        **CURSED,
        ("caa", 1.0): {"tox": {"selection": 0.3, "confirmation": 0.7}},
        ("caa", 2.0): {"tox": 0.6, "human": 40.0},
        ("random", 1.0): {"tox": {"selection": 0.3, "confirmation": 0.7}},
    }
    _, record = analyzed(tmp_path, cells)
    effect, _, control = pipeline.verdict(record)
    assert effect.startswith("No, steering does not cut toxicity here: at layer 3, alpha 1")
    assert record["recommended"]["control"]["beats_control"] is False
    assert control.startswith("Not shown to be specific to the vector")


def test_verdict_without_an_admissible_setting_explains_alpha_0(tmp_path):
    _, record = analyzed(tmp_path / "zero", GOOD, max_perplexity_increase=0.0)
    assert record["recommended"]["status"] == "no admissible steered setting"
    first, miss, advice = pipeline.verdict(record)
    assert first.startswith("No steering recommended here: the rule keeps the unsteered model")
    assert record["recommended"]["reason"] in first
    assert miss.startswith("Nearest miss: layer 3, alpha 1 lowers expected maximum toxicity")
    assert "human_perplexity 21 above the limit 20" in miss
    assert "max_perplexity_increase (now 0;" in advice
    error = pipeline.verdict({"recommended": {"error": "no alpha-0 row"}, "params": {}})
    assert "could not run (no alpha-0 row)" in error[0] and len(error) == 3


def test_the_runner_prints_the_verdict_not_a_table(tmp_path, capsys):
    result, record = analyzed(tmp_path, GOOD)
    chain._print_summary(result.paths)
    printed = capsys.readouterr().out
    for line in pipeline.verdict(record):
        assert f"  - {line}\n" in printed
    assert "figures:" in printed and "summary.parquet" in printed
    assert "mean_toxicity" not in printed  # no table of raw columns


def test_the_runner_says_in_one_line_when_figures_are_html_only(tmp_path, capsys, monkeypatch):
    from steerlib.figures import files as figure_files

    result, _ = analyzed(tmp_path, GOOD)
    monkeypatch.setattr(figure_files, "find_browser", lambda: None)
    chain._print_summary(result.paths)
    lines = [line for line in capsys.readouterr().out.splitlines() if "HTML only" in line]
    assert len(lines) == 1
    assert f"python -m steerlib figures {result.paths.name}" in lines[0]


def test_tables_format_numbers_and_show_alpha_0_once(tmp_path):
    result, _ = analyzed(tmp_path, GOOD)
    settings = report.settings_table(result.summary)
    shown = settings.data
    assert (shown["direction"] == "unsteered").sum() == 1
    assert not ((shown["direction"] != "unsteered") & (shown["alpha"] == 0)).any()
    html = settings.to_html()
    assert not re.search(r"\de[+-]\d\d", html)  # no 4.592648e+04
    assert "overflow-x: auto" in html
    examples = result.examples
    assert {"prompt", "layer", "alpha", "completion", "toxicity"} <= set(examples.columns)
    full = examples["completion"].iloc[0]
    assert full in report.examples_table(examples).to_html()  # in full, not cut
    control = report.control_table(result.control).to_html()
    assert "beats control" in control and "delta_mean_toxicity_ci_low" not in control


@pytest.mark.slow
def test_report_page_has_a_title_the_verdict_first_and_no_code(tmp_path):
    import papermill

    from steerlib.experiment.kernels import kernel_options

    run = fake_run(tmp_path, GOOD, n_resamples=200)
    executed = tmp_path / "06_analysis.ipynb"
    papermill.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "06_analysis.ipynb"),
        str(executed),
        parameters={"run_name": "synthetic", "runs_dir": str(tmp_path)},
        cwd=str(PROJECT_ROOT / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
        **kernel_options(),
    )
    page = report.render_report(executed, tmp_path / "report.html", title="steerlib report — x")
    html = page.read_text()
    assert "<title>steerlib report — x</title>" in html
    assert not re.search(r'class="[^"]*(hl-ipython3|jp-InputPrompt)', html)  # no code cells
    assert "Run.for_step" not in html and "pipeline.analyze" not in html
    assert "= None  #" not in html  # the parameters cells
    assert "no runs to compare" not in html and "Comparison with other runs" not in html
    record = json.loads(run.paths.summary.read_text())
    text = re.sub(r"<[^>]+>", "", html)
    first = pipeline.verdict(record)[0].split(":")[0]
    assert first in text
    assert text.index(first) < text.index("The operating point")
    assert "Against the random control" in text  # the run has a random control


def test_sweep_watcher_counts_units_as_they_are_written(tmp_path):
    import torch

    from steerlib._io import atomic_write_parquet
    from steerlib.experiment.progress import SweepWatcher
    from steerlib.experiment.sweep import sweep_plan
    from steerlib.steer.vectors import SteeringVector

    run = fake_run(tmp_path, GOOD, layers=[3], samples_per_prompt=2, max_new_tokens=5)
    paths = run.paths
    SteeringVector({3: torch.ones(4)}, provenance={"num_layers": 4}).save(paths.vectors)
    units = sweep_plan(run.params, 4).units(pd.read_parquet(paths.prompts), run.params)
    assert len(units) >= 2
    out = io.StringIO()
    with SweepWatcher(paths, interval=0.05, file=out) as watcher:
        for unit in units:
            part = paths.sweep_parts / f"{unit.key}.parquet"
            atomic_write_parquet(part, pd.DataFrame({"unit": [unit.key]}))
            time.sleep(0.15)
    assert (watcher.done, watcher.total) == (len(units), len(units))
    drawn = out.getvalue()
    assert f"{len(units)}/{len(units)}" in drawn and "tok/s" in drawn and "sweep" in drawn


def test_each_kernel_gets_sockets_of_its_own(monkeypatch, tmp_path):
    """Two runs started at once from one folder must not share IPC socket names."""
    from steerlib.experiment.kernels import kernel_options

    monkeypatch.chdir(tmp_path)
    first, second = (kernel_options()["config"].KernelManager for _ in range(2))
    assert first.transport == second.transport == "ipc"
    assert first.ip != second.ip
    assert os.path.isabs(first.ip) and not str(first.ip).startswith(str(tmp_path))
