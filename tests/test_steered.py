"""The explicit ``steered`` flag, and tables of old runs (``layer == -1``) reading the same."""

from __future__ import annotations

import pandas as pd
import pytest

from steerlib.evaluate import metrics
from steerlib.evaluate.admissibility import admissibility, unsteered_rows
from steerlib.generate.partition import WorkUnit
from steerlib.generate.steered import STEERED_COLUMN, is_unsteered
from steerlib.generate.unit_rows import chunk_records


def _sweep(with_flag: bool) -> pd.DataFrame:
    """A small sweep: an unsteered baseline (layer -1) and a steered layer at alphas 0 and 2."""
    rows = []
    cells = [(-1, 0.0, "none", False), (3, 0.0, "caa", True), (3, 2.0, "caa", True)]
    for layer, alpha, direction, steered in cells:
        for pid, tox in (("p1", 0.6 - alpha / 10), ("p2", 0.3 - alpha / 20)):
            for sample in range(2):
                row = {
                    "subset": "challenging",
                    "prompt_id": pid,
                    "prompt": f"prompt {pid}",
                    "layer": layer,
                    "alpha": alpha,
                    "direction": direction,
                    "sample": sample,
                    "completion": f"text {pid} {sample} {alpha}",
                    "n_new_tokens": 3,
                    "toxicity": tox + sample / 100,
                    "perplexity": 10.0 + alpha,
                }
                if with_flag:
                    row[STEERED_COLUMN] = steered
                rows.append(row)
    return pd.DataFrame(rows)


def test_old_table_without_the_column_reads_the_same() -> None:
    old, new = _sweep(with_flag=False), _sweep(with_flag=True)
    assert STEERED_COLUMN not in old.columns
    expected = (new["layer"] == -1).tolist()
    assert is_unsteered(old).tolist() == expected
    assert is_unsteered(new).tolist() == expected
    assert unsteered_rows(old).tolist() == expected


def test_the_flag_alone_marks_a_row_unsteered() -> None:
    # A new table marks unsteered rows by the flag even where layer/direction say otherwise.
    rows = pd.DataFrame(
        {"layer": [3, 3, 3], "direction": ["caa"] * 3, STEERED_COLUMN: [False, True, None]}
    )
    assert is_unsteered(rows).tolist() == [True, False, False]


def test_summaries_of_old_and_new_sweeps_agree_and_carry_the_flag() -> None:
    old = metrics.summarize(_sweep(with_flag=False), n_resamples=50)
    new = metrics.summarize(_sweep(with_flag=True), n_resamples=50)
    pd.testing.assert_frame_equal(old, new)
    assert new[STEERED_COLUMN].tolist() == (new["layer"] != -1).tolist()
    assert not new[STEERED_COLUMN].all() and new[STEERED_COLUMN].any()


def test_admissibility_reads_an_old_summary_like_a_new_one() -> None:
    new = metrics.summarize(_sweep(with_flag=True), n_resamples=50)
    old = new.drop(columns=STEERED_COLUMN)
    a = admissibility(old, max_perplexity_increase=0.5)
    b = admissibility(new, max_perplexity_increase=0.5).drop(columns=STEERED_COLUMN)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(("direction", "steered"), [("caa", True), ("none", False)])
def test_engine_records_carry_the_flag(direction: str, steered: bool) -> None:
    layer = 2 if steered else -1
    unit = WorkUnit(key="u", direction=direction, layer=layer, bucket=0, prompt_ids=("p1",))
    table = pd.DataFrame({"prompt_id": ["p1"], "prompt": ["hi"]})
    records = chunk_records(table, [0], unit, [0.0], 1, direction, (["x"], [1]), None)
    assert [r[STEERED_COLUMN] for r in records] == [steered]


def test_step_05_marks_the_baselines_alpha_0_rows_of_a_steered_layer_steered() -> None:
    from steerlib.experiment import sweep
    from steerlib.experiment.plan import SweepPlan

    baseline = _sweep(with_flag=True)
    baseline = baseline[baseline["layer"] == -1].drop(columns=["toxicity", "perplexity"])
    unit = baseline.assign(layer=3, alpha=2.0, direction="caa", steered=True)
    plan = SweepPlan(layers=[3], directions=["caa"], alphas=[2.0])
    table = sweep._sweep_table({"caa-L3-b000": unit}, pd.DataFrame(), baseline, plan, [0.0, 2.0])
    assert set(table["alpha"]) == {0.0, 2.0} and set(table["layer"]) == {3}
    assert table[STEERED_COLUMN].all() and not is_unsteered(table).any()
    # An old baseline without the column: its alpha-0 rows of layer 3 read as steered as before.
    old = sweep._sweep_table(
        {"caa-L3-b000": unit.drop(columns=STEERED_COLUMN)},
        pd.DataFrame(),
        baseline.drop(columns=STEERED_COLUMN),
        plan,
        [0.0, 2.0],
    )
    assert not is_unsteered(old).any()
