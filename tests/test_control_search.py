"""Each variant's random control found by the same search (issue 27 item 4, review finding 4).

A tiny run (test Llama, bundled prompts; ``caa`` and ``clamp``, each with its random control)
is swept as before ``control_search`` existed, its record made to look like a run of that code
(no ``control_search`` in ``params.json`` nor in the steps' records); opening it again with the
new code extends it: only the random directions' own-edge units are generated, the units on
disk are kept untouched, and the analysis reports every variant against its control at equal
alpha and at the control's own budget edge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from steerlib.experiment.run import Run

TINY = {
    "n_prompts": 3,
    "n_pairs": 3,
    "samples_per_prompt": 2,
    "max_new_tokens": 6,
    "layers": [1, 2],
    "alphas": [0.0, 0.5],
    "kl_texts": 2,
    "batch_size": 16,
    "variants": ["caa", "clamp"],
    "n_resamples": 100,
}
KEY = ["variant", "subset", "direction", "layer", "alpha", "prompt_id", "sample"]


def _as_made_before_the_switch(run: Run) -> None:
    """Drop ``control_search`` from the run's records, through the project's writers."""
    paths = run.paths
    stored = {k: v for k, v in paths.stored_params().items() if k != "control_search"}
    paths.write_params(stored)
    for name, record in paths.read_status().items():
        params = {k: v for k, v in (record.get("params") or {}).items() if k != "control_search"}
        fields = {k: v for k, v in record.items() if k not in ("state", "params")}
        paths.set_status(name, record["state"], **fields, params=params)


def _units(paths) -> dict[str, int]:
    return {str(p.relative_to(paths.sweep_parts)): p.stat().st_mtime_ns for p in _files(paths)}


def _files(paths) -> list[Path]:
    return sorted(paths.sweep_parts.rglob("*.parquet"))


@pytest.mark.slow
def test_a_run_made_without_the_control_search_is_extended_by_it(tmp_path, tokenizer, llama):
    from steerlib.experiment.analysis import analyze
    from steerlib.experiment.steps import (
        build_vectors,
        capture_activations,
        prepare_data,
        run_baseline,
    )
    from steerlib.experiment.sweep import sweep_step

    model = tmp_path / "tiny-llama"
    llama.save_pretrained(model)
    tokenizer.save_pretrained(model)
    runs = str(tmp_path / "runs")
    run = Run.open("old", runs_dir=runs, model=str(model), control_search=False, **TINY)
    for step in (prepare_data, run_baseline, capture_activations, build_vectors):
        step(run)
    sweep_step(run)
    for step in ("01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep"):
        run.paths.record_complete(step)  # as the chain runner records a finished notebook
    assert run.paths.is_complete("05_sweep")
    before = _units(run.paths)
    old_rows = pd.read_parquet(run.paths.sweep)
    old_trace = pd.read_parquet(run.paths.alpha_search)
    assert set(old_trace["direction"]) == {"caa"}  # no control searched
    _as_made_before_the_switch(run)

    # The same command with the new code: control_search (default true) extends the sweep.
    again = Run.open("old", runs_dir=runs, model=str(model), **TINY)
    assert again.params.control_search is True
    assert any("control_search" in note and "resumes" in note for note in again.notes)
    record = again.paths.read_status()["05_sweep"]
    assert record["state"] == "stale" and record["resume"] is True
    assert not again.paths.is_complete("05_sweep") and again.paths.is_complete("04_vectors")
    sweep_step(again)
    after = _units(again.paths)
    # Every unit on disk is kept as it was; the new ones are the controls' own edges alone.
    assert {k: after[k] for k in before} == before
    new = sorted(set(after) - set(before))
    assert new and all(k.startswith("search/") and "random-L" in k for k in new)
    trace = pd.read_parquet(again.paths.alpha_search)
    random = trace[trace["direction"] == "random"]
    assert set(zip(random["variant"], random["layer"], strict=True)) == {
        (v, layer) for v in ("caa", "clamp") for layer in (1, 2)
    }
    assert float(random.loc[random["variant"] == "clamp", "alpha"].max()) <= 1.0  # the cap
    # The variant's own search and rows are those of the old run.
    pd.testing.assert_frame_equal(
        trace[trace["direction"] == "caa"].reset_index(drop=True),
        old_trace.reset_index(drop=True),
        rtol=1e-4,
    )
    rows = pd.read_parquet(again.paths.sweep)
    kept = rows.merge(old_rows[KEY], on=KEY, how="inner")
    assert len(kept) == len(old_rows)
    assert not rows.duplicated(KEY).any()
    added = rows.merge(old_rows[KEY], on=KEY, how="left", indicator=True)
    added = added[added["_merge"] == "left_only"]
    assert set(added["direction"]) == {"random"}
    # Each control at its own edge (the chosen alpha of its search after its step back).
    for (variant, layer), chosen in (
        random.drop_duplicates(["variant", "layer"]).set_index(["variant", "layer"])["chosen"]
    ).items():
        at = rows[(rows["variant"] == variant) & (rows["layer"] == layer)]
        at = at[at["direction"] == "random"]
        assert (at["alpha"].round(4) == round(float(chosen), 4)).any() or chosen == 0

    assert again.paths.step_state("05_sweep") == "done"
    analyze(again, save_figures=False)
    summary = json.loads(again.paths.summary.read_text())
    for name, point in summary["recommended_by_variant"].items():
        if "layer" not in point:
            continue
        assert "control_own_edge" in point, name
        own = point["control_own_edge"]
        if own is not None:
            assert own["control_alpha"] == pytest.approx(
                float(
                    random[(random["variant"] == name) & (random["layer"] == point["layer"])][
                        "chosen"
                    ].iloc[0]
                )
            )
    # Every variant's point: each fluency measure with its interval, and its own control.
    for name, point in summary["recommended_by_variant"].items():
        if "layer" not in point:
            continue
        assert point["control_of"] == name
        assert point["control"] is not None and point["control_matched_fluency"] is not None
        assert set(point["fluency_budget"]) == {"human_perplexity", "perplexity", "kl_benign"}
        for measure, entry in point["fluency_budget"].items():
            low, high = entry["ci"]
            assert low <= entry["value"] <= high, (name, measure)
        assert "control_own_edge_alpha" in point
    # A second open with nothing changed leaves the run be.
    assert not Run.open("old", runs_dir=runs, model=str(model), **TINY).notes


def _own_edge_record(tmp_path: Path, random_at_edge: float, chosen: float) -> dict:
    """Step 06 on a synthetic run whose control's own search chose ``chosen`` (layer 3)."""
    from test_operating_point import own_edge_run

    from steerlib import pipeline

    run = own_edge_run(tmp_path, random_at_edge, chosen)
    pipeline.analyze(run, save_figures=False)
    return json.loads(run.paths.summary.read_text())


def test_the_verdict_compares_with_the_controls_own_searched_edge(tmp_path):
    """The control line reads the variant's own control at its own edge, not only same alpha."""
    from steerlib import pipeline

    # The random direction at its own edge (alpha 2) is less toxic than the vector at its point.
    record = _own_edge_record(tmp_path / "beaten", random_at_edge=0.3, chosen=2.0)
    point = record["recommended"]
    assert point["control"]["beats_control"] is True  # at equal alpha the vector wins
    assert point["control_own_edge_alpha"] == 2.0
    assert point["control_own_edge"]["delta_mean_toxicity"] > 0
    control = pipeline.verdict(record)[2]
    assert control.startswith("Not shown to be specific to the vector")
    assert "at its own budget edge (alpha 2, found by the same search" in control
    assert "not below 0" in control

    # A control that stays as toxic at its own edge: the vector beats both comparisons.
    record = _own_edge_record(tmp_path / "beats", random_at_edge=0.59, chosen=2.0)
    control = pipeline.verdict(record)[2]
    assert control.startswith("Specific to the vector, not to any perturbation")
    own = record["recommended"]["control_own_edge"]
    assert own["delta_mean_toxicity_ci_high"] < 0
    assert f"it is {own['delta_mean_toxicity']:.2g} (95% CI" in control
    assert "not below 0" not in control

    # The control's own search found nothing within budget: said, not compared.
    record = _own_edge_record(tmp_path / "none", random_at_edge=0.3, chosen=0.0)
    point = record["recommended"]
    assert point["control_own_edge"] is None and point["control_own_edge_alpha"] == 0.0
    control = pipeline.verdict(record)[2]
    assert "found no steered alpha within it (its edge is alpha 0)" in control
    assert control.startswith("Specific to the vector")


def test_the_verdict_names_whose_control_a_variant_was_compared_with(tmp_path):
    from steerlib import pipeline

    record = _own_edge_record(tmp_path, random_at_edge=0.59, chosen=2.0)
    point = record["recommended"]
    assert "under the same" not in pipeline.verdict(record)[2]  # plain CAA: its own control
    point.update(variant="clamp", control_of="clamp")
    control = pipeline.verdict(record)[2]
    assert "of the same norm under the same clamp hook at the same alpha" in control
    point["control_of"] = "caa"  # a run made before per-variant controls
    control = pipeline.verdict(record)[2]
    assert "plain CAA's random rows: this run made none under the clamp hook" in control


def test_a_one_scorer_verdict_names_its_scorer_and_the_second_opinion(tmp_path):
    from steerlib import pipeline

    record = _own_edge_record(tmp_path, random_at_edge=0.59, chosen=2.0)
    assert record["scorer"] and not record["params"].get("second_scorer")
    effect = pipeline.verdict(record)[0]
    assert f"Measured by {record['scorer']} alone: this run has no second scorer" in effect
    assert "second_scorer=minilm-toxicity" in effect
