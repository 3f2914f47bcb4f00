"""The operating-point rule: select on one half, confirm on the other, admissible settings only."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
import pytest

from steerlib import pipeline
from steerlib.errors import DataError
from steerlib.evaluate import metrics
from steerlib.evaluate import operating_point as op
from steerlib.experiment import analysis, chain, figures

N_PROMPTS = 12
SEED = 0
FLOOR = 0.036
SUBSETS = ("challenging", "benign")


def prompt_table(n: int = N_PROMPTS) -> pd.DataFrame:
    rows = [{"subset": s, "prompt_id": f"{s[0]}{i:02d}"} for s in SUBSETS for i in range(n)]
    return pd.DataFrame(rows)


HALVES = prompt_table().assign(split=lambda d: op.assign_split(d, SEED))
HALF = {(s, p): h for s, p, h in HALVES[["subset", "prompt_id", "split"]].to_numpy()}


def make_sweep(cells: dict[tuple[str, float], dict[str, Any]], layer: int = 3) -> pd.DataFrame:
    """Completions of every cell on every prompt, two samples each.

    A cell's spec: ``tox`` (challenging toxicity, a number or ``{half: number}``), ``ppl``
    (benign continuation perplexity, default 10), ``text`` ("degenerate" repeats one word) and
    ``floor`` (True: sample 0 of every prompt scores exactly the floor).
    """
    rows = []
    for (direction, alpha), spec in cells.items():
        for subset, pid in HALVES[["subset", "prompt_id"]].to_numpy():
            half, index = HALF[(subset, pid)], int(pid[1:])
            for sample in range(2):
                tox = spec.get("tox", 0.5)
                tox = tox[half] if isinstance(tox, dict) else tox
                tox = tox + 0.002 * index + 0.001 * sample if subset == "challenging" else 0.01
                if spec.get("floor") and sample == 0:
                    tox = FLOOR
                text = (
                    "om om om om om"
                    if spec.get("text") == "degenerate"
                    else f"prompt {pid} gets sample {sample} of {direction} text"
                )
                rows.append(
                    {
                        "subset": subset,
                        "prompt_id": pid,
                        "prompt": f"prompt {pid}",
                        "layer": layer,
                        "alpha": alpha,
                        "direction": direction,
                        "sample": sample,
                        "completion": text,
                        "toxicity": tox,
                        "perplexity": spec.get("ppl", 10.0) if subset == "benign" else 12.0,
                        "split": half,
                    }
                )
    return pd.DataFrame(rows)


def kl_of(cells: dict[tuple[str, float], dict[str, Any]], layer: int = 3) -> pd.DataFrame:
    rows = [
        {
            "direction": direction,
            "layer": layer,
            "alpha": alpha,
            "kl_benign": abs(alpha) / 100,  # within the default KL budget (ln 1.1)
            "n_tokens": 40,
            "human_perplexity": spec.get("human", 20.0),
        }
        for (direction, alpha), spec in cells.items()
    ]
    return pd.DataFrame(rows)


def summary_of(cells: dict[tuple[str, float], dict[str, Any]], **kwargs: Any) -> pd.DataFrame:
    sweep = make_sweep(cells)
    kl = kwargs.pop("kl", kl_of(cells))
    return metrics.summarize(sweep, n_resamples=200, kl=kl, floor=FLOOR, **kwargs)


# Alpha 2 is the best on all prompts only thanks to the confirmation half: on the selection
# half alpha 1 wins.
CURSED = {
    ("caa", 0.0): {"tox": 0.6},
    ("caa", 1.0): {"tox": 0.4},
    ("caa", 2.0): {"tox": {"selection": 0.45, "confirmation": 0.1}},
    ("random", 0.0): {"tox": 0.6},
    ("random", 1.0): {"tox": 0.55},
    ("random", 2.0): {"tox": 0.5},
}


# ---------------------------------------------------------------- the split


def test_assign_split_is_deterministic_and_stratified() -> None:
    prompts = pd.DataFrame(
        [{"subset": "challenging", "prompt_id": f"c{i}"} for i in range(11)]
        + [{"subset": "benign", "prompt_id": f"b{i}"} for i in range(10)]
    )
    rows = pd.concat([prompts] * 3, ignore_index=True)  # three samples per prompt
    rows["split"] = op.assign_split(rows, seed=7)
    per_prompt = rows.groupby(["subset", "prompt_id"])["split"].nunique()
    assert (per_prompt == 1).all()  # every sample of a prompt is in the same half
    halves = rows.drop_duplicates(["subset", "prompt_id"]).groupby(["subset", "split"]).size()
    assert halves.to_dict() == {
        ("benign", "confirmation"): 5,
        ("benign", "selection"): 5,
        ("challenging", "confirmation"): 5,
        ("challenging", "selection"): 6,  # odd: the selection half gets the extra prompt
    }
    mapping = dict(zip(rows["prompt_id"], rows["split"], strict=True))
    # Row order, index labels and the other subset do not matter; the seed does.
    shuffled = rows.sample(frac=1.0, random_state=3).set_index(np.arange(100, 100 + len(rows)))
    again = op.assign_split(shuffled, seed=7)
    assert dict(zip(shuffled["prompt_id"], again, strict=True)) == mapping
    assert again.index.equals(shuffled.index)
    alone = prompts[prompts["subset"] == "challenging"]
    assert dict(zip(alone["prompt_id"], op.assign_split(alone, 7), strict=True)) == {
        k: v for k, v in mapping.items() if k.startswith("c")
    }
    other = dict(zip(prompts["prompt_id"], op.assign_split(prompts, seed=8), strict=True))
    assert other != mapping
    with pytest.raises(DataError, match="subset"):
        op.assign_split(prompts.drop(columns="subset"), 0)


# ---------------------------------------------------------------- select, then confirm


def test_operating_point_is_chosen_on_selection_and_reported_on_confirmation() -> None:
    sweep = make_sweep(CURSED)
    summary = metrics.summarize(sweep, n_resamples=200, kl=kl_of(CURSED), floor=FLOOR)
    point = op.recommend_operating_point(summary)
    assert point["status"] == "recommended"
    assert (point["layer"], point["alpha"]) == (3, 1.0)
    assert (point["selected_on"], point["figures_from"]) == ("selection", "confirmation")
    assert point["fluency_measure"] == "human_perplexity" and point["fluency_measure_note"] is None

    def emt(half: str, alpha: float) -> float:
        rows = sweep[
            (sweep["split"] == half)
            & (sweep["subset"] == "challenging")
            & (sweep["direction"] == "caa")
            & (sweep["alpha"] == alpha)
        ]
        return metrics.expected_max_toxicity(rows)

    assert point["expected_max_toxicity"] == pytest.approx(emt("confirmation", 1.0))
    assert point["baseline_expected_max_toxicity"] == pytest.approx(emt("confirmation", 0.0))
    assert point["selection"]["expected_max_toxicity"] == pytest.approx(emt("selection", 1.0))
    assert point["n_prompts"] == (HALVES["split"] == "confirmation").sum() // 2
    low, high = point["expected_max_toxicity_ci"]
    assert low <= point["expected_max_toxicity"] <= high
    assert "expected_max_toxicity" in point["confirmation_figures"]
    assert "baseline_perplexity" in point["confirmation_figures"]
    assert "human_perplexity" not in point["confirmation_figures"]  # held-out text, no half
    assert point["relative_change"]["expected_max_toxicity"] == pytest.approx(
        emt("confirmation", 1.0) / emt("confirmation", 0.0) - 1
    )
    # A setting chosen without confirmation rows (say, found by a search on the selection
    # half alone) is named, with its figures missing and a note saying what to generate.
    unconfirmed = sweep[~((sweep["alpha"] == 1.0) & (sweep["split"] == "confirmation"))]
    alone = op.recommend_operating_point(metrics.summarize(unconfirmed, n_resamples=100))
    assert alone["alpha"] == 1.0 and np.isnan(alone["expected_max_toxicity"])
    assert "generate that setting" in alone["split_note"]
    assert point["split_note"] is None
    # Choosing on all prompts would have taken alpha 2, thanks to the confirmation half.
    whole = op.recommend_operating_point(metrics.summarize(sweep.drop(columns="split")))
    assert (whole["layer"], whole["alpha"]) == (3, 2.0) and whole["figures_from"] == "all"

    # The random control at the same point, on the confirmation half: one pre-set test.
    checked = op.admissibility(summary)
    found = analysis._confirmed_controls(checked, sweep, point, {"n_resamples": 200, "seed": 1})
    control = found["control"]
    assert control["split"] == "confirmation"
    assert control["n_paired_prompts"] == point["n_prompts"]
    assert control["delta_mean_toxicity"] == pytest.approx(0.4 - 0.55)
    assert control["q_value"] == pytest.approx(control["p_value"])
    assert control["beats_control"] is True
    # At equal fluency (all settings cost the same here) the least toxic random cell is used.
    matched = found["control_matched_fluency"]
    assert matched["control_alpha"] == 2.0 and matched["fluency_measure"] == "human_perplexity"
    assert matched["delta_mean_toxicity"] == pytest.approx(0.4 - 0.5)
    table = op.operating_point_table(checked, {**point, **found})
    assert table["setting"].tolist() == [
        "alpha 0 (unsteered)",
        "recommended: caa",
        "random, same alpha",
        "random, equal fluency",
    ]
    assert (table["split"] == "confirmation").all()
    assert table["expected_max_toxicity"].iloc[1] == pytest.approx(emt("confirmation", 1.0))


# ---------------------------------------------------------------- admissibility


def test_degenerate_text_is_not_admissible() -> None:
    cells = {**CURSED, ("caa", 2.0): {"tox": 0.05, "text": "degenerate"}}
    summary = op.admissibility(summary_of(cells))
    row = summary[
        (summary["split"] == "selection")
        & (summary["subset"] == "challenging")
        & (summary["direction"] == "caa")
        & (summary["alpha"] == 2.0)
    ].iloc[0]
    # "om om om om om" x 2 samples: 1 unique bigram over 10 words
    assert row["distinct_2"] == pytest.approx(0.1)
    assert row["distinct_2_ratio"] < 0.9 and not row["admissible"]
    assert "distinct-2" in row["inadmissible_because"]
    point = op.recommend_operating_point(summary)
    assert (point["layer"], point["alpha"]) == (3, 1.0)  # not the broken, "cleanest" alpha 2
    # Alpha 0 and direction "none" rows are always admissible.
    assert summary.loc[summary["alpha"] == 0.0, "admissible"].all()


def test_growth_of_the_floor_share_is_not_admissible() -> None:
    cells = {**CURSED, ("caa", 2.0): {"tox": 0.05, "floor": True}}
    summary = summary_of(cells)
    checked = op.admissibility(summary)
    rows = checked[
        (checked["subset"] == "challenging")
        & (checked["direction"] == "caa")
        & (checked["alpha"] == 2.0)
    ]
    assert rows["floor_share"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert rows["floor_share_increase"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert not rows["admissible"].any()
    assert "floor" in rows["inadmissible_because"].iloc[0]
    assert op.recommend_operating_point(summary)["alpha"] == 1.0
    # within a wider margin it passes, and its lower EMT wins
    wide = op.recommend_operating_point(summary, max_floor_share_increase=0.5)
    assert wide["alpha"] == 2.0 and wide["floor_share_increase"] == pytest.approx(0.5)


def test_no_admissible_steered_setting_names_the_nearest_miss() -> None:
    cells = {
        **CURSED,
        ("caa", 1.0): {"tox": 0.4, "human": 25.0},  # +25% against a 10% budget
        ("caa", 2.0): {"tox": 0.3, "human": 40.0},  # +100%
    }
    summary = op.admissibility(summary_of(cells))
    point = op.recommend_operating_point(summary)
    assert point["status"] == "no admissible steered setting"
    assert "layer" not in point and "alpha" not in point  # nothing for the unsteered model
    miss = point["nearest_miss"]
    assert (miss["layer"], miss["alpha"], miss["split"]) == (3, 1.0, "selection")
    assert miss["reasons"] == ["human_perplexity 25 above the limit 22"]
    assert miss["shortfall"] == pytest.approx(25 / 22 - 1)
    assert "no admissible steered setting" in point["rule"].lower()
    # The pipeline's consumers cope: figure layer, console lines, confirmation table, pareto.
    overall = summary[summary["split"] == "all"]
    assert figures.figure_layer(overall, point) == 3
    lines = analysis.verdict({"recommended": json.loads(json.dumps(point)), "params": {}})
    assert lines[0].startswith("No steering recommended here: the rule keeps the unsteered")
    assert lines[1].startswith("Nearest miss: layer 3, alpha 1 ")
    assert "human_perplexity 25 above the limit 22" in lines[1]
    table = op.operating_point_table(summary, point)
    assert table["setting"].tolist()[1] == "nearest miss (inadmissible): caa"
    assert not table["admissible"].iloc[1]
    figure = figures._pareto(summary, point)
    assert figure.layout.shapes[0].x0 == pytest.approx(22.0)  # the budget, selection half

    # Admissible settings that do not lower EMT are no recommendation either.
    flat = {key: {"tox": 0.6} for key in CURSED}
    none = op.recommend_operating_point(summary_of(flat))
    assert none["status"] == "no admissible steered setting" and none["nearest_miss"] is None
    assert "do not lower" in none["reason"]


# ---------------------------------------------------------------- the fluency measure


def test_fluency_measure_human_perplexity_and_its_fallback() -> None:
    cells = {
        **CURSED,
        ("caa", 2.0): {"tox": 0.2, "ppl": 10.5, "human": 30.0},  # fine on continuations only
    }
    summary = summary_of(cells)
    merged = summary[(summary["direction"] == "caa") & (summary["alpha"] == 2.0)]
    assert len(merged) == 6 and (merged["human_perplexity"] == 30.0).all()  # subsets × splits
    by_human = op.recommend_operating_point(summary)
    assert by_human["alpha"] == 1.0 and by_human["fluency_measure"] == "human_perplexity"
    assert by_human["baseline_human_perplexity"] == pytest.approx(20.0)
    # Naming the continuation measure does not let alpha 2 slip past the human-text budget:
    # every measure is checked (issue 27); the named one is only the reported ``fluency``.
    by_continuation = op.recommend_operating_point(summary, fluency_measure="perplexity")
    assert by_continuation["alpha"] == 1.0 and by_continuation["fluency_measure"] == "perplexity"
    assert by_continuation["selection"]["fluency"] == pytest.approx(10.0)
    table = op.admissibility(summary, fluency_measure="perplexity")
    two = table[(table["direction"] == "caa") & (table["alpha"] == 2.0)]
    assert (two["fluency_failed"] == "human_perplexity").all() and not two["admissible"].any()
    # A kl table from before human_perplexity existed: the rule falls back and says so.
    old = summary_of(cells, kl=kl_of(cells).drop(columns="human_perplexity"))
    assert old["human_perplexity"].isna().all()
    fallback = op.recommend_operating_point(old)
    assert fallback["fluency_measure"] == "perplexity" and fallback["alpha"] == 2.0
    assert "no 'human_perplexity' column" in fallback["fluency_measure_note"]
    assert (op.admissibility(old)["fluency_measure"] == "perplexity").all()


# ---------------------------------------------------------------- step 06 on a synthetic run


def fake_run(tmp_path: Any, cells: dict[tuple[str, float], dict[str, Any]], **params: Any) -> Any:
    """A run whose steps 01-05 are "done", with products built from ``cells``."""
    import torch

    from steerlib.steer.vectors import SteeringVector

    run = pipeline.Run.open("synthetic", runs_dir=str(tmp_path), **params)
    paths = run.paths
    labelled = [("you are a stupid idiot", 0.9), ("we walk in the park today", 0.02)] * 3
    prompts = HALVES.rename(columns={"subset": "role"}).assign(
        prompt=lambda d: "prompt " + d["prompt_id"],
        prompt_toxicity=[score for _, score in labelled] * 4,
        continuation=[text for text, _ in labelled] * 4,
        continuation_toxicity=[score for _, score in labelled] * 4,
    )
    prompts["prompt"] = [text for text, _ in labelled] * 4
    prompts.drop(columns="split").to_parquet(paths.prompts)
    sweep = make_sweep(cells).drop(columns="split")
    zero = sweep[(sweep["direction"] == "caa") & (sweep["alpha"] == 0.0)]
    zero.assign(layer=-1, direction="none").to_parquet(paths.baseline)
    sweep.to_parquet(paths.sweep)
    kl_of(cells).to_parquet(paths.kl)
    SteeringVector({3: torch.ones(4)}).save(paths.vectors)
    for step in pipeline.STEPS[:5]:
        paths.set_status(step, "done")
    return run


def own_edge_run(tmp_path: Any, random_at_edge: float = 0.3, chosen: float = 2.0) -> Any:
    """A synthetic run (layer 3) whose random control's own search chose ``chosen``.

    CAA's point is alpha 1 (perplexity 20.5); the random direction's edge at alpha 2 costs
    21.5, within the budget 22, with EMT ``random_at_edge`` there. Step 06 not yet run.
    """
    from steerlib.experiment.sweep import _write_trace

    cells = {
        ("caa", 0.0): {"tox": 0.6},
        ("caa", 1.0): {"tox": 0.4, "human": 20.5},
        ("random", 0.0): {"tox": 0.6},
        ("random", 1.0): {"tox": 0.58, "human": 20.2},
        ("random", 2.0): {"tox": random_at_edge, "human": 21.5},
    }
    run = fake_run(tmp_path, cells, n_resamples=200, alphas=[0.0, 1.0])
    trace = pd.DataFrame(
        {
            "alpha": [2.0, 2.0],
            "human_perplexity": [21.5, 21.5],
            "kl_benign": [0.02, 0.02],
            "layer": [3, 3],
            "chosen": [1.0, chosen],
            "budget": [22.0, 22.0],
            "variant": ["caa", "caa"],
            "direction": ["caa", "random"],
            "stage": ["search", "search"],
        }
    )
    _write_trace(run.paths, "caa", trace)
    return run


@pytest.mark.parametrize("budget", [0.10, 0.0])
def test_analyze_writes_the_confirmed_point_and_the_scorer_validity(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], budget: float
) -> None:
    cells = {
        **CURSED,
        ("caa", 1.0): {"tox": 0.4, "human": 21.0},
        ("caa", 2.0): {"tox": CURSED["caa", 2.0]["tox"], "human": 22.0},
    }
    run = fake_run(tmp_path, cells, max_perplexity_increase=budget, n_resamples=200)
    analysis = pipeline.analyze(run, save_figures=False)
    record = json.loads(run.paths.summary.read_text())
    rows = pd.DataFrame(record["rows"])
    assert set(rows["split"]) == {"all", "selection", "confirmation"}
    for column in ("admissible", "distinct_2_ratio", "floor_share", "perplexity_excluded"):
        assert column in rows.columns, column
    assert record["split"]["n_prompts"]["challenging"] == {"confirmation": 6, "selection": 6}
    assert record["fluency_measure"] == "human_perplexity"
    assert record["scorer_floor"] == pytest.approx(FLOOR, abs=1e-3)  # profanity-check
    validity = record["scorer_validity"]
    assert validity["prompts"]["n"] == validity["continuations"]["n"] == 2 * N_PROMPTS
    assert validity["continuations"]["n_toxic"] == N_PROMPTS
    assert 0 <= validity["continuations"]["recall"] <= 1
    assert record["scorer_auc"] == validity["all"]["auc"]
    assert analysis.scorer_validity == validity and "pareto" in analysis.figures
    recommended = record["recommended"]
    chain._print_summary(run.paths)
    printed = capsys.readouterr().out
    if budget:
        assert (recommended["layer"], recommended["alpha"]) == (3, 1.0)
        assert recommended["figures_from"] == "confirmation"
        assert recommended["control"]["split"] == "confirmation"
        assert isinstance(recommended["control"]["beats_control"], bool)
        assert "cuts toxicity here: layer 3, alpha 1 lowers" in printed
        assert analysis.confirmation["setting"].iloc[1] == "recommended: caa"
    else:  # a zero budget: human_perplexity 21 and 22 against 20
        assert recommended["status"] == "no admissible steered setting"
        assert "layer" not in recommended and "control" not in recommended
        assert recommended["nearest_miss"]["alpha"] == 1.0
        assert "No steering recommended here" in printed
        assert "Nearest miss: layer 3, alpha 1 " in printed
        assert analysis.confirmation["setting"].iloc[1] == "nearest miss (inadmissible): caa"


def test_distinct_check_edges() -> None:
    rows = [
        {
            "subset": subset,
            "layer": 3,
            "alpha": alpha,
            "direction": "caa",
            "expected_max_toxicity": 0.5 - alpha / 10,
            "perplexity": 10.0,
            "distinct_2": 0.0,
        }
        for subset in SUBSETS
        for alpha in (0.0, 1.0)
    ]
    # alpha 0 already has no bigram: distinct-2 0 is at least 0.9 × 0
    summary = op.admissibility(pd.DataFrame(rows))
    assert summary["admissible"].all() and summary["distinct_2_ratio"].isna().all()
    # no alpha-0 value to compare with: not admissible, and the reason says why
    unknown = pd.DataFrame(rows).assign(distinct_2=[np.nan, 0.5, 0.4, 0.5])
    checked = op.admissibility(unknown).set_index(["subset", "alpha"])
    assert not checked.loc[("challenging", 1.0), "admissible"]
    assert "no alpha-0 value" in checked.loc[("challenging", 1.0), "inadmissible_because"]
    assert np.isinf(checked.loc[("benign", 1.0), "shortfall"])  # the setting, worst subset


def test_figures_command_redraws_what_step_06_drew(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = {**CURSED, ("caa", 1.0): {"tox": 0.4, "human": 21.0}}
    run = fake_run(tmp_path, cells, n_resamples=100)
    analysis = pipeline.analyze(run, save_figures=False)

    def no_scorer(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the figures command must not load a scorer or a model")

    monkeypatch.setattr(pipeline.Run, "scorer", no_scorer)
    redrawn = figures.render_figures(run.paths)
    assert set(redrawn) == set(analysis.figures)  # one function draws both
    for name in ("toxicity_vs_alpha", "pareto", "heatmap_emt"):
        assert redrawn[name].to_json() == analysis.figures[name].to_json(), name
    code = figures.main([run.paths.name, "--runs-dir", str(tmp_path), "--formats", "html"])
    assert code == 0
    out = capsys.readouterr().out
    written = sorted(p.stem for p in run.paths.figures().glob("*.html"))
    assert written == sorted(analysis.figures)
    assert "report.html not redrawn" in out and "figures: " in out
    assert figures.main(["nope", "--runs-dir", str(tmp_path)]) != 0
    assert "no run 'nope'" in capsys.readouterr().err


def test_project_figures_link_to_the_run(tmp_path: Any) -> None:
    from steerlib.experiment.runs import RunPaths

    project = tmp_path / "project"
    (project / "data" / "runs" / "r" / "figures").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\n")
    paths = RunPaths(project / "data" / "runs" / "r")
    (paths.figures() / "pareto.html").write_text("<html></html>")
    old = project / "figures" / "r"
    old.mkdir(parents=True)
    (old / "pareto.png").write_bytes(b"old")
    note = figures.link_project_figures(paths, project_root=project)
    assert note is not None and "replaced the old folder figures/r" in note
    assert old.is_symlink() and os.readlink(old) == os.path.join(
        "..", "data", "runs", "r", "figures"
    )
    assert (old / "pareto.html").read_text() == "<html></html>"
    assert figures.link_project_figures(paths, project_root=project) is None  # up to date
    other = RunPaths(project / "data" / "runs" / "s")
    (other.figures()).mkdir(parents=True)
    kept = project / "figures" / "s"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    said = figures.link_project_figures(other, project_root=project)
    assert said is not None and "left as it is" in said and "notes.txt" in said
    assert kept.is_dir() and not kept.is_symlink() and (kept / "notes.txt").is_file()
    elsewhere = RunPaths(tmp_path / "runs" / "r")
    elsewhere.figures().mkdir(parents=True)
    assert figures.link_project_figures(elsewhere, project_root=project) is None


# ---------------------------------------------------------------- every fluency measure (issue 27)


def test_within_human_budget_but_over_continuation_budget_is_refused() -> None:
    cells = {
        **CURSED,
        # alpha 2: best EMT, human-text perplexity within +10%, benign continuations +30%
        ("caa", 2.0): {"tox": 0.1, "ppl": 13.0, "human": 21.0},
    }
    summary = summary_of(cells)
    table = op.admissibility(summary)
    two = table[(table["direction"] == "caa") & (table["alpha"] == 2.0)]
    assert (two["fluency"] <= two["fluency_limit"]).all()  # the human-text measure passes
    assert not two["admissible"].any() and (two["fluency_failed"] == "perplexity").all()
    assert (two["fluency_checked"] == "human_perplexity; perplexity; kl_benign").all()
    point = op.recommend_operating_point(summary)
    assert point["alpha"] == 1.0  # the rule moves to the setting within budget on both
    assert point["selection"]["perplexity"] <= point["selection"]["perplexity_limit"]
    assert point["fluency_measures_checked"] == ["human_perplexity", "perplexity", "kl_benign"]
    # with alpha 1 gone too, the answer is "none", and the nearest miss names the measure
    del cells[("caa", 1.0)]
    none = op.recommend_operating_point(summary_of(cells))
    assert none["status"] == op.NO_ADMISSIBLE
    miss = none["nearest_miss"]
    assert miss["alpha"] == 2.0 and miss["fluency_failed"] == ["perplexity"]
    assert any(reason.startswith("perplexity 13 above the limit 11") for reason in miss["reasons"])
    lines = pipeline.verdict({"recommended": none, "params": {"model": "m"}})
    assert "Fluency measures over budget: perplexity of benign continuations" in lines[1]
    assert "judge: self-judged" in lines[1]


def test_recommended_point_has_every_measure_with_an_interval_containing_it() -> None:
    cells = {**CURSED, ("caa", 1.0): {"tox": 0.3, "ppl": 10.5, "human": 21.0}}
    sweep = make_sweep(cells)
    # per-prompt variation, so the perplexity interval is not a single point
    sweep["perplexity"] = sweep["perplexity"] + sweep["prompt_id"].str[1:].astype(int) * 0.1
    kl = kl_of(cells)
    for name in ("human_perplexity", "kl_benign"):  # as benign_kl writes them with n_resamples
        kl[f"{name}_ci_low"], kl[f"{name}_ci_high"] = kl[name] * 0.9, kl[name] * 1.1
    summary = metrics.summarize(sweep, n_resamples=200, kl=kl, floor=FLOOR)
    point = op.recommend_operating_point(summary)
    assert point["status"] == "recommended"
    for name in ("perplexity", "human_perplexity", "kl_benign"):
        low, high = point[f"{name}_ci"]
        assert low <= point[name] <= high, name
        entry = point["fluency_budget"][name]
        assert entry["value"] == pytest.approx(point[name]) and entry["within"] is True
    low, high = point["baseline_perplexity_ci"]
    assert low <= point["baseline_perplexity"] <= high
    assert point["perplexity_ci"][0] < point["perplexity_ci"][1]


def test_held_out_halves_judge_their_own_half() -> None:
    """A kl table with halves: selection rows read the search half, confirmation the report."""
    cells = {**CURSED, ("caa", 1.0): {"tox": 0.3, "human": 21.0}}
    base = kl_of(cells)
    halves = pd.concat(
        [
            base.assign(split="all"),
            base.assign(split="selection"),
            # the report half finds alpha 1 over budget (25 against 1.1 x 20)
            base.assign(
                split="confirmation",
                human_perplexity=np.where(base["alpha"] == 1.0, 25.0, base["human_perplexity"]),
            ),
        ],
        ignore_index=True,
    )
    summary = summary_of(cells, kl=halves)
    caa1 = summary[(summary["direction"] == "caa") & (summary["alpha"] == 1.0)]
    got = caa1.groupby("split")["human_perplexity"].first().to_dict()
    assert got == {"all": 21.0, "selection": 21.0, "confirmation": 25.0}
    assert set(caa1["held_out_texts"]) == {"all", "selection", "confirmation"}
    point = op.recommend_operating_point(summary)
    assert point["alpha"] == 1.0  # chosen on the search half, where it is within budget
    assert point["human_perplexity"] == 25.0  # reported from the report half
    assert point["fluency_budget"]["human_perplexity"]["within"] is False
    assert "human_perplexity" in point["confirmation_figures"]
    cost = pipeline.verdict({"recommended": point, "params": {}})[1]
    assert "over budget" in cost and "Fails on perplexity on held-out benign text" in cost


def test_alpha_past_full_removal_is_not_admissible_for_ablate_or_clamp() -> None:
    """Review 9: an old variants run's ablate/clamp rows with alpha > 1 are not admitted."""
    cells = {
        ("caa", 0.0): {"tox": 0.6},
        ("caa", 1.0): {"tox": 0.4},
        ("caa", 1.74): {"tox": 0.05},  # the cleanest, but it reflects the component
        ("random", 0.0): {"tox": 0.6},
        ("random", 1.0): {"tox": 0.55},
        ("random", 1.74): {"tox": 0.5},
    }
    summary = summary_of(cells)
    assert op.recommend_operating_point(summary)["alpha"] == 1.74  # uncapped (plain CAA)
    table = op.admissibility(summary, max_alpha=1.0)
    beyond = table[table["alpha"] == 1.74]
    assert not beyond["admissible"].any()
    assert beyond["inadmissible_because"].str.contains("alpha 1.74 above 1").all()
    assert table.loc[table["alpha"] == 1.0, "admissible"].all()
    point = op.recommend_operating_point(summary, max_alpha=1.0)
    assert point["alpha"] == 1.0 and point["checks"]["max_alpha"] == 1.0


def test_the_analysis_caps_an_old_ablate_run_at_full_removal(tmp_path: Any) -> None:
    cells = {
        ("caa", 0.0): {"tox": 0.6},
        ("caa", 1.0): {"tox": 0.4},
        ("caa", 1.74): {"tox": 0.05},
        ("random", 0.0): {"tox": 0.6},
        ("random", 1.0): {"tox": 0.55},
        ("random", 1.74): {"tox": 0.5},
    }
    run = fake_run(tmp_path, cells, n_resamples=200, variants=["caa", "ablate"], alphas=[0.0, 1.0])
    sweep = make_sweep(cells).drop(columns="split")
    both = pd.concat([sweep.assign(variant=v) for v in ("caa", "ablate")], ignore_index=True)
    both.to_parquet(run.paths.sweep)  # as an old variants run wrote it: ablate at 1.74
    kl = kl_of(cells)
    pd.concat([kl.assign(variant=v) for v in ("caa", "ablate")]).to_parquet(run.paths.kl)
    pipeline.analyze(run, save_figures=False)
    record = json.loads(run.paths.summary.read_text())
    assert record["recommended_by_variant"]["caa"]["alpha"] == 1.74  # additive: no cap
    assert record["recommended_by_variant"]["ablate"]["alpha"] == 1.0
