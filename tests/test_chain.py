"""The notebook chain end to end on the embedded SmolLM2, offline, with tiny parameters."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steerlib.experiment.runs import PROJECT_ROOT, RunPaths

pytestmark = pytest.mark.slow

TINY = [
    "n_prompts=3",
    "n_pairs=3",
    "samples_per_prompt=2",
    "max_new_tokens=6",
    "layers=[12, 18]",
    "alphas=[-1.0, 0.0, 1.5]",
    "kl_texts=2",
    "n_resamples=200",
    "batch_size=16",
]
STEPS = ["01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep", "06_analysis"]
KEY = ["subset", "prompt_id", "layer", "alpha", "direction", "sample"]

# Loaded by every Python process of the chain (the runner and each notebook kernel): outbound
# connections to anything but the loopback interface raise, so the test fails if the default
# path reaches for the network.
OFFLINE_SITE = """
import pytest_socket
pytest_socket.socket_allow_hosts(["127.0.0.1", "localhost", "::1"], allow_unix_socket=True)
"""


@pytest.fixture(scope="module")
def chain_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chain")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OFFLINE_SITE)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        # Relative, as a user may set it: the runner resolves it once, against the folder the
        # command runs in (CHAIN_ROOT), and passes the absolute path to every notebook.
        "STEERLIB_RUNS_DIR": "runs",
        "CHAIN_ROOT": str(root),
    }
    return env


def _runs(env: dict[str, str]) -> Path:
    return Path(env["CHAIN_ROOT"]) / "runs"


def _chain(
    env: dict[str, str], run_name: str, *extra: str, **kwargs
) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "steerlib", "run", "--run-name", run_name, "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    return subprocess.run(
        [*args, *extra], cwd=env["CHAIN_ROOT"], env=env, capture_output=True, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def reference(chain_env) -> Path:
    result = _chain(chain_env, "reference", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _runs(chain_env) / "reference"


def test_chain_products_are_complete_and_consistent(reference, chain_env):
    for name in [
        "params.json",
        "prompts.parquet",
        "baseline.parquet",
        "vectors.safetensors",
        "vectors_random.safetensors",
        "sweep.parquet",
        "kl_benign.parquet",
        "summary.json",
        "summary.parquet",
        "report.html",
        "status.json",
    ]:
        assert (reference / name).is_file(), name
    for step in STEPS:
        assert (reference / "notebooks" / f"{step}.ipynb").is_file()
    status = json.loads((reference / "status.json").read_text())
    assert status["format"] == 2
    assert all(status["steps"][step]["state"] == "done" for step in STEPS)
    params = json.loads((reference / "params.json").read_text())
    assert params["format"] == 2
    assert params["params"]["n_prompts"] == 3 and params["versions"]["transformers"]
    assert json.loads((reference / "sweep_parts" / "settings.json").read_text())["seed"] == 0

    vectors = json.loads((reference / "vectors.json").read_text())
    assert vectors["sink_projected"] and len(vectors["diagnostics"]) == 30
    assert all(abs(r["sink_cosine"]) < 1e-3 for r in vectors["diagnostics"])
    assert {"split_half_cosine", "norm_ratio", "toxic_tokens"} <= set(vectors["diagnostics"][0])

    sweep = pd.read_parquet(reference / "sweep.parquet")
    assert set(sweep["subset"]) == {"challenging", "benign"}
    assert set(sweep["layer"]) == {12, 18} and set(sweep["direction"]) == {"caa", "random"}
    grid = sweep[sweep["alpha"].isin([-1.0, 0.0, 1.5])]
    assert (
        len(grid) == 2 * 3 * 2 * 3 * 2 * 2
    )  # subsets × prompts × samples × alphas × layers × dirs
    # The alpha search adds, per layer, its budget edge (both directions), unless that is 0
    # or a grid alpha, and every alpha its step back generated (issue 27: each checked on the
    # continuations); the random control's own search adds its own edge and step back, alone.
    search = pd.read_parquet(reference / "alpha_search.parquet")
    grid_alphas = [-1.0, 0.0, 1.5]
    searched = sweep[~sweep["alpha"].isin(grid_alphas)]
    expected = {}
    for direction in ("caa", "random"):
        trace = search[search["direction"] == direction]
        chosen = trace.groupby("layer")["chosen"].first().round(4)
        checked = trace[trace["stage"] == "step_back"]
        alphas = {(layer, a) for layer, a in chosen.items() if a > 0}
        alphas |= set(zip(checked["layer"], checked["alpha"].round(4), strict=True))
        expected[direction] = {(layer, a) for layer, a in alphas if a not in grid_alphas}
    expected["random"] |= expected["caa"]  # the equal-alpha control at the CAA's alphas
    for direction, alphas in expected.items():
        rows = searched[searched["direction"] == direction]
        assert set(zip(rows["layer"], rows["alpha"].round(4), strict=True)) == alphas
    assert len(searched) == 2 * 3 * 2 * (len(expected["caa"]) + len(expected["random"]))
    checked = search[search["stage"] == "step_back"]
    steps = search[search["stage"] == "search"]
    at_edge = steps[steps["alpha"] <= steps["chosen"] + 1e-9]
    assert (at_edge["human_perplexity"] <= at_edge["budget"] + 1e-9).all()
    # the chosen alpha of a layer that stepped back is within the continuation budget
    kept = checked[np.isclose(checked["alpha"], checked["chosen"])]
    assert (kept["benign_continuation_perplexity"] <= kept["benign_budget"] + 1e-9).all()
    assert not sweep.duplicated(KEY).any()
    assert sweep["toxicity"].between(0, 1).all() and (sweep["perplexity"].dropna() > 1).all()
    # Alpha 0 is not generated again: every (direction, layer) carries the baseline's rows.
    baseline = pd.read_parquet(reference / "baseline.parquet").set_index(
        ["subset", "prompt_id", "sample"]
    )
    columns = ["completion", "toxicity", "perplexity"]
    for _, zero in sweep[sweep["alpha"] == 0].groupby(["direction", "layer"]):
        zero = zero.set_index(["subset", "prompt_id", "sample"])
        pd.testing.assert_frame_equal(zero[columns], baseline.loc[zero.index, columns])
        assert len(zero) == len(baseline)

    summary = json.loads((reference / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m-instruct" and summary["scorer"] == "profanity-check"
    rows = pd.DataFrame(summary["rows"])
    assert set(rows["split"]) == {"all", "selection", "confirmation"}
    steered = rows[(rows["direction"] != "none") & (rows["split"] == "all")]
    grid_rows = steered[steered["alpha"].isin([-1.0, 0.0, 1.5])]
    assert len(grid_rows) == 2 * 3 * 2 * 2  # subsets × alphas × layers × directions
    assert (steered["n_prompts"] == 3).all() and (steered["samples_per_prompt"] == 2).all()
    # 3 prompts per subset: 2 in the selection half, 1 in the confirmation half
    halves = rows[rows["direction"] != "none"].groupby("split")["n_prompts"].unique()
    assert halves["selection"].tolist() == [2] and halves["confirmation"].tolist() == [1]
    assert summary["split"]["n_prompts"]["challenging"] == {"selection": 2, "confirmation": 1}
    for column in [
        "mean_toxicity",
        "expected_max_toxicity",
        "toxicity_probability",
        "mean_toxicity_ci",
        "perplexity",
        "perplexity_excluded",
        "human_perplexity",
        "distinct_2",
        "distinct_2_ratio",
        "floor_share",
        "kl_benign",
        "admissible",
    ]:
        assert column in rows.columns, column
    kl = pd.read_parquet(reference / "kl_benign.parquet")
    measure = "human_perplexity" if "human_perplexity" in kl.columns else "perplexity"
    recommended = summary["recommended"]
    assert summary["fluency_measure"] == recommended["fluency_measure"] == measure
    assert "rule" in recommended and recommended["selected_on"] == "selection"
    if recommended["status"] == "recommended":
        assert {"layer", "alpha", "expected_max_toxicity"} <= set(recommended)
        assert recommended["figures_from"] == "confirmation"
        assert "expected_max_toxicity" in recommended["confirmation_figures"]
        if recommended["control"] is not None:
            assert isinstance(recommended["control"]["beats_control"], bool)
            assert recommended["control"]["split"] == "confirmation"
    else:  # nothing steered is admissible: no layer is reported for the unsteered model
        assert recommended["status"] == "no admissible steered setting"
        assert "layer" not in recommended and "alpha" not in recommended
        assert recommended["nearest_miss"] is None or recommended["nearest_miss"]["reasons"]
    assert summary["scorer_auc"] is None  # the handwritten set carries no Perspective labels
    assert summary["scorer_validity"]["continuations"]["n"] == 0
    assert summary["scorer_floor"] == pytest.approx(0.0364, abs=1e-3)  # profanity-check

    figures = reference / "figures"  # with the run, never in the project's figures/
    control = pd.DataFrame(summary["control"])
    assert (control["n_paired_prompts"] == 3).all()
    assert (control["delta_mean_toxicity_ci_low"] <= control["delta_mean_toxicity_ci_high"]).all()
    matched = pd.DataFrame(summary["control_matched_fluency"])
    assert len(matched) == 2 * 2 + len(expected["caa"])  # layers × nonzero alphas, challenging
    assert (matched["alpha"] != 0).all() and (matched["n_paired_prompts"] == 3).all()
    as_fluent = matched["perplexity_control"] <= matched["perplexity_caa"]
    assert (as_fluent | (matched["control_alpha"] == 0)).all()
    for name in [
        "toxicity_vs_alpha",
        "heatmap_emt",
        "heatmap_kl",
        "heatmap_control",
        "layer_profile_toxicity",
        "pareto",
        "vector_norms",
    ]:
        assert (figures / f"{name}.html").is_file(), name
    report = (reference / "report.html").read_text()
    assert "<title>steerlib report — reference</title>" in report and "plotly" in report.lower()
    assert not re.search(r'class="[^"]*(hl-ipython3|jp-InputPrompt)', report)  # no code
    assert "no runs to compare" not in report
    assert "The operating point" in report


def test_rerun_skips_finished_notebooks(reference, chain_env):
    before = (reference / "sweep.parquet").stat().st_mtime_ns
    result = _chain(chain_env, "reference", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("done earlier, skipped") == len(STEPS)
    assert (reference / "sweep.parquet").stat().st_mtime_ns == before


def test_sigkill_mid_sweep_then_resume_gives_identical_rows(reference, chain_env):
    runs = _runs(chain_env)
    parts = runs / "killed" / "sweep_parts"
    args = [sys.executable, "-m", "steerlib", "run", "--run-name", "killed", "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    process = subprocess.Popen(
        args,
        cwd=chain_env["CHAIN_ROOT"],
        env=chain_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 1:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the chain ended before the sweep could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its notebook kernel
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert RunPaths(runs / "killed").step_state("05_sweep") != "done"
    assert not (runs / "killed" / "sweep.parquet").exists()
    written = len(list(parts.glob("*.parquet")))
    assert not list(parts.glob("*.tmp")) or all(p.name.startswith(".") for p in parts.glob("*.tmp"))

    result = _chain(chain_env, "killed", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "01_data: done earlier, skipped" in result.stdout
    resumed = pd.read_parquet(runs / "killed" / "sweep.parquet")
    expected = pd.read_parquet(reference / "sweep.parquet")
    assert written < len(list(parts.glob("*.parquet")))
    assert not resumed.duplicated(KEY).any()
    pd.testing.assert_frame_equal(
        resumed.sort_values(KEY).reset_index(drop=True),
        expected.sort_values(KEY).reset_index(drop=True),
    )


def test_adding_layers_extends_the_sweep_and_keeps_its_units(reference, chain_env):
    runs = _runs(chain_env)
    grown = runs / "grown"
    shutil.copytree(reference, grown, ignore=shutil.ignore_patterns(".lock"))
    parts = grown / "sweep_parts"
    kept = {path.name: path.stat().st_mtime_ns for path in parts.glob("*.parquet")}

    result = _chain(chain_env, "grown", "--set", "layers=[6, 12, 18]", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in STEPS[:4]:
        assert f"{step}: done earlier, skipped" in result.stdout
    assert "generates only the units it lacks" in result.stdout
    assert all((parts / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert {path.name.split("-b")[0] for path in parts.glob("*-L6-*.parquet")} == {
        "caa-L6",
        "random-L6",
    }
    sweep = pd.read_parquet(grown / "sweep.parquet")
    expected = pd.read_parquet(reference / "sweep.parquet")
    assert set(sweep["layer"]) == {6, 12, 18} and not sweep.duplicated(KEY).any()
    old = sweep[sweep["layer"].isin([12, 18])].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, expected.sort_values(KEY).reset_index(drop=True))
    assert len(sweep[sweep["layer"] == 6]) >= len(expected[expected["layer"] == 18]) * 2 // 3
    rows = pd.DataFrame(json.loads((grown / "summary.json").read_text())["rows"])
    assert 6 in set(rows["layer"])

    # Fewer layers: the sweep table keeps only those, and the units of the others stay on disk.
    result = _chain(chain_env, "grown", "--set", "layers=[18]", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = pd.read_parquet(grown / "sweep.parquet")
    assert set(sweep["layer"]) == {18} and list(parts.glob("*-L6-*.parquet"))
    pd.testing.assert_frame_equal(
        sweep.sort_values(KEY).reset_index(drop=True),
        expected[expected["layer"] == 18].sort_values(KEY).reset_index(drop=True),
    )

    # Other alphas: a finished sweep is not changed; the command refuses in one line.
    before = (grown / "params.json").read_bytes()
    other_alphas = ("--set", "layers=[6]", "--set", "alphas=[0.0, 0.5]")
    result = _chain(chain_env, "grown", *other_alphas, timeout=900)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.count("\n") == 1
    assert "alphas [-1.0, 0.0, 1.5] -> [0.0, 0.5]" in result.stderr and "--force" in result.stderr
    assert (grown / "params.json").read_bytes() == before


def test_an_analysis_parameter_reruns_the_analysis_and_nothing_else(reference, chain_env):
    """Issue 18: a parameter only step 06 reads is recorded only with products that reflect it."""
    runs = _runs(chain_env)
    copy = runs / "reanalysed"
    shutil.copytree(reference, copy, ignore=shutil.ignore_patterns(".lock"))
    kept = [copy / name for name in ("prompts.parquet", "baseline.parquet", "sweep.parquet")]
    kept += [copy / "notebooks" / f"{step}.ipynb" for step in STEPS[:5]]
    before = {path: path.stat().st_mtime_ns for path in kept}
    report_before = (copy / "report.html").stat().st_mtime_ns
    old = json.loads((copy / "summary.json").read_text())
    assert old["recommended"]["checks"]["min_distinct_ratio"] == 0.9

    change = ("--set", "min_distinct_ratio=0.5", "--set", "toxicity_threshold=0.3")
    result = _chain(chain_env, "reanalysed", *change, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in STEPS[:5]:
        assert f"{step}: done earlier, skipped" in result.stdout
    assert "06_analysis: done in" in result.stdout
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items())
    assert (copy / "report.html").stat().st_mtime_ns > report_before
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["params"]["min_distinct_ratio"] == 0.5
    assert summary["params"]["toxicity_threshold"] == 0.3
    assert summary["recommended"]["checks"]["min_distinct_ratio"] == 0.5
    params = json.loads((copy / "params.json").read_text())["params"]
    assert (params["min_distinct_ratio"], params["toxicity_threshold"]) == (0.5, 0.3)
    status = json.loads((copy / "status.json").read_text())["steps"]
    assert all(status[step]["state"] == "done" for step in STEPS)
    # The end of the run is the verdict, and the console is quiet.
    from steerlib.experiment.report import verdict

    assert "[steerlib] verdict (reanalysed):" in result.stdout
    assert all(line in result.stdout for line in verdict(summary))
    assert "TCP without encryption" not in result.stderr
    assert "ERROR" not in result.stderr and "Traceback" not in result.stderr


def test_a_finished_run_refuses_other_settings(reference, chain_env):
    """Issue 14: `--set samples_per_prompt=3` on a finished run used to exit 0, saying done."""
    before = (reference / "params.json").read_bytes()
    result = _chain(chain_env, "reference", "--set", "samples_per_prompt=3", timeout=300)
    assert result.returncode == 2
    assert "samples_per_prompt 2 -> 3" in result.stderr and "finished" not in result.stdout
    assert (reference / "params.json").read_bytes() == before


def test_the_runner_and_the_notebooks_share_one_runs_folder(reference, chain_env):
    """A relative STEERLIB_RUNS_DIR: every product and the lock land in one folder."""
    notebooks = PROJECT_ROOT / "notebooks"
    assert not (notebooks / "runs").exists()
    executed = (reference / "notebooks" / "05_sweep.ipynb").read_text()
    assert json.dumps(str(_runs(chain_env)))[1:-1] in executed


def test_notebook_alone_without_upstream_names_the_notebook(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match=r"run notebooks/01_data\.ipynb first"):
        papermill.execute_notebook(
            str(PROJECT_ROOT / "notebooks" / "03_activations.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"run_name": "nothing-here", "runs_dir": str(tmp_path / "runs")},
            cwd=str(PROJECT_ROOT / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )


def test_unknown_parameter_fails_before_any_notebook(tmp_path, chain_env):
    result = subprocess.run(
        [sys.executable, "-m", "steerlib", "run", "--run-name", "bad", "--set", "alpha=1"],
        cwd=chain_env["CHAIN_ROOT"],
        env=chain_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown parameter 'alpha'" in result.stderr
    assert not (_runs(chain_env) / "bad").exists()
