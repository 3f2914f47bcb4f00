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

from steerlib.config import RunParams, load_params, parse_overrides
from steerlib.errors import ConfigError
from steerlib.pipeline import NOTEBOOKS, STEPS, Run
from steerlib.runs import PROJECT_ROOT, RunLockedError, RunPaths, run_lock

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
    declared = papermill.inspect_notebook(str(path))
    defaults = RunParams().notebook_parameters()
    for name, info in declared.items():
        if name in {"runs_dir", "force"}:
            continue
        assert name in defaults, f"{path.name} declares {name}, which RunParams lacks"
        value = eval(info["default"])  # literal defaults written in the parameters cell
        expected = defaults[name] if defaults[name] is not None else ""
        assert value == expected, name


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
        "import sys, time; from steerlib.runs import RunPaths, run_lock\n"
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
    assert record["params"]["n_prompts"] == 5 and record["versions"]["torch"]
    assert "git_commit" in record
    again = Run.open("demo", runs_dir=str(tmp_path))
    assert again.params.n_prompts == 5 and not again.notes
    changed = Run.open("demo", runs_dir=str(tmp_path), n_prompts=6)
    assert "n_prompts" in changed.notes[0] and "force=True" in changed.notes[0]
    with pytest.raises(ConfigError, match="unknown parameter 'prompts'"):
        Run.open("demo", runs_dir=str(tmp_path), prompts=3)


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


@pytest.mark.parametrize(
    ("change", "resumes"),
    [
        ({"layers": [3, 12]}, True),
        ({"random_control": False, "n_resamples": 100}, True),
        ({"n_prompts": 7}, False),
        ({"layers": [3, 12], "samples_per_prompt": 4}, False),  # units would change too
    ],
)
def test_changing_the_sweep_layers_reopens_the_sweep_for_resumption(tmp_path, change, resumes):
    Run.open("grow", runs_dir=str(tmp_path), layers=[12], random_control=True, n_prompts=5)
    paths = RunPaths.for_run("grow", tmp_path)
    for step in STEPS:
        paths.set_status(step, "done")
    changed = Run.open("grow", runs_dir=str(tmp_path), **change)
    status = paths.read_status()
    if resumes:
        assert status["05_sweep"]["state"] == "stale" and status["05_sweep"]["resume"] is True
        assert status["06_analysis"]["state"] == "stale"
        assert "generates only the units it lacks" in changed.notes[0]
    else:
        assert all(status[s]["state"] == "done" for s in STEPS)
        assert all("force=True" in note for note in changed.notes)
    assert status["04_vectors"]["state"] == "done"


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
