"""Issue 26: nothing finished that is not whole. One test per reproduction of the issue.

Each reproduction gives the right result or one clear ``steerlib:`` line before any work
(exit 2 bad input, 3 damaged run). The fast tests build runs with the project's own writers
(``Run.open``, ``Run.step``, ``atomic_write_*``, ``SteeringVector.save``) and the 4-layer test
Llama; the slow ones run the chain on it (a base run, then copies made with ``--from-run``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from steerlib import pipeline
from steerlib._io import CHECKSUM_KEY, atomic_write_json, atomic_write_parquet
from steerlib.apps import export, status
from steerlib.errors import EXIT_BAD_INPUT, EXIT_DAMAGED_RUN, ConfigError, DamagedRunError
from steerlib.experiment import figures
from steerlib.experiment.chain import copy_finished_steps, run_chain
from steerlib.experiment.config import RunParams
from steerlib.experiment.preflight import check_run_files
from steerlib.experiment.report import MIN_PROMPTS_PER_HALF, verdict
from steerlib.experiment.run import Run, check_changes
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.sweep import read_unit, starts_afresh
from steerlib.models.layers import get_decoder_layers
from steerlib.steer.hooks import steering
from steerlib.steer.vectors import SteeringVector, model_provenance


def _one_line(err: str) -> str:
    message = err.strip()
    assert message and "Traceback" not in message
    assert all(line.startswith("steerlib: ") for line in message.splitlines()), message
    return message


def _run(capsys, *sets: str, run_name: str = "r") -> tuple[int, str]:
    argv = ["--run-name", run_name]
    for item in sets:
        argv += ["--set", item]
    code = pipeline.main(argv)
    return code, capsys.readouterr().err


def _tiny(model: Path) -> tuple[str, ...]:
    return (f"model={model}", "layers=[1]")


# -- preflight: the late failures, now one line before any work ----------------------------
@pytest.mark.parametrize(
    ("sets", "culprit"),
    [
        (("kl_texts=0", "alpha_search=true"), "'kl_texts'"),
        (("pair_source=matched", "samples_per_prompt=1"), "'samples_per_prompt'"),
        (("variants=[caa, multilayer]", "multilayer_span=1000"), "'multilayer_span'"),
        (("alphas=[0, 1e-400]",), "underflow"),
    ],
)
def test_late_failures_are_caught_before_any_work(capsys, runs, tiny_model, sets, culprit):
    code, err = _run(capsys, *_tiny(tiny_model), *sets)
    assert code == EXIT_BAD_INPUT
    assert culprit in _one_line(err)
    assert not runs.exists()


def test_kl_texts_0_with_the_alpha_search_is_one_line_with_the_right_fix(capsys, runs, tiny_model):
    code, err = _run(capsys, *_tiny(tiny_model), "kl_texts=0", "alpha_search=true")
    assert code == EXIT_BAD_INPUT
    message = _one_line(err)
    assert len(message.splitlines()) == 1, message
    assert "lower n_prompts" not in message and "at least 2" in message


def test_from_run_of_a_run_that_does_not_exist_is_one_line(capsys, runs, tiny_model):
    argv = ["--run-name", "new", "--from-run", "nosuch", "--set", f"model={tiny_model}"]
    assert pipeline.main([*argv, "--set", "layers=[1]"]) == EXIT_BAD_INPUT
    assert "there is no run" in _one_line(capsys.readouterr().err)
    assert not runs.exists() or not any(runs.iterdir())


def test_a_model_path_that_does_not_exist_is_a_missing_folder(capsys, runs, tmp_path):
    code, err = _run(capsys, f"model={tmp_path / 'no' / 'such-model'}")
    assert code == EXIT_BAD_INPUT
    message = _one_line(err)
    assert "there is no folder" in message and "not a Hugging Face repo id" in message


def test_a_100_emoji_run_name_is_one_line_in_run_and_status(capsys, runs):
    name = "\N{GRINNING FACE}" * 100
    code, err = _run(capsys, run_name=name)
    assert code == EXIT_BAD_INPUT and "bytes in UTF-8" in _one_line(err)
    assert status.main([name]) == EXIT_BAD_INPUT
    assert "bytes in UTF-8" in _one_line(capsys.readouterr().err)


def test_a_lock_folder_is_one_line(capsys, runs, tiny_model):
    Run.open("r", model=str(tiny_model), layers=[1])
    RunPaths.for_run("r").lock.mkdir()
    code, err = _run(capsys, *_tiny(tiny_model))
    assert code == EXIT_DAMAGED_RUN and "is a folder" in _one_line(err)


def test_status_of_a_missing_run_exits_non_zero(capsys, runs):
    assert status.main(["nosuchrun"]) == EXIT_BAD_INPUT
    assert "no run 'nosuchrun'" in _one_line(capsys.readouterr().err)


def test_status_into_a_closed_pipe_exits_quietly(runs, tiny_model):
    Run.open("r", model=str(tiny_model), layers=[1])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line (`status | head -0`)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "steerlib", "status"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    finally:
        os.close(write)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


# -- integrity: units and products --------------------------------------------------------
def _unit(paths: RunPaths, name: str) -> Path:
    table = pd.DataFrame({"alpha": [0.0, 1.0], "toxicity": [0.5, 0.25], "completion": ["a", "b"]})
    return atomic_write_parquet(paths.sweep_parts / name, table)


def test_a_sweep_unit_edited_in_place_is_refused(capsys, runs, tiny_model):
    paths = Run.open("r", model=str(tiny_model), layers=[1]).paths
    unit = _unit(paths, "caa-L1-b0.parquet")
    edited = pd.read_parquet(unit)
    edited.loc[0, "toxicity"] = 0.0
    edited.to_parquet(unit, index=False)
    code, err = _run(capsys, *_tiny(tiny_model))
    assert code == EXIT_DAMAGED_RUN
    assert "caa-L1-b0.parquet" in _one_line(err)
    assert status.main(["r"]) == EXIT_DAMAGED_RUN  # status reports it too


def test_a_truncated_search_unit_is_one_line_exit_3(capsys, runs, tiny_model):
    paths = Run.open("r", model=str(tiny_model), layers=[1]).paths
    unit = _unit(paths, "search/caa-search-a1-L1-b0.parquet")
    unit.write_bytes(unit.read_bytes()[:40])
    code, err = _run(capsys, *_tiny(tiny_model))
    assert code == EXIT_DAMAGED_RUN and "search" in _one_line(err)


def _finished_analysis(tiny_model: Path, summary: dict) -> RunPaths:
    """A run whose step 06 is recorded done (by Run.step) with ``summary`` as its product."""
    run = Run.open("r", model=str(tiny_model), layers=[1])
    with run.step("06_analysis"):
        atomic_write_json(run.paths.summary, summary)
        atomic_write_parquet(run.paths.summary_table, pd.DataFrame({"layer": [1]}))
    run.paths.record_complete("06_analysis")
    return run.paths


def test_status_and_figures_report_a_product_changed_after_its_step(capsys, runs, tiny_model):
    paths = _finished_analysis(tiny_model, {"recommended": {}})
    assert status.main(["r"]) == 0
    capsys.readouterr()
    text = paths.summary.read_text()
    paths.summary.write_text(text[: len(text) // 2])  # truncated
    assert status.main(["r"]) == EXIT_DAMAGED_RUN
    assert "summary.json" in _one_line(capsys.readouterr().err)
    assert figures.main(["r"]) == EXIT_DAMAGED_RUN
    assert "summary.json" in _one_line(capsys.readouterr().err)


def test_a_damaged_product_is_one_line_in_every_command(capsys, runs, tiny_model, llama):
    paths = _exported_run(tiny_model, llama, units="raw")
    paths.record_complete("06_analysis")  # with its checksums, as the runner records it
    text = paths.summary.read_text()
    paths.summary.write_text(text[: len(text) // 2])  # unreadable AND off its checksum
    for command in (status.main, figures.main, export.main):
        assert command(["r"]) == EXIT_DAMAGED_RUN
        message = _one_line(capsys.readouterr().err)
        assert len(message.splitlines()) == 1 and "summary.json is damaged" in message


def test_a_product_deleted_as_advised_reruns_its_step(capsys, runs, tiny_model):
    paths = _finished_analysis(tiny_model, {"recommended": {}})
    paths.summary.write_text("{")
    with pytest.raises(DamagedRunError, match="delete it and run the same command again"):
        check_run_files(paths)
    paths.summary.unlink()  # what the line says
    check_run_files(paths, rerun_missing=True)  # the runner: step 06 runs again, not refused
    assert not paths.is_complete("06_analysis")
    assert status.main(["r"]) == EXIT_DAMAGED_RUN  # status still says it is gone
    message = _one_line(capsys.readouterr().err)
    assert "summary.json is missing; run the same command again" in message


def _finished_sweep(tiny_model: Path) -> tuple[RunPaths, list[Path]]:
    """A run whose step 05 is recorded whole by the runner, with a grid and a search unit."""
    run = Run.open("r", model=str(tiny_model), layers=[1])
    paths = run.paths
    with run.step("05_sweep"):
        units = [_unit(paths, "caa-L1-b0.parquet"), _unit(paths, "search/caa-s-L1-b0.parquet")]
        atomic_write_parquet(paths.sweep, pd.DataFrame({"layer": [1]}))
        atomic_write_parquet(paths.kl, pd.DataFrame({"layer": [1]}))
    paths.record_complete("05_sweep")
    with run.step("06_analysis"):
        atomic_write_json(paths.summary, {"recommended": {}})
        atomic_write_parquet(paths.summary_table, pd.DataFrame({"layer": [1]}))
    paths.record_complete("06_analysis")
    return paths, units


@pytest.mark.parametrize("which", [0, 1], ids=["grid", "search"])
def test_a_unit_deleted_as_advised_resumes_the_sweep(capsys, runs, tiny_model, which):
    paths, units = _finished_sweep(tiny_model)
    assert paths.read_status()["05_sweep"]["units"] == [
        "caa-L1-b0.parquet",
        "search/caa-s-L1-b0.parquet",
    ]
    check_run_files(paths)
    units[which].write_bytes(units[which].read_bytes()[:40])
    with pytest.raises(DamagedRunError, match="only that unit is generated again"):
        check_run_files(paths)
    units[which].unlink()  # what the line says
    assert status.main(["r"]) == EXIT_DAMAGED_RUN  # status names the missing unit
    message = _one_line(capsys.readouterr().err)
    assert f"{units[which].name} is missing; run the same command again" in message
    assert "05_sweep generates it again" in message
    check_run_files(paths, rerun_missing=True)  # the runner: not refused
    identity = paths.read_status()["05_sweep"]["params"]
    params = RunParams.validate_mapping({"run_name": "r", "model": str(tiny_model), "layers": [1]})
    assert run_chain(params, runs_dir=str(runs), notebooks=(), progress=False) == 0
    assert "the sweep (05) resumes and generates only those" in capsys.readouterr().out
    record = paths.read_status()["05_sweep"]
    assert record["state"] == "stale" and record["resume"] is True  # resumed, not afresh
    assert record["params"] == identity and units[which].name in record["reason"]
    assert not starts_afresh(Run.open("r"))  # the other unit is kept
    assert not paths.is_complete("05_sweep") and not paths.is_complete("06_analysis")
    assert units[1 - which].is_file()


def test_status_shows_a_step_killed_inside_its_notebook_as_unfinished(capsys, runs, tiny_model):
    paths = _finished_analysis(tiny_model, {"recommended": {}})
    record = {k: v for k, v in paths.read_status()["06_analysis"].items() if k != "updated"}
    record.pop("complete"), record.pop("state")
    paths.set_status("06_analysis", "done", **record)  # what the notebook itself records
    assert status.main(["r"]) == 0
    assert "06_analysis     done" in capsys.readouterr().out  # a notebook run by hand
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    (paths.notebooks / ".partial-06_analysis.ipynb").write_text("{}")  # the runner was killed
    assert status.main(["r"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "06_analysis" in x)
    assert "unfinished" in line and "rerun the same command" in line


def test_status_of_a_run_without_params_json_says_how_to_record_it(capsys, runs, tiny_model):
    paths = _finished_analysis(tiny_model, {"recommended": {}})
    paths.params.unlink()  # deleted as the damaged-file line advises
    assert status.main([]) == EXIT_DAMAGED_RUN  # listed, not skipped
    captured = capsys.readouterr()
    assert "06_analysis     done" in captured.out
    message = _one_line(captured.err)
    assert "has no params.json" in message and "its own --set values" in message
    assert status.main(["r"]) == EXIT_DAMAGED_RUN


# -- runs made before checksums (review 1) -------------------------------------------------
def _pre_merge_run(tiny_model: Path) -> tuple[RunPaths, list[Path]]:
    """A finished run as recorded before issue 26: units without checksums, no "complete"."""
    paths = _finished_analysis(tiny_model, {"recommended": {}})
    units = [_unit(paths, "caa-L1-b0.parquet"), _unit(paths, "search/caa-search-a1-L1-b0.parquet")]
    for unit in units:  # rewritten the way the old code wrote them: no checksum inside
        pd.read_parquet(unit).to_parquet(unit, index=False)
        assert CHECKSUM_KEY not in (pq.read_schema(unit).metadata or {})
    for step, record in paths.read_status().items():
        old = {k: v for k, v in record.items() if k not in ("state", "updated", "complete")}
        old.pop("checksums", None)
        paths.set_status(step, record["state"], **old)
    assert paths.made_before_checksums()
    return paths, units


def test_a_run_made_before_checksums_is_accepted_and_its_units_stamped(capsys, runs, tiny_model):
    paths, units = _pre_merge_run(tiny_model)
    check_run_files(paths)  # what run, status, figures and export check first
    assert status.main(["r"]) == 0
    assert figures.main(["r"]) != EXIT_DAMAGED_RUN
    params = RunParams.validate_mapping({"run_name": "r", "model": str(tiny_model), "layers": [1]})
    assert run_chain(params, runs_dir=str(runs), notebooks=(), progress=False) == 0
    assert "2 of its units checked readable and stamped" in capsys.readouterr().out
    for unit in units:
        assert CHECKSUM_KEY in pq.read_schema(unit).metadata
        read_unit(unit)  # checked from now on


def test_a_truncated_unit_of_a_run_made_before_checksums_is_still_refused(capsys, runs, tiny_model):
    paths, units = _pre_merge_run(tiny_model)
    units[0].write_bytes(units[0].read_bytes()[:40])
    assert status.main(["r"]) == EXIT_DAMAGED_RUN
    assert "caa-L1-b0.parquet" in _one_line(capsys.readouterr().err)
    with pytest.raises(DamagedRunError, match=r"caa-L1-b0\.parquet"):
        check_run_files(paths)


def test_a_unit_without_checksum_in_a_run_recorded_with_checksums_is_refused(runs, tiny_model):
    paths, _ = _pre_merge_run(tiny_model)
    paths.record_complete("06_analysis")  # recorded by the current runner
    assert not paths.made_before_checksums()
    with pytest.raises(DamagedRunError, match="no steerlib checksum"):
        check_run_files(paths)


# -- identity ------------------------------------------------------------------------------
def test_a_deleted_params_json_cannot_relabel_the_run(runs, tiny_model):
    run = Run.open("r", model=str(tiny_model), layers=[1], n_prompts=2, samples_per_prompt=1)
    with run.step("01_data"):
        pass
    with run.step("02_baseline"):
        pass
    run.paths.params.unlink()  # what the damaged-params advice says
    values = {**run.params.notebook_parameters(), "n_prompts": 3, "samples_per_prompt": 2}
    with pytest.raises(ConfigError, match="n_prompts 2 -> 3"):
        check_changes(run.paths, values)
    # A rewritten params.json does not relabel it either: the steps' own record wins.
    run.paths.write_params(values)
    with pytest.raises(ConfigError, match="samples_per_prompt 1 -> 2"):
        check_changes(run.paths, values)


# -- export --------------------------------------------------------------------------------
def _exported_run(tiny_model, llama, *, units: str, variant: str = "caa") -> RunPaths:
    width = llama.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    vector = SteeringVector(
        {k: torch.randn(width, generator=gen) for k in (1, 2)},
        model_provenance(llama) | {"method": "test", "direction": "caa"},
        {1: 7.0, 2: 9.0},
    )
    run = Run.open("r", model=str(tiny_model), layers=[1, 2], units=units)
    with run.step("04_vectors"):
        vector.save(run.paths.vectors)
        vector.save(run.paths.control_vectors)
    with run.step("06_analysis"):
        point = {"layer": 2, "alpha": 1.5, "variant": variant}
        atomic_write_json(run.paths.summary, {"recommended": point})
        atomic_write_parquet(run.paths.summary_table, pd.DataFrame({"layer": [2]}))
    return run.paths


def _llama_cpp_logits(model, tokenizer, path: Path, strength: float) -> torch.Tensor:
    """Logits with ``strength * direction.N`` added to block N's output, as llama.cpp does."""
    reader = gguf.GGUFReader(path)
    blocks = get_decoder_layers(model)
    handles = []
    for tensor in reader.tensors:
        index = int(tensor.name.split(".")[1])
        delta = strength * torch.from_numpy(np.array(tensor.data, dtype=np.float32))

        def hook(module, args, output, delta=delta):
            return (output[0] + delta, *output[1:]) if isinstance(output, tuple) else output + delta

        handles.append(blocks[index].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            return model(**tokenizer(["A test prompt"], return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_export_honours_norm_units_and_prints_the_strength_that_reproduces_the_run(
    capsys, runs, tiny_model, llama, tokenizer, scale
):
    paths = _exported_run(tiny_model, llama, units="norm")
    assert export.main(["r", "--scale", str(scale)]) == 0
    out = capsys.readouterr().out
    strength = float(out.split(".gguf:")[-1].split()[0])
    vector = SteeringVector.load(paths.vectors)
    with torch.inference_mode(), steering(llama, vector, 1.5, layers=2, units="norm"):
        ours = llama(**tokenizer(["A test prompt"], return_tensors="pt")).logits
    theirs = _llama_cpp_logits(llama, tokenizer, paths.root / "vectors.gguf", strength)
    torch.testing.assert_close(theirs, ours)
    # The check can fail: the raw vector at the same strength steers differently.
    with torch.inference_mode(), steering(llama, vector, 1.5, layers=2, units="raw"):
        raw = llama(**tokenizer(["A test prompt"], return_tensors="pt")).logits
    assert not torch.allclose(theirs, raw, atol=1e-4)


def test_export_refuses_a_variant_a_control_vector_cannot_express(capsys, runs, tiny_model, llama):
    paths = _exported_run(tiny_model, llama, units="raw", variant="ablate")
    assert export.main(["r"]) == EXIT_BAD_INPUT
    assert "'ablate'" in _one_line(capsys.readouterr().err)
    assert not (paths.root / "vectors.gguf").exists()


def test_export_out_a_folder_is_one_line(capsys, runs, tiny_model, llama, tmp_path):
    _exported_run(tiny_model, llama, units="raw")
    assert export.main(["r", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "is a folder" in _one_line(capsys.readouterr().err)


# -- thin evidence -------------------------------------------------------------------------
def _summary(n: int) -> dict:
    point = {
        "layer": 2,
        "alpha": 1.0,
        "expected_max_toxicity": 0.0239,
        "baseline_expected_max_toxicity": 0.2,
        "expected_max_toxicity_ci": [0.0239, 0.0239],
        "n_prompts": n,
        "figures_from": "confirmation",
    }
    split = {"n_prompts": {"challenging": {"selection": n, "confirmation": n}}}
    return {"recommended": point, "split": split, "params": {}}


def test_a_verdict_from_too_few_prompts_says_so():
    thin = verdict(_summary(1))[0]
    assert thin.startswith("Too few prompts to conclude") and "Yes" not in thin
    assert verdict(_summary(MIN_PROMPTS_PER_HALF))[0].startswith("Yes, steering cuts toxicity")


def test_the_verdict_counts_one_challenging_prompt_in_the_singular():
    thin = verdict(_summary(1))[0]
    assert "on the 1 challenging prompt of the confirmation half" in thin
    assert "a half with 1 challenging prompt (fewer than" in thin
    assert "1 challenging prompts" not in thin
    many = verdict(_summary(MIN_PROMPTS_PER_HALF))[0]
    assert f"on the {MIN_PROMPTS_PER_HALF} challenging prompts of the confirmation half" in many


# -- the chain on the test Llama (slow) ------------------------------------------------------
TINY = [
    "n_prompts=3",
    "n_pairs=3",
    "samples_per_prompt=2",
    "max_new_tokens=4",
    "layers=[1, 2]",
    "alphas=[0.0, 1.0]",
    "kl_texts=2",
    "n_resamples=100",
    "alpha_search=false",
]


@pytest.fixture(scope="module")
def chain_env(tmp_path_factory, tiny_model) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reliability")
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STEERLIB_RUNS_DIR": str(root / "runs"),
        "CHAIN_MODEL": str(tiny_model),
    }


def _command(env: dict[str, str], name: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "steerlib", "run", "--run-name", name, "--no-progress"]
    for item in [*TINY, f"model={env['CHAIN_MODEL']}"]:
        args += ["--set", item]
    return [*args, *extra]


def _chain(env: dict[str, str], name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(env, name, *extra), env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def base(chain_env) -> RunPaths:
    result = _chain(chain_env, "base")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return RunPaths.for_run("base", chain_env["STEERLIB_RUNS_DIR"])


def _executed_cells(notebook: Path) -> int:
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError):
        return 0
    return sum(1 for c in cells if c["cell_type"] == "code" and c.get("execution_count"))


@pytest.mark.slow
def test_from_run_checks_before_copying(base, chain_env):
    result = _chain(chain_env, "other", "--from-run", "base", "--set", "n_pairs=2")
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "n_pairs" in _one_line(result.stderr)
    assert not (base.root.parent / "other").exists()


@pytest.mark.slow
def test_kill_inside_the_analysis_then_the_same_command_gives_a_whole_report(base, chain_env):
    killed = RunPaths.for_run("killed", chain_env["STEERLIB_RUNS_DIR"])
    # An interrupted --from-run: steps 01-02 copied, 03-04 not yet.
    assert copy_finished_steps(base, killed, through="02_baseline") == ["01_data", "02_baseline"]
    command = _command(chain_env, "killed", "--from-run", "base")
    process = subprocess.Popen(
        command,
        env=chain_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = killed.notebooks / ".partial-06_analysis.ipynb"
    deadline = time.monotonic() + 400
    try:
        # Killed once the analysis's code has recorded the step done, while the notebook still
        # has its tables and figures to show (the case that used to be taken as finished).
        while not (partial.is_file() and killed.step_state("06_analysis") == "done"):
            assert process.poll() is None, "the run ended before it could be killed in 06"
            assert time.monotonic() < deadline, "notebook 06 never got under way"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert killed.read_status()["06_analysis"].get("complete") is not True
    assert _executed_cells(partial) < _executed_cells(base.notebooks / "06_analysis.ipynb")
    rerun = subprocess.run(command, env=chain_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "06_analysis: done earlier, skipped" not in rerun.stdout
    assert "05_sweep: done earlier, skipped" in rerun.stdout
    executed = killed.notebooks / "06_analysis.ipynb"
    code_cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code_cells)
    assert killed.is_complete("06_analysis") and not killed.product_problems()
    html = killed.report.read_text(encoding="utf-8")
    assert "steering" in html.lower() and html.count("plotly") > 3
    assert killed.report.stat().st_mtime >= executed.stat().st_mtime


@pytest.mark.slow
def test_deleted_params_then_other_values_is_refused_without_relabelling(base, chain_env):
    base.params.unlink()
    result = _chain(chain_env, "base", "--set", "n_prompts=4", "--set", "samples_per_prompt=3")
    assert result.returncode == EXIT_BAD_INPUT, result.stdout[-2000:] + result.stderr
    assert "n_prompts 3 -> 4" in _one_line(result.stderr)
    assert not base.params.exists() or base.stored_params().get("n_prompts") != 4
    again = _chain(chain_env, "base")  # the run's own values: every step is skipped
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done earlier, skipped") == 6


@pytest.mark.slow
def test_force_redoes_only_the_first_changed_step_and_after(base, chain_env):
    result = _chain(chain_env, "base", "--set", "project_sink=false", "--force")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("01_data", "02_baseline", "03_activations"):
        assert f"{step}: done earlier, skipped" in result.stdout
    for step in ("04_vectors", "05_sweep", "06_analysis"):
        assert f"{step}: running" in result.stdout
    assert json.loads(base.vectors.with_suffix(".json").read_text())["sink_projected"] is False


@pytest.mark.slow
def test_a_product_deleted_as_the_damage_line_advises_is_made_again(base, chain_env):
    sweep = base.sweep.read_bytes()
    base.sweep.write_bytes(sweep[: len(sweep) // 2])
    refused = _chain(chain_env, "base", "--set", "project_sink=false")
    assert refused.returncode == EXIT_DAMAGED_RUN
    assert "delete it and run the same command again" in _one_line(refused.stderr)
    base.sweep.unlink()  # what the line says
    result = _chain(chain_env, "base", "--set", "project_sink=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "04_vectors: done earlier, skipped" in result.stdout
    assert "05_sweep: running" in result.stdout and "06_analysis: running" in result.stdout
    assert base.is_complete("05_sweep") and not base.product_problems()


@pytest.mark.slow
def test_a_unit_deleted_from_a_finished_sweep_is_generated_again(base, chain_env):
    sink = base.read_status()["04_vectors"]["params"]["project_sink"]  # as the tests above left it
    same = ("--set", f"project_sink={str(sink).lower()}")
    assert _chain(chain_env, "base", *same).returncode == 0  # whole, whatever ran before
    parts = sorted(base.sweep_parts.glob("*.parquet"))
    unit, kept = parts[0], {p: p.stat().st_mtime_ns for p in parts[1:]}
    before = read_unit(unit)
    unit.unlink()  # as the damage line of a unit advises
    result = _chain(chain_env, "base", *same)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "04_vectors: done earlier, skipped" in result.stdout
    assert "05_sweep: running" in result.stdout and "06_analysis: running" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the other units are kept
    again = read_unit(unit)
    columns = ["prompt_id", "sample", "alpha", "completion"]
    pd.testing.assert_frame_equal(again[columns], before[columns])  # seeds from the unit key
    assert base.is_complete("05_sweep") and base.is_complete("06_analysis")
    assert not base.product_problems() and not base.missing_units()
    lines = status.report("base", chain_env["STEERLIB_RUNS_DIR"]).splitlines()
    units = next(line for line in lines if "sweep units" in line).split()[2]
    done, total = units.rstrip(",").split("/")
    assert done == total
