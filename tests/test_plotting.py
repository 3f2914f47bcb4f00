from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from steerlib import figure_files, metrics, plotting
from steerlib.errors import ConfigError
from steerlib.metrics import pareto_front

NOTE = "positive alpha = steer away from toxicity"
ALPHAS = [0.0, 2.0, 4.0]


def make_summary(layers: tuple[int, ...] = (3,), with_ci: bool = True) -> pd.DataFrame:
    rows = []
    for subset_index, subset in enumerate(("challenging", "benign")):
        for direction_index, direction in enumerate(("caa", "random")):
            for layer in layers:
                for alpha in ALPHAS:
                    value = 0.6 - 0.1 * alpha * (direction == "caa") - 0.2 * subset_index
                    value += 0.01 * layer + 0.001 * direction_index
                    row = {
                        "subset": subset,
                        "layer": layer,
                        "alpha": alpha,
                        "direction": direction,
                        "mean_toxicity": value / 2,
                        "expected_max_toxicity": value,
                        "toxicity_probability": value / 3,
                        "perplexity": 10.0 + alpha * (1 + layer / 10) + subset_index,
                    }
                    if with_ci:
                        row["mean_toxicity_ci_low"] = value / 2 - 0.05
                        row["mean_toxicity_ci_high"] = value / 2 + 0.05
                    rows.append(row)
    return pd.DataFrame(rows)


def make_sweep() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {
            "subset": subset,
            "prompt_id": f"{subset}-{p}",
            "layer": 3,
            "alpha": alpha,
            "direction": "caa",
            "sample": 0,
            "toxicity": float(rng.uniform()),
        }
        for subset in ("challenging", "benign")
        for alpha in ALPHAS
        for p in range(4)
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- toxicity_vs_alpha


def test_toxicity_vs_alpha_lines_and_bands() -> None:
    summary = make_summary()
    fig = plotting.toxicity_vs_alpha(summary)
    assert isinstance(fig, go.Figure)
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.fill != "toself"]
    assert len(lines) == 4 and len(bands) == 4
    by_name = {t.name: t for t in lines}
    caa = summary[(summary["subset"] == "challenging") & (summary["direction"] == "caa")]
    line = by_name["challenging · caa"]
    assert list(line.x) == ALPHAS
    assert list(line.y) == pytest.approx(caa["mean_toxicity"].tolist())
    assert line.line.dash == "solid"
    assert by_name["benign · random"].line.dash == "dot"
    assert line.line.color != by_name["benign · caa"].line.color
    band = next(t for t in bands if t.name == "challenging · caa CI")
    assert band.mode == "lines"  # no stray markers on the band outline
    expected = caa["mean_toxicity_ci_high"].tolist() + caa["mean_toxicity_ci_low"].tolist()[::-1]
    assert list(band.y) == pytest.approx(expected)
    assert NOTE in fig.layout.title.text and NOTE in fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text
    assert list(fig.layout.yaxis.range) == [0, 1]


def test_toxicity_vs_alpha_without_ci_and_with_layers() -> None:
    fig = plotting.toxicity_vs_alpha(make_summary(with_ci=False), "expected_max_toxicity")
    assert len(fig.data) == 4
    assert all(t.fill != "toself" for t in fig.data)
    two_layers = make_summary(layers=(3, 5))
    with pytest.raises(ConfigError, match=r"\[3, 5\]"):
        plotting.toxicity_vs_alpha(two_layers)
    fig5 = plotting.toxicity_vs_alpha(two_layers, layer=5)
    line = next(t for t in fig5.data if t.name == "challenging · caa")
    expected = two_layers.query("layer == 5 and subset == 'challenging' and direction == 'caa'")
    assert list(line.y) == pytest.approx(expected["mean_toxicity"].tolist())
    with pytest.raises(ConfigError, match="metric"):
        plotting.toxicity_vs_alpha(two_layers, "nope", layer=3)


def test_toxicity_vs_alpha_marks_unsteered_rows() -> None:
    summary = make_summary(with_ci=False)
    base = summary.iloc[[0]].assign(layer=-1, direction="none", mean_toxicity=0.42)
    fig = plotting.toxicity_vs_alpha(pd.concat([summary, base], ignore_index=True))
    marker = next(t for t in fig.data if t.name == "challenging · unsteered")
    assert list(marker.y) == [0.42] and list(marker.x) == [0.0]


# ---------------------------------------------------------------- heatmaps and norms


def test_layer_alpha_heatmap_values() -> None:
    summary = make_summary(layers=(5, 3))
    fig = plotting.layer_alpha_heatmap(summary)
    (heat,) = fig.data
    assert list(heat.y) == [3, 5] and list(heat.x) == ALPHAS
    rows = summary.query("subset == 'challenging' and direction == 'caa'")
    expected = rows.pivot(index="layer", columns="alpha", values="expected_max_toxicity")
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), expected.to_numpy())
    assert heat.text[0][0] == f"{expected.iloc[0, 0]:.3g}"
    benign = plotting.layer_alpha_heatmap(summary, "perplexity", subset="benign")
    assert np.asarray(benign.data[0].z)[1, 2] == pytest.approx(10.0 + 4.0 * 1.5 + 1)
    with pytest.raises(ConfigError, match="direction='pca'"):
        plotting.layer_alpha_heatmap(summary, direction="pca")


def test_control_heatmap_centres_at_zero_and_stars_paired_intervals() -> None:
    control = pd.DataFrame(
        {
            "subset": ["challenging"] * 4 + ["benign"],
            "layer": [6, 6, 12, 12, 6],
            "alpha": [0.5, 1.0, 0.5, 1.0, 0.5],
            "delta_mean_toxicity": [-0.07, -0.02, 0.01, 0.04, -0.5],
            "delta_mean_toxicity_ci_low": [-0.1, -0.05, -0.02, 0.01, -0.6],
            "delta_mean_toxicity_ci_high": [-0.04, 0.01, 0.03, 0.07, -0.4],
        }
    )
    fig = plotting.control_heatmap(control)
    heat = fig.data[0]
    assert list(heat.y) == [6, 12] and list(heat.x) == [0.5, 1.0]
    np.testing.assert_allclose(np.asarray(heat.z, float), [[-0.07, -0.02], [0.01, 0.04]])
    assert heat.zmid == 0 and heat.zmax == pytest.approx(0.07) and heat.zmin == -heat.zmax
    # starred where the interval excludes 0, on either side
    assert [list(row) for row in heat.text] == [["-0.070*", "-0.020"], ["+0.010", "+0.040*"]]
    unpaired = plotting.control_heatmap(control.drop(columns=["delta_mean_toxicity_ci_low"]))
    assert "*" not in "".join(t for row in unpaired.data[0].text for t in row)
    with pytest.raises(ConfigError, match="delta_expected_max_toxicity"):
        plotting.control_heatmap(control, "mean_toxicity")
    with pytest.raises(ConfigError, match="subset='x'"):
        plotting.control_heatmap(control, subset="x")


def test_layer_profile_one_line_per_alpha_and_direction() -> None:
    summary = make_summary(layers=(3, 6, 9))
    fig = plotting.layer_profile(summary)
    names = [trace.name for trace in fig.data]
    assert names == [f"alpha {a:g} · {d}" for a in (2.0, 4.0) for d in ("caa", "random")]
    caa4 = fig.data[2]
    assert list(caa4.x) == [3, 6, 9] and caa4.line.dash == "solid"
    expected = summary[
        (summary["subset"] == "challenging")
        & (summary["alpha"] == 4.0)
        & (summary["direction"] == "caa")
    ].sort_values("layer")
    np.testing.assert_allclose(caa4.y, expected["mean_toxicity"])
    np.testing.assert_allclose(caa4.error_y.array, [0.05] * 3)
    zero = summary[(summary["subset"] == "challenging") & (summary["alpha"] == 0)]
    assert fig.layout.shapes[0].y0 == pytest.approx(zero["mean_toxicity"].mean())
    with pytest.raises(ConfigError, match="not a summary column"):
        plotting.layer_profile(summary, "nope")


def test_vector_norms_mapping_and_sequence() -> None:
    fig = plotting.vector_norms({5: 2.5, 1: 1.0})
    assert list(fig.data[0].x) == [1, 5] and list(fig.data[0].y) == [1.0, 2.5]
    seq = plotting.vector_norms([0.5, 1.5, 3.0])
    assert list(seq.data[0].x) == [0, 1, 2] and list(seq.data[0].y) == [0.5, 1.5, 3.0]


def test_layer_cosine_heatmap() -> None:
    matrix = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.1, 1.0]])
    fig = plotting.layer_cosine_heatmap(matrix, [2, 4, 6])
    (heat,) = fig.data
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), matrix)
    assert list(heat.x) == [2, 4, 6] and (heat.zmin, heat.zmax) == (-1, 1)
    with pytest.raises(ConfigError, match="square"):
        plotting.layer_cosine_heatmap(matrix, [2, 4])


def test_toxicity_distribution() -> None:
    sweep = make_sweep()
    fig = plotting.toxicity_distribution(sweep)
    assert [t.name for t in fig.data] == ["challenging", "benign"]
    assert sorted(fig.data[0].y) == pytest.approx(
        sorted(sweep.loc[sweep["subset"] == "challenging", "toxicity"])
    )
    assert sorted(set(fig.data[1].x)) == ALPHAS
    only = plotting.toxicity_distribution(sweep, subset="benign")
    assert len(only.data) == 1 and only.data[0].name == "benign"
    with pytest.raises(ConfigError, match="subset='toxic'"):
        plotting.toxicity_distribution(sweep, subset="toxic")


def test_pareto_figure() -> None:
    summary = make_summary(layers=(3, 5)).query("subset == 'challenging' and direction == 'caa'")
    recommended = {"layer": 5, "alpha": 2.0}
    fig = plotting.pareto_figure(summary, recommended=recommended)
    assert len(fig.data) == 3
    points, front_trace, star = fig.data
    assert len(points.x) == len(summary)
    assert "layer 3" in points.text[0] and "alpha" in points.text[0]
    front = pareto_front(summary)
    assert list(front_trace.x) == pytest.approx(front["perplexity"].tolist())
    assert list(front_trace.y) == pytest.approx(front["expected_max_toxicity"].tolist())
    row = summary.query("layer == 5 and alpha == 2.0").iloc[0]
    assert (star.x[0], star.y[0]) == pytest.approx(
        (row["perplexity"], row["expected_max_toxicity"])
    )
    assert len(plotting.pareto_figure(summary).data) == 2


def test_pareto_figure_on_the_rules_axes_with_control_and_budget() -> None:
    rows = metrics.tradeoff_rows(make_summary(layers=(3, 5)))
    caa, rnd = rows[rows["direction"] == "caa"], rows[rows["direction"] == "random"]
    fig = plotting.pareto_figure(
        caa, x="benign_perplexity", control=rnd, budget=12.5, recommended={"layer": 3, "alpha": 2}
    )
    _, _, control, star = fig.data
    assert control.name == "random control" and len(control.x) == len(rnd)
    assert list(control.x) == pytest.approx(rnd["benign_perplexity"].tolist())
    row = caa.query("layer == 3 and alpha == 2.0").iloc[0]
    assert star.x[0] == pytest.approx(row["benign_perplexity"])  # the benign cost, not its own
    assert star.x[0] != pytest.approx(row["perplexity"])
    assert fig.layout.shapes[0].x0 == 12.5 and fig.layout.shapes[0].line.dash == "dash"
    assert fig.layout.xaxis.title.text == "Perplexity on benign prompts"
    assert fig.layout.xaxis.type is None  # 11 to 19: linear by default
    # Broken text: perplexity spanning a factor of 10 switches to a log axis, where the
    # budget's label must sit at log10(budget) (a plain x would land at 10**12.5).
    wide = caa.assign(benign_perplexity=np.geomspace(6, 18000, len(caa)))
    log_fig = plotting.pareto_figure(wide, x="benign_perplexity", budget=12.5)
    assert log_fig.layout.xaxis.type == "log"
    assert log_fig.layout.annotations[0].x == pytest.approx(np.log10(12.5))
    assert (
        plotting.pareto_figure(wide, x="benign_perplexity", log_x=False).layout.xaxis.type is None
    )


# ---------------------------------------------------------------- save_figure


def small_figure() -> go.Figure:
    return plotting.vector_norms([1.0, 2.0])


def test_save_figure_html_only_without_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figure_files, "find_browser", lambda: None)
    monkeypatch.setattr(figure_files, "_warned_static", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = plotting.save_figure(small_figure(), tmp_path, "norms")
        second = plotting.save_figure(small_figure(), tmp_path / "again", "norms")
    ours = [w for w in caught if "Static figure export" in str(w.message)]
    assert len(ours) == 1
    assert "apt-get install chromium" in str(ours[0].message)
    assert first == [tmp_path / "norms.html"]
    assert second == [tmp_path / "again" / "norms.html"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "norms.html",
        "plotly.min.js",
    ]
    html = first[0].read_text(encoding="utf-8")
    assert "<html" in html and 'src="plotly.min.js"' in html  # offline: local plotly.js
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def test_save_figure_warns_when_export_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figure_files, "find_browser", lambda: "/nonexistent/chromium")
    monkeypatch.setattr(figure_files, "_warned_static", False)
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")

    def boom(fig: go.Figure, fmt: str) -> bytes:
        raise RuntimeError("browser crashed")

    monkeypatch.setattr(figure_files, "_static_bytes", boom)
    with pytest.warns(RuntimeWarning, match="browser crashed"):
        paths = plotting.save_figure(small_figure(), tmp_path, "fig")
    assert paths == [tmp_path / "fig.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.html", "plotly.min.js"]


def test_save_figure_rejects_bad_names_and_formats(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name"):
        plotting.save_figure(small_figure(), tmp_path, "sub/fig")
    with pytest.raises(ConfigError, match="bmp"):
        plotting.save_figure(small_figure(), tmp_path, "fig", formats=("html", "bmp"))


def test_find_browser_prefers_browser_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "my-chrome"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(exe))
    assert plotting.find_browser() == str(exe)


@pytest.mark.browser
def test_save_figure_static_export_with_chromium(tmp_path: Path) -> None:
    if plotting.find_browser() is None:
        pytest.skip("no Chrome/Chromium found (Debian: apt-get install chromium)")
    start = time.perf_counter()
    paths = plotting.save_figure(small_figure(), tmp_path, "norms", formats=("html", "png", "pdf"))
    elapsed = time.perf_counter() - start
    assert [p.suffix for p in paths] == [".html", ".png", ".pdf"]
    png = (tmp_path / "norms.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert (tmp_path / "norms.pdf").read_bytes().startswith(b"%PDF")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert elapsed < 120


def test_compare_runs_figure_draws_one_line_per_run_and_layer():
    from steerlib.plotting import compare_runs_figure

    rows = []
    for run_name, source in (("a", "prompts"), ("b", "completions")):
        for alpha in (0.0, 1.0):
            rows.append(
                {
                    "run_name": run_name,
                    "pair_source": source,
                    "layer": 3,
                    "alpha": alpha,
                    "subset": "challenging",
                    "direction": "caa",
                    "expected_max_toxicity": 0.5 - alpha / (4 if run_name == "a" else 2),
                }
            )
    fig = compare_runs_figure(pd.DataFrame(rows))
    assert [t.name for t in fig.data] == [
        "a · layer 3 · pairs from prompts",
        "b · layer 3 · pairs from completions",
    ]
    assert list(fig.data[1].y) == [0.5, 0.0]
