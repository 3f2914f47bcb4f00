from __future__ import annotations

import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from steerlib.errors import ConfigError
from steerlib.evaluate import controls
from steerlib.evaluate.metrics import pareto_front
from steerlib.figures import files as figure_files
from steerlib.figures import labels, plotting, style

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
    lines = [t for t in fig.data if t.fill != "toself" and not t.name.startswith("fluency")]
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
    assert NOTE in fig.layout.title.text and NOTE in fig.layout.xaxis2.title.text
    assert "layer 3" in fig.layout.title.text and "CAA vs random control" in fig.layout.title.text
    assert "subsets challenging, benign" in fig.layout.title.text
    assert fig.layout.yaxis.title.text
    # fitted to the lines and bands (0.15..0.35 here), not the fixed 0-1 of a probability
    low, high = fig.layout.yaxis.range
    shown = summary[["mean_toxicity_ci_low", "mean_toxicity_ci_high"]].to_numpy()
    assert low == 0.0 and high >= shown.max()  # clipped at 0: a band dips below it
    assert high < 1.1 * shown.max() and high < 1
    # fluency on a second panel sharing alpha: benign perplexity per direction
    fluency = {t.name: t for t in fig.data if t.name.startswith("fluency")}
    assert set(fluency) == {"fluency · caa", "fluency · random"}
    benign_caa = summary.query("subset == 'benign' and direction == 'caa'").sort_values("alpha")
    assert fluency["fluency · caa"].yaxis == "y2" and fluency["fluency · caa"].xaxis == "x2"
    assert list(fluency["fluency · caa"].y) == pytest.approx(benign_caa["perplexity"].tolist())
    assert fig.layout.xaxis.matches == "x2" or fig.layout.xaxis2.matches == "x"


def test_toxicity_vs_alpha_fluency_panel_log_and_budget() -> None:
    summary = make_summary()
    broken = summary["alpha"] == 4.0
    summary["human_perplexity"] = np.where(broken, 6.0e6, 20.0 + summary["alpha"])
    fig = plotting.toxicity_vs_alpha(summary, fluency_limit=22.0)
    fluency = next(t for t in fig.data if t.name == "fluency · caa")
    assert list(fluency.y)[-1] == pytest.approx(6.0e6)  # human_perplexity preferred
    assert fig.layout.yaxis2.type == "log"  # 20 to 6e6: decades apart
    low, high = fig.layout.yaxis2.range  # log10 units
    assert low <= np.log10(20.0) and high >= np.log10(6.0e6)
    budget = [shape for shape in fig.layout.shapes if shape.line.color == "firebrick"]
    assert len(budget) == 1 and budget[0].y0 == pytest.approx(22.0)
    note = next(a for a in fig.layout.annotations if a.text == "budget")
    assert note.y == pytest.approx(np.log10(22.0))
    single = plotting.toxicity_vs_alpha(summary, fluency=None)
    assert not any(t.name.startswith("fluency") for t in single.data)
    assert NOTE in single.layout.xaxis.title.text
    with pytest.raises(ConfigError, match="fluency='nope'"):
        plotting.toxicity_vs_alpha(summary, fluency="nope")


def test_toxicity_vs_alpha_without_ci_and_with_layers() -> None:
    fig = plotting.toxicity_vs_alpha(
        make_summary(with_ci=False), "expected_max_toxicity", fluency=None
    )
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
    assert "subset challenging" in fig.layout.title.text and "CAA" in fig.layout.title.text
    assert "layers 3, 5" in fig.layout.title.text
    assert heat.zmin is None and heat.customdata is None  # linear colours, fitted to data
    benign = plotting.layer_alpha_heatmap(summary, "perplexity", subset="benign")
    assert np.asarray(benign.data[0].z)[1, 2] == pytest.approx(10.0 + 4.0 * 1.5 + 1)
    with pytest.raises(ConfigError, match="direction='pca'"):
        plotting.layer_alpha_heatmap(summary, direction="pca")


def test_layer_alpha_heatmap_log_colours_when_values_span_decades() -> None:
    summary = make_summary(layers=(3, 5))
    outlier = (summary["layer"] == 5) & (summary["alpha"] == 4.0)
    summary.loc[outlier, "perplexity"] = 6.0e6
    heat = plotting.layer_alpha_heatmap(summary, "perplexity", subset="benign").data[0]
    values = np.asarray(heat.customdata, dtype=float)
    assert values[1, 2] == pytest.approx(6.0e6)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), np.log10(values))
    assert heat.text[1][2] == "6e+06" and "log" in heat.colorbar.title.text
    ticks = [float(t) for t in heat.colorbar.ticktext]
    np.testing.assert_allclose(heat.colorbar.tickvals, np.log10(ticks))
    assert min(ticks) >= values.min() and max(ticks) <= values.max()


def test_control_heatmap_scale_is_set_by_positive_alphas() -> None:
    control = pd.DataFrame(
        {
            "subset": ["challenging"] * 4,
            "layer": [6, 6, 6, 6],
            "alpha": [-1.0, 0.0, 0.5, 1.0],
            "delta_mean_toxicity": [0.4, 0.0, -0.03, -0.05],
        }
    )
    heat = plotting.control_heatmap(control).data[0]
    assert heat.zmid == 0 and heat.zmax == pytest.approx(0.05) and heat.zmin == -heat.zmax
    assert np.asarray(heat.z, float)[0, 0] == pytest.approx(0.4)  # shown, saturated
    only_negative = plotting.control_heatmap(control[control["alpha"] <= 0]).data[0]
    assert only_negative.zmax == pytest.approx(0.4)


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
    assert caa4.line.color != fig.data[0].line.color  # a discrete colour per alpha
    assert fig.data[1].line.color == fig.data[0].line.color  # shared by both directions
    assert (
        "layers 3, 6, 9" in fig.layout.title.text and "subset challenging" in fig.layout.title.text
    )
    assert fig.layout.yaxis.type is None and fig.layout.yaxis.range[1] < 1
    with pytest.raises(ConfigError, match="not a summary column"):
        plotting.layer_profile(summary, "nope")


def test_layer_profile_log_axis_for_a_huge_outlier() -> None:
    summary = make_summary(layers=(3, 6, 9))
    summary.loc[(summary["layer"] == 9) & (summary["alpha"] == 4.0), "perplexity"] = 6.0e6
    fig = plotting.layer_profile(summary, "perplexity", subset="benign")
    assert fig.layout.yaxis.type == "log"
    low, high = fig.layout.yaxis.range
    benign = summary[summary["subset"] == "benign"]["perplexity"]
    assert low <= np.log10(benign.min()) and np.log10(6.0e6) <= high < np.log10(6.0e6) + 1


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
    *per_layer, unsteered, front_trace, star = fig.data
    # The legend lists conditions (layers, unsteered, front, star), never a single alpha.
    assert [t.name for t in per_layer] == ["layer 3", "layer 5"]
    assert unsteered.name == "unsteered (alpha 0)" and front_trace.name == "Pareto front"
    assert star.name == "recommended: layer 5, alpha 2"
    assert len({t.marker.color[0] for t in per_layer}) == 2  # discrete colours
    assert sum(len(t.x) for t in [*per_layer, unsteered]) == len(summary)
    assert sorted(unsteered.x) == [10.0, 10.0] and len(set(unsteered.y)) == 2  # two layers
    first, second = per_layer
    assert "text" in first.mode and list(first.text) == ["L3 α2", "L3 α4"]  # in the image
    assert list(second.text) == ["", "L5 α4"]  # the recommended one is named by the legend
    assert "layer 3" in first.hovertext[0] and "alpha" in first.hovertext[0]
    low, high = fig.layout.yaxis.range
    assert low <= summary["expected_max_toxicity"].min() and high < 1
    assert "layers 3, 5" in fig.layout.title.text and "subset challenging" in fig.layout.title.text
    front = pareto_front(summary)
    assert list(front_trace.x) == pytest.approx(front["perplexity"].tolist())
    assert list(front_trace.y) == pytest.approx(front["expected_max_toxicity"].tolist())
    row = summary.query("layer == 5 and alpha == 2.0").iloc[0]
    assert (star.x[0], star.y[0]) == pytest.approx(
        (row["perplexity"], row["expected_max_toxicity"])
    )
    assert len(plotting.pareto_figure(summary).data) == len(fig.data) - 1  # no star


def test_pareto_figure_on_the_rules_axes_with_control_and_budget() -> None:
    rows = controls.tradeoff_rows(make_summary(layers=(3, 5)))
    caa, rnd = rows[rows["direction"] == "caa"], rows[rows["direction"] == "random"]
    fig = plotting.pareto_figure(
        caa, x="benign_perplexity", control=rnd, budget=12.5, recommended={"layer": 3, "alpha": 2}
    )
    *_, control, star = fig.data
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
    # moved alone, the page falls back to plotly's CDN copy of the same version
    from plotly.io._html import plotly_cdn_url

    local = html.index('src="plotly.min.js"')
    fallback = html.index('typeof window.Plotly === "undefined"')
    assert local < fallback < html.index(plotly_cdn_url()) < html.index("Plotly.newPlot")


def test_save_figure_warns_when_export_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figure_files, "find_browser", lambda: "/nonexistent/chromium")
    monkeypatch.setattr(figure_files, "_warned_static", False)
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")

    def boom(fig: go.Figure, fmt: str, width: int, height: int, scale: float) -> bytes:
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


def test_save_figure_exports_at_print_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(fig: go.Figure, fmt: str, width: int, height: int, scale: float) -> bytes:
        calls.append((fmt, width, height, scale))
        return b"image"

    monkeypatch.setattr(figure_files, "find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(figure_files, "_static_bytes", fake)
    plotting.save_figure(small_figure(), tmp_path, "a", size="column")
    plotting.save_figure(small_figure(), tmp_path, "b", formats=("html", "png"), size=(500, 400))
    column = figure_files.FIGURE_SIZES["column"]
    assert calls[:2] == [("png", *column, 3), ("pdf", *column, 3)]
    assert calls[2] == ("png", 500, 400, 3) and figure_files.STATIC_SCALE >= 3
    with pytest.raises(ConfigError, match="size='huge'"):
        plotting.save_figure(small_figure(), tmp_path, "c", size="huge")


def test_static_export_status_and_ensure_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figure_files, "find_browser", lambda: None)
    line = figure_files.static_export_status("rtp")
    assert line.startswith("figures: HTML only") and "python -m steerlib figures rtp" in line
    assert "python -m steerlib browser --install" in line and "\n" not in line
    ran: list[list[str]] = []

    def runner(command: list[str], timeout: float) -> bool:
        ran.append(command)
        return False

    monkeypatch.setattr(figure_files, "_apt_possible", lambda: True)
    path, said = figure_files.ensure_browser(runner=runner)
    assert path is None and said.startswith("figures: HTML only")
    assert ran[0][:2] == ["apt-get", "update"]  # apt first, then plotly's download
    assert "get_chrome" in ran[-1][-1]
    assert figure_files.ensure_browser(install=False, runner=runner)[0] is None
    assert len(ran) == 2  # nothing installed when only looking

    def installs(command: list[str], timeout: float) -> bool:
        if command[:2] == ["apt-get", "install"]:
            monkeypatch.setattr(figure_files, "find_browser", lambda: "/usr/bin/chromium")
        return True

    path, said = figure_files.ensure_browser(runner=installs)
    assert path == "/usr/bin/chromium" and "installed Debian's chromium" in said
    assert figure_files.static_export_status().startswith("figures: HTML, PNG and PDF")


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
    width, height = figure_files.FIGURE_SIZES["page"]
    scale = figure_files.STATIC_SCALE
    assert struct.unpack(">II", png[16:24]) == (width * scale, height * scale)
    assert (tmp_path / "norms.pdf").read_bytes().startswith(b"%PDF")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert elapsed < 120


def test_compare_runs_figure_draws_one_line_per_run_and_layer():
    from steerlib.figures.plotting import compare_runs_figure

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
    title = fig.layout.title.text
    assert "layer 3" in title and "CAA" in title and "subset challenging" in title
    assert fig.layout.yaxis.range[0] <= 0.0 and fig.layout.yaxis.range[1] >= 0.5


def test_distribution_and_vector_titles_name_what_they_show() -> None:
    fig = plotting.toxicity_distribution(make_sweep(), layer=3, direction="caa")
    assert "layer 3" in fig.layout.title.text and "CAA" in fig.layout.title.text
    low, high = fig.layout.yaxis.range
    tox = make_sweep()["toxicity"]
    assert 0 <= low <= tox.min() and tox.max() <= high <= 1
    assert "layers 1, 5" in plotting.vector_norms({5: 2.5, 1: 1.0}).layout.title.text


# ---------------------------------------------------------------- steering variants


def make_variants_summary(layers: tuple[int, ...] = (3,)) -> pd.DataFrame:
    """Two halves of a summary with plain CAA (and its control) and a gated variant that is
    less toxic at the same alphas and costs half CAA's fluency."""
    caa = make_summary(layers=layers).assign(variant="caa")
    gated = caa[caa["direction"] == "caa"].copy()
    steered = gated["alpha"] != 0
    gated.loc[steered, "expected_max_toxicity"] -= 0.05
    gated.loc[steered, "perplexity"] = 10.0 + (gated.loc[steered, "perplexity"] - 10.0) / 2
    both = pd.concat([caa, gated.assign(variant="gated")], ignore_index=True)
    return pd.concat(
        [both.assign(split="selection"), both.assign(split="confirmation")], ignore_index=True
    )


def test_variants_pareto_figure_labels_every_point_with_a_colour_per_variant() -> None:
    summary = make_variants_summary()
    fig = plotting.variants_pareto_figure(summary, fluency="perplexity")
    names = [trace.name for trace in fig.data]
    assert names == ["caa", "gated", "random control", "unsteered (alpha 0)"]
    colors = [trace.marker.color for trace in fig.data]
    assert len(set(colors)) == len(colors)  # discrete, one per variant
    assert colors[1] == plotting.VARIANT_COLORS["gated"]
    by_name = {trace.name: trace for trace in fig.data}
    for trace in fig.data:  # every point labelled in the image, not only on hover
        assert "text" in trace.mode and all(trace.text) and len(trace.text) == len(trace.x)
    assert list(by_name["gated"].text) == ["gated α2", "gated α4"]
    assert list(by_name["random control"].text) == ["random α2", "random α4"]
    assert list(by_name["unsteered (alpha 0)"].text) == ["unsteered α0"]
    # Cost: the benign perplexity over alpha 0's, in percent (benign alpha 0: 11).
    benign = summary.query("subset == 'benign' and split == 'confirmation' and layer == 3")
    gated_2 = benign.query("variant == 'gated' and alpha == 2.0")["perplexity"].iloc[0]
    assert by_name["gated"].x[0] == pytest.approx(100 * (gated_2 / 11.0 - 1))
    assert by_name["unsteered (alpha 0)"].x[0] == pytest.approx(0.0)
    # Labels point inwards, so none is cut at the plot's edge.
    xs = [x for trace in fig.data for x in trace.x]
    for trace in fig.data:
        for x, position in zip(trace.x, trace.textposition, strict=True):
            assert position.endswith("left" if x > (min(xs) + max(xs)) / 2 else "right")
    title = fig.layout.title.text
    assert "layer 3" in title and "subset challenging" in title and "confirmation half" in title
    selection = plotting.variants_pareto_figure(summary, fluency="perplexity", split="selection")
    assert "selection half" in selection.layout.title.text
    whole = plotting.variants_pareto_figure(
        summary.drop(columns="split").drop_duplicates(), fluency="perplexity"
    )
    assert "all prompts" in whole.layout.title.text and "half" not in whole.layout.title.text


def test_variants_pareto_figure_with_many_points_labels_each_front() -> None:
    layers = tuple(range(1, 13))
    fig = plotting.variants_pareto_figure(make_variants_summary(layers), fluency="perplexity")
    steered = [trace for trace in fig.data if trace.name in ("caa", "gated", "random control")]
    assert sum(len(trace.x) for trace in steered) > plotting.MAX_PARETO_LABELS
    assert "layers 1-12" in fig.layout.title.text
    for trace in steered:
        labelled = [text for text in trace.text if text]
        assert 0 < len(labelled) < len(trace.text)  # only the front's points
        assert all(
            text.startswith(f"{trace.name.split()[0].replace('control', '')}") for text in labelled
        )
        assert all(" L" in text and " α" in text for text in labelled)  # the layer named
        front = pareto_front(pd.DataFrame({"x": list(trace.x), "y": list(trace.y)}), x="x", y="y")
        assert len(labelled) == len(front)


# ---------------------------------------------------------------- titles and point labels


def test_titles_are_wrapped_to_the_figure_width_and_keep_the_plot_clear() -> None:
    long = (
        "Expected maximum toxicity vs Steered perplexity on held-out benign text (lower is better)"
    )
    scope = "layers 12, 18, 24 · subset challenging · selection half · CAA vs random control"
    heading = style.title(long, scope)
    lines = heading["text"].split("<br>")
    assert len(lines) >= 3  # the one-line title of issue 25 would be cut at the right edge
    room = style.PAGE_WIDTH * (1 - style.TITLE_X) - style.TITLE_PAD
    for line in lines:
        small = line.startswith("<sup>")
        text = line.removeprefix("<sup>").removesuffix("</sup>")
        size = style.SUBTITLE_SIZE if small else style.TITLE_SIZE
        assert labels.text_width(text, size) <= room, line
    assert "layers 12, 18, 24" in heading["text"]  # broken after a separator, not inside
    assert style.title_margin(heading) > style.title_margin(style.title("Short"))
    narrow = style.title(long, scope, width=figure_files.FIGURE_SIZES["column"][0])
    assert narrow["text"].count("<br>") > heading["text"].count("<br>")
    fig = plotting.layer_profile(make_summary())
    assert fig.layout.margin.t == style.title_margin({"text": fig.layout.title.text})


def test_placed_labels_overlap_no_label_and_no_marker() -> None:
    rng = np.random.default_rng(0)
    canvas = labels.Canvas(840, 640, (80, 120, 30, 110), (0.0, 10.0), (0.0, 1.0))
    xs, ys = rng.uniform(0, 10, 40), rng.uniform(0, 1, 40)
    xs[1:3], ys[1:3] = xs[0], ys[0]  # three settings at one point (alpha 0 at three layers)
    points = [(x, y, f"L{i} α{x:.2g}", 9.0) for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    where = labels.place_labels(canvas, points, size=10)
    shared = [position for position in where[:3] if position]
    assert where[0] and len(shared) == len(set(shared))  # labels at one point: different sides
    assert 0 < sum(bool(w) for w in where) < len(points)  # crowded: some are left out
    boxes = [
        labels.text_box(*canvas.pixel(x, y), text, 10, position, marker)
        for (x, y, text, marker), position in zip(points, where, strict=True)
        if position
    ]
    markers = [labels.marker_box(*canvas.pixel(x, y), 9.0) for x, y, *_ in points]
    left, top, right, bottom = canvas.area
    for i, box in enumerate(boxes):
        assert left <= box[0] and box[2] <= right and top <= box[1] and box[3] <= bottom
        assert not any(labels.overlaps(box, other) for other in boxes[i + 1 :])
        assert not any(labels.overlaps(box, marker) for marker in markers)
