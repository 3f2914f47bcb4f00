from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerlib._io import atomic_write_json
from steerlib.errors import ConfigError
from steerlib.experiment import table
from steerlib.experiment.config import RunParams
from steerlib.experiment.config_files import load_params, parse_overrides
from steerlib.experiment.runs import PROJECT_ROOT, RunLockedError, RunPaths, run_lock
from steerlib.pipeline import NOTEBOOKS, STEPS, Run

CONFIGS = sorted((PROJECT_ROOT / "notebooks" / "configs").glob("*.yaml"))
ALL_NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def test_defaults_and_validation():
    params = RunParams()
    assert params.model == "smollm2-135m-instruct" and params.alphas == [-1.0, 0.0, 0.5, 1.5]
    assert params.n_pairs == 20 and params.last_n == 32 and params.temperature == 0.7
    with pytest.raises(ConfigError, match="unknown parameter 'alpha'"):
        RunParams.validate_mapping({"alpha": [1.0]})
    with pytest.raises(ConfigError, match="parameter 'n_prompts'"):
        RunParams.validate_mapping({"n_prompts": "many"})
    with pytest.raises(ConfigError, match=r"parameter 'alphas'.*finite"):
        RunParams.validate_mapping({"alphas": [0.0, float("nan")]})
    with pytest.raises(ConfigError, match=r"parameter 'alphas'.*finite"):
        RunParams.validate_mapping({"alphas": [float("inf")]})
    with pytest.raises(ConfigError, match="parameter 'layers'"):
        RunParams.validate_mapping({"layers": "most"})
    with pytest.raises(ConfigError, match="parameter 'run_name'"):
        RunParams.validate_mapping({"run_name": "../escape"})
    assert RunParams.validate_mapping({"device": ""}).device is None


def test_overrides_and_files(tmp_path, monkeypatch):
    assert parse_overrides(["alphas=[0, 1.5]", "seed=3", "layers=all", "model=x/y"]) == {
        "alphas": [0, 1.5],
        "seed": 3,
        "layers": "all",
        "model": "x/y",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])
    config = tmp_path / "c.yaml"
    config.write_text("n_prompts: 7\nchallenging_source: data/x.jsonl\n")
    monkeypatch.chdir(tmp_path)
    params = load_params(config, {"seed": 4})
    assert params.n_prompts == 7 and params.seed == 4
    assert params.challenging_source == str(tmp_path / "data" / "x.jsonl")
    with pytest.raises(ConfigError, match="No parameter file"):
        load_params(tmp_path / "missing.yaml")
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(config)


def test_relative_paths_in_a_config_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    config = folder / "c.yaml"
    config.write_text(
        "challenging_source: ../prompts/challenging.jsonl\nbenign_source: bundled\nn_prompts: 3\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = str(tmp_path / "project" / "prompts" / "challenging.jsonl")
    relative_config = os.path.relpath(config, elsewhere)  # the config named relatively, too
    for name in (config, relative_config):
        params = load_params(name)
        assert params.challenging_source == expected and params.benign_source == "bundled"
    # The same from any other folder: the config's meaning does not depend on where one runs.
    monkeypatch.chdir(folder)
    assert load_params(config).challenging_source == expected
    # A path given on the command line (--set) is the command line's: the current folder.
    overridden = load_params(config, parse_overrides(["benign_source=mine.jsonl"]))
    assert overridden.benign_source == str(folder / "mine.jsonl")
    assert overridden.challenging_source == expected
    # Absolute and home paths are kept as they are.
    config.write_text(f"challenging_source: {expected}\nbenign_source: ~/b.jsonl\n")
    params = load_params(config)
    assert params.challenging_source == expected
    assert params.benign_source == str(Path("~/b.jsonl").expanduser())


def test_the_shipped_rtp_config_names_the_sample_beside_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project: the config's own folder is what counts
    params = load_params(PROJECT_ROOT / "notebooks" / "configs" / "rtp-sample.yaml")
    expected = PROJECT_ROOT.parent / "shared" / "data" / "rtp" / "challenging_sample.jsonl"
    assert params.challenging_source == os.path.abspath(expected)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(config):
    params = load_params(config)
    assert params.run_name == config.stem
    if config.stem == "phi4-mini":
        assert params.model == "microsoft/Phi-4-mini-instruct"
        assert params.scorer == "unbiased-toxic-roberta" and params.samples_per_prompt == 25
        assert params.n_prompts == 50 and params.n_pairs == 20 and params.max_new_tokens == 20


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_clean(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "committed without outputs"
        for line in cell.source.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "lambda")), line
            assert "register_forward_hook" not in line
    for line in tagged[0].source.splitlines():
        assert "#" in line, f"parameter without a comment: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_parameters_match_run_params(path):
    """Each notebook declares exactly its step's parameters, each defaulting to the stored value."""
    declared = papermill.inspect_notebook(str(path))
    assert set(declared) == table.notebook_parameters(path.stem)
    for name, info in declared.items():
        if name in table.NOTEBOOK_ONLY:
            continue
        assert name in RunParams.model_fields, f"{path.name} declares {name}, RunParams lacks it"
        assert info["default"] == "None", f"{name}: None keeps the run's stored value"
        assert "|" not in (info["inferred_type_name"] or ""), name


def test_every_parameter_that_shapes_a_product_is_read_by_a_step():
    read = set().union(*(s.reads for s in table.STEPS))
    assert set(RunParams.model_fields) - read == {"run_name"}
    assert {s.name for s in table.steps_reading("layers")} == {"05_sweep"}
    assert table.producer("vectors").name == "04_vectors"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_finds_every_name_of_the_parameters_cell(path):
    """A line papermill cannot parse is silently not injected: the notebook default wins."""
    import ast

    import nbformat

    cell = next(
        c
        for c in nbformat.read(path, as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    )
    assigned = {
        node.target.id if isinstance(node, ast.AnnAssign) else node.targets[0].id
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.AnnAssign | ast.Assign)
    }
    assert set(papermill.inspect_notebook(str(path))) == assigned


def test_run_paths_and_status(tmp_path):
    paths = RunPaths.for_run("r1", tmp_path)
    assert paths.root == tmp_path / "r1" and paths.sweep.name == "sweep.parquet"
    with pytest.raises(ConfigError, match="plain folder"):
        RunPaths.for_run("a/b", tmp_path)
    paths.set_status("05_sweep", "partial", rows=12)
    paths.set_status("01_data", "done")
    assert (
        paths.step_state("05_sweep") == "partial" and paths.read_status()["05_sweep"]["rows"] == 12
    )
    assert paths.step_state("02_baseline") is None


def test_lock_refuses_a_second_process_and_names_it(tmp_path):
    paths = RunPaths.for_run("locked", tmp_path)
    code = (
        "import sys, time; from steerlib.experiment.runs import RunPaths, run_lock\n"
        f"p = RunPaths.for_run('locked', {str(tmp_path)!r})\n"
        "with run_lock(p):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid}"):
            with run_lock(paths):
                pass
        # another run name is independent
        with run_lock(RunPaths.for_run("other", tmp_path)):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its stale lock is taken over
    assert paths.lock.exists()
    with run_lock(paths):
        assert json.loads(paths.lock.read_text())["pid"] == os.getpid()
    assert not paths.lock.exists()


def test_run_open_records_params_and_changes(tmp_path, capsys):
    run = Run.open("demo", runs_dir=str(tmp_path), n_prompts=5)
    record = json.loads(run.paths.params.read_text())
    assert record["format"] == 2 and record["params"]["n_prompts"] == 5
    assert record["versions"]["torch"] and "git_commit" in record
    again = Run.open("demo", runs_dir=str(tmp_path), n_prompts=None, layers=None)
    assert again.params.n_prompts == 5 and not again.notes
    # Nothing was made with n_prompts yet: the change is taken.
    changed = Run.open("demo", runs_dir=str(tmp_path), n_prompts=6)
    assert "no finished step depends on it" in changed.notes[0]
    with pytest.raises(ConfigError, match="unknown parameter 'prompts'"):
        Run.open("demo", runs_dir=str(tmp_path), prompts=3)


def test_a_finished_run_refuses_other_values_in_one_line(tmp_path):
    run = Run.open("made", runs_dir=str(tmp_path), samples_per_prompt=1, alphas=[0.0, 1.0])
    for step in STEPS:
        run.paths.set_status(step, "done")
    before = run.paths.params.read_bytes()
    with pytest.raises(ConfigError) as caught:
        Run.open("made", runs_dir=str(tmp_path), samples_per_prompt=3, alphas=[0.0, 2.0])
    message = str(caught.value)
    assert "\n" not in message
    assert "samples_per_prompt 1 -> 3" in message and "alphas [0.0, 1.0] -> [0.0, 2.0]" in message
    assert "force=True" in message and "--force" in message
    assert run.paths.params.read_bytes() == before
    # A runtime setting is never refused.
    assert Run.open("made", runs_dir=str(tmp_path), device="cpu").params.device == "cpu"
    # force takes the change: the earliest step made with the old value runs again, and after.
    forced = Run.open("made", runs_dir=str(tmp_path), force=True, samples_per_prompt=3)
    status = forced.paths.read_status()
    assert forced.params.samples_per_prompt == 3
    assert [status[s]["state"] for s in STEPS] == ["done"] + ["stale"] * 5
    assert status["05_sweep"]["resume"] is False


def test_a_recomputed_step_makes_the_finished_steps_after_it_stale(tmp_path):
    run = Run.open("dag", runs_dir=str(tmp_path))
    for step in STEPS:
        run.paths.set_status(step, "done")
    run.paths.set_status("05_sweep", "partial", rows=3)
    with run.step("04_vectors"):
        pass
    status = run.paths.read_status()
    assert [status[s]["state"] for s in STEPS] == ["done"] * 4 + ["stale"] * 2
    assert status["05_sweep"]["resume"] is False  # units of the old vectors are not reused
    assert "04_vectors was recomputed" in status["06_analysis"]["reason"]
    assert not run.done("05_sweep") and run.done("03_activations")
    with pytest.raises(Exception, match=r"sweep\.parquet .* is stale \(04_vectors was recomputed"):
        run.require("sweep")


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"layers": [3, 12]}, "resumes"),
        ({"random_control": False, "n_resamples": 100}, "resumes"),
        ({"n_resamples": 100}, "reruns 06"),
        ({"n_prompts": 7}, "refused"),
        ({"layers": [3, 12], "samples_per_prompt": 4}, "refused"),  # units would change too
    ],
)
def test_changing_the_sweep_layers_reopens_the_sweep_for_resumption(tmp_path, change, outcome):
    Run.open("grow", runs_dir=str(tmp_path), layers=[12], random_control=True, n_prompts=5)
    paths = RunPaths.for_run("grow", tmp_path)
    for step in STEPS:
        paths.set_status(step, "done")
    if outcome == "refused":
        with pytest.raises(ConfigError, match="was made with other values") as caught:
            Run.open("grow", runs_dir=str(tmp_path), **change)
        assert all(name in str(caught.value) for name in change if name != "layers")
        assert all(state["state"] == "done" for state in paths.read_status().values())
        return
    changed = Run.open("grow", runs_dir=str(tmp_path), **change)
    status = paths.read_status()
    assert status["06_analysis"]["state"] == "stale"
    if outcome == "resumes":
        assert status["05_sweep"]["state"] == "stale" and status["05_sweep"]["resume"] is True
        assert "generates only the units it lacks" in changed.notes[-1]
    else:
        assert status["05_sweep"]["state"] == "done"
    assert status["04_vectors"]["state"] == "done"


@pytest.mark.parametrize("search", [True, False])
def test_the_fluency_budget_reaches_the_sweep_only_through_its_alpha_search(tmp_path, search):
    """Issue 18: with the alpha search off, a new budget reruns the analysis and nothing else."""
    from steerlib.experiment.run import check_changes

    Run.open("budget", runs_dir=str(tmp_path), alpha_search=search, layers=[12])
    paths = RunPaths.for_run("budget", tmp_path)
    for step in STEPS:
        paths.set_status(step, "done")
    changes = check_changes(paths, {"max_perplexity_increase": 0.25})
    assert changes.reruns == ("06_analysis",) and not changes.refused
    assert changes.resumes == (("05_sweep",) if search else ())
    Run.open("budget", runs_dir=str(tmp_path), max_perplexity_increase=0.25)
    status = paths.read_status()
    assert status["06_analysis"]["state"] == "stale"
    assert status["05_sweep"]["state"] == ("stale" if search else "done")
    assert paths.stored_params()["max_perplexity_increase"] == 0.25
    # Turning the search on (or off) later reopens the sweep, with the budget now recorded.
    for step in STEPS:
        paths.set_status(step, "done")
    toggled = check_changes(paths, {"alpha_search": not search, "max_perplexity_increase": 0.3})
    assert toggled.resumes == ("05_sweep",) and toggled.reruns == ("06_analysis",)


def test_records_of_older_formats_still_load(tmp_path):
    paths = RunPaths.for_run("old", tmp_path)
    paths.root.mkdir()
    # The older formats are made from what today's writers write, less what those formats lack,
    # so their field names cannot drift from the current ones.
    paths.write_params({"n_prompts": 4}, git_commit="abc")
    paths.set_status("01_data", "done")
    params, status = json.loads(paths.params.read_text()), json.loads(paths.status.read_text())
    assert params.pop("format") == 2 and status.pop("format") == 2
    # Format 1 (nested, no "format") and a bare mapping of steps: what runs before issue 14 hold.
    atomic_write_json(paths.params, params)
    atomic_write_json(paths.status, status["steps"])
    assert paths.stored_params() == {"n_prompts": 4}
    assert paths.step_state("01_data") == "done"
    paths.set_status("02_baseline", "done")
    assert json.loads(paths.status.read_text())["format"] == 2
    assert paths.step_state("01_data") == "done"
    # A flat mapping of parameters (written by older tests and tools), with a foreign key.
    atomic_write_json(paths.params, {"n_prompts": 3, "created_by": "a tool"})
    assert paths.stored_params() == {"n_prompts": 3}
    assert Run.open("old", runs_dir=str(tmp_path)).params.n_prompts == 3


def test_a_relative_runs_dir_is_one_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEERLIB_RUNS_DIR", "rel-runs")
    here = RunPaths.for_run("r")
    assert here.root == tmp_path / "rel-runs" / "r" and here.root.is_absolute()
    assert here.figures() == here.root / "figures"
    assert RunPaths.for_run("r", "rel-runs").root == here.root


def test_run_directory_under_a_file_is_reported(tmp_path):
    occupied = tmp_path / "a-file"
    occupied.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot be written.*STEERLIB_RUNS_DIR"):
        Run.open("x", runs_dir=str(occupied))
    assert occupied.read_text() == "not a folder"


def test_unwritable_run_directory_is_reported(tmp_path):
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        if os.access(blocked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(ConfigError, match="cannot be written"):
            Run.open("x", runs_dir=str(blocked))
    finally:
        blocked.chmod(0o700)


def test_missing_upstream_names_the_notebook(tmp_path):
    from steerlib.errors import DataError
    from steerlib.pipeline import build_vectors, run_baseline

    run = Run.open("fresh", runs_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"run notebooks/01_data\.ipynb first"):
        run_baseline(run)
    with pytest.raises(DataError, match=r"notebooks/03_activations\.ipynb"):
        build_vectors(run)
    assert not Path(run.paths.baseline).exists()


# -- the config loader never fails with anything but one ConfigError line ----------------------
_NAMES = st.sampled_from(sorted(RunParams.model_fields))
_SCALARS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["yes", "on", "1", "true", ".inf", "-.nan", "1e39", "~", "[", "{a: 1}", "&a [*a]", "\t"]
    ),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats().map(repr),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_NAMES, raw=_SCALARS)
def test_any_override_is_accepted_or_one_config_error(name, raw):
    try:
        params = load_params(None, parse_overrides([f"{name}={raw}"]))
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        assert all(len(line) < 600 for line in str(exc).splitlines())
    else:
        assert isinstance(params, RunParams)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(_NAMES, st.text(max_size=12)), raw=_SCALARS, junk=st.binary(max_size=12))
def test_any_parameter_file_is_accepted_or_one_config_error(tmp_path_factory, key, raw, junk):
    config = tmp_path_factory.mktemp("yaml") / "c.yaml"
    config.write_bytes(f"{key}: {raw}\n".encode("utf-8", "surrogatepass") + junk)
    try:
        load_params(config)
    except ConfigError as exc:
        assert str(exc) and all(len(line) < 600 for line in str(exc).splitlines())


def test_yaml_is_read_as_yaml_1_2_and_strictly(tmp_path):
    values = parse_overrides(["a=[yes, on, no, 1e3, 0.5, true, null]"])
    assert values == {"a": ["yes", "on", "no", 1000.0, 0.5, True, None]}
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\nn_prompts: 3\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 3, column 1: the key 'seed' appears"):
        load_params(config)
    assert parse_overrides(["seed=1", "seed=2"]) == {"seed": 2}  # the last --set wins


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"alphas": [0.0, -0.0]}, "listed twice"),
        ({"alphas": [0.5, 1.5]}, "lacks 0"),
        ({"alphas": [0.0, 3.5e38]}, "float32"),
        ({"temperature": 0.005}, "floor"),
        ({"seed": 2**63}, "2\\*\\*63-1"),
        ({"n_pairs": True}, "whole number"),
        ({"random_control": 1}, "true or false"),
        ({"project_sink": "false"}, "true or false"),
        ({"compare_with": ["a", "a"]}, "listed twice"),
        ({"run_name": "tab\there"}, "control characters"),
        ({"device": "cuda:x"}, "not a device"),
    ],
)
def test_strict_parameters(values, message):
    with pytest.raises(ConfigError, match=message):
        RunParams.validate_mapping(values)


def test_accepted_edge_values():
    params = RunParams.validate_mapping(
        {"seed": 2**63 - 1, "temperature": 0, "alphas": [0, 1], "pair_toxic_min": 1}
    )
    assert params.alphas == [0.0, 1.0] and params.temperature == 0.0
    assert RunParams.validate_mapping({"device": "cuda:1", "dtype": "bfloat16"}).device == "cuda:1"


def test_opening_the_sweep_notebook_with_only_the_run_name_keeps_the_run(tmp_path):
    """Issue 14's reproduction: a notebook's defaults used to overwrite the stored parameters."""
    import pandas as pd

    from steerlib._io import atomic_write_parquet

    runs = tmp_path / "runs"
    run = Run.open(
        "phi",
        runs_dir=str(runs),
        model="microsoft/Phi-4-mini-instruct",
        layers=[12, 16],
        samples_per_prompt=25,
        top_p=0.8,
    )
    rows = [
        {
            "subset": s,
            "direction": "caa",
            "layer": 12,
            "alpha": a,
            "toxicity": 0.1,
            "prompt_id": "p",
        }
        for s in ("challenging", "benign")
        for a in (0.0, 1.0)
    ]
    atomic_write_parquet(run.paths.sweep, pd.DataFrame(rows))
    atomic_write_parquet(run.paths.kl, pd.DataFrame({"layer": [12], "alpha": [1.0], "kl": [0.1]}))
    for step in STEPS[:5]:
        run.paths.set_status(step, "done")
    before = run.paths.params.read_bytes()
    papermill.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "05_sweep.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"run_name": "phi", "runs_dir": str(runs)},
        cwd=str(PROJECT_ROOT / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    assert run.paths.params.read_bytes() == before
    assert run.paths.stored_params()["layers"] == [12, 16]


def test_a_resumed_sweep_refuses_units_made_with_other_settings(tmp_path):
    from steerlib.experiment.sweep import check_unit_settings

    run = Run.open("units", runs_dir=str(tmp_path), max_new_tokens=8)
    check_unit_settings(run.paths, run.params)
    recorded = run.paths.read_unit_settings()
    assert recorded is not None and recorded["max_new_tokens"] == 8
    check_unit_settings(run.paths, run.params)  # the same settings resume
    other = run.params.model_copy(update={"max_new_tokens": 9, "temperature": 0.0})
    with pytest.raises(ConfigError, match=r"max_new_tokens 8 -> 9, temperature 0\.7 -> 0\.0"):
        check_unit_settings(run.paths, other)


def test_the_run_command_refuses_a_finished_run_with_other_settings(tmp_path, capsys):
    """Issue 14: `--set samples_per_prompt=3` on a finished run used to exit 0, saying done."""
    from steerlib.errors import EXIT_BAD_INPUT
    from steerlib.pipeline import main

    config = tmp_path / "c.yaml"
    config.write_text("run_name: finished\nsamples_per_prompt: 1\nlayers: [1]\n")
    values = load_params(config).notebook_parameters()
    del values["run_name"]
    run = Run.open("finished", runs_dir=str(tmp_path), **values)
    for step in STEPS:
        run.paths.set_status(step, "done")
    before = run.paths.params.read_bytes()
    argv = ["--config", str(config), "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--set", "samples_per_prompt=3"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "samples_per_prompt 1 -> 3" in err
    assert run.paths.params.read_bytes() == before


@pytest.mark.parametrize("search", [True, False])
def test_a_parameter_added_since_a_run_was_made_counts_with_its_old_value(tmp_path, search):
    """Review 3: a run recorded before ``second_scorer`` and the search's step back existed."""
    from steerlib.experiment.run import check_changes

    Run.open("old", runs_dir=str(tmp_path), alpha_search=search, layers=[12])
    paths = RunPaths.for_run("old", tmp_path)
    added = ("second_scorer", "search_step_backs", "max_kl_benign")
    paths.write_params({k: v for k, v in paths.stored_params().items() if k not in added})
    for step in STEPS:
        paths.set_status(step, "done")
    with pytest.raises(ConfigError, match="second_scorer None -> 'minilm-toxicity'"):
        check_changes(paths, {"second_scorer": "minilm-toxicity"})
    forced = check_changes(paths, {"second_scorer": "minilm-toxicity"}, force=True)
    assert forced.reruns[0] == "02_baseline"
    assert not check_changes(paths, {"second_scorer": None, "search_step_backs": 0}).refused
    # The step back and the KL limit shape only a searched sweep.
    if search:
        with pytest.raises(ConfigError, match="search_step_backs 0 -> 3"):
            check_changes(paths, {"search_step_backs": 3})
        with pytest.raises(ConfigError, match="max_kl_benign"):
            check_changes(paths, {"max_kl_benign": None})
    else:
        changes = check_changes(paths, {"search_step_backs": 3, "max_kl_benign": None})
        assert not changes.refused and "05_sweep" not in changes.reruns


def _cell(stem: str) -> dict:
    """The names a notebook's parameters cell gives, at their defaults."""
    return {name: None for name in table.notebook_parameters(stem)} | {"force": False}


def test_a_notebook_opens_the_run_as_recorded_and_changes_only_its_steps_parameters(tmp_path):
    """Issue 24 item 5: a notebook reads the run from params.json; overrides change its own."""
    Run.open("nb", runs_dir=str(tmp_path), n_prompts=7, layers=[3])
    namespace = {**_cell("05_sweep"), "run_name": "nb", "runs_dir": str(tmp_path)}
    run = Run.for_step("05_sweep", namespace)
    assert (run.params.n_prompts, run.params.layers) == (7, [3])
    changed = Run.for_step("05_sweep", {**namespace, "overrides": {"layers": [2, 3]}})
    assert changed.params.layers == [2, 3] and changed.params.n_prompts == 7
    assert RunPaths.for_run("nb", tmp_path).stored_params()["layers"] == [2, 3]
    # A parameter the step reads, set as a variable of its own (papermill -p), counts too.
    assert Run.for_step("05_sweep", {**namespace, "layers": [1]}).params.layers == [1]
    with pytest.raises(
        ConfigError, match=r"'n_prompts', which step 05_sweep does not read.*01_data"
    ):
        Run.for_step("05_sweep", {**namespace, "overrides": {"n_prompts": 3}})
    with pytest.raises(ConfigError, match=r"'alpha'.*no step reads it"):
        Run.for_step("05_sweep", {**namespace, "overrides": {"alpha": 1}})
    with pytest.raises(ConfigError, match="give a mapping"):
        Run.for_step("05_sweep", {**namespace, "overrides": [("layers", [1])]})
    with pytest.raises(ConfigError, match="lacks overrides"):
        Run.for_step("05_sweep", {k: v for k, v in namespace.items() if k != "overrides"})


def test_the_runner_opens_the_run_once_and_records_the_whole_set(tmp_path):
    """``Run.begin``: no second validation, params.json holds exactly the runner's values."""
    from steerlib.experiment.run import step_identity

    Run.open("whole", runs_dir=str(tmp_path), device="cpu", layers=[3])
    paths = RunPaths.for_run("whole", tmp_path)
    params = RunParams(run_name="whole", layers=[3])  # device None: auto, as a config says
    Run.begin(params, runs_dir=str(tmp_path))
    assert paths.stored_params() == params.notebook_parameters()
    assert paths.stored_params()["device"] is None
    before = paths.params.stat().st_mtime_ns
    Run.begin(params, runs_dir=str(tmp_path))  # the same set: nothing is written
    assert paths.params.stat().st_mtime_ns == before
    paths.set_status("05_sweep", "done", params=step_identity("05_sweep", params.model_dump()))
    other = params.model_copy(update={"samples_per_prompt": params.samples_per_prompt + 1})
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        Run.begin(other, runs_dir=str(tmp_path))
    assert paths.params.stat().st_mtime_ns == before
    Run.begin(other, runs_dir=str(tmp_path), force=True)
    assert paths.read_status()["05_sweep"]["state"] == "stale"
    assert paths.stored_params()["samples_per_prompt"] == other.samples_per_prompt


def test_the_chain_gives_each_notebook_only_the_run_to_open(tmp_path, monkeypatch, tiny_model):
    """The runner opens the run once; a notebook gets its name, folder and force, no values."""
    import nbformat

    from steerlib.experiment.chain import run_chain

    given = []

    def spy(notebook, output, parameters, **kwargs):
        given.append(parameters)
        nbformat.write(nbformat.v4.new_notebook(), output)  # what papermill would leave

    monkeypatch.setattr(papermill, "execute_notebook", spy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(
        None, {"model": str(tiny_model), "layers": [1], "n_prompts": 2, "run_name": "spied"}
    )
    code = run_chain(params, runs_dir=str(tmp_path), notebooks=NOTEBOOKS[:2], progress=False)
    assert code == 0
    runs = str(tmp_path.resolve())
    assert given == [{"run_name": "spied", "runs_dir": runs, "force": False}] * 2
    paths = RunPaths.for_run("spied", tmp_path)
    assert paths.stored_params() == params.notebook_parameters()
    assert paths.read_status()["02_baseline"]["params"]["model"] == str(tiny_model)
