"""Issue 25, items 1 and 4: where a run's time goes, and a console line for every long phase.

Step 05 records its phases (:mod:`steerlib.experiment.timings`); the chain runner prints them
under each step's seconds, ``status`` shows them for a finished run, and the runner's console
watcher draws a bar for every stage the step reports in ``progress.json``.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.timings import (
    PROGRESS_FILE,
    advance,
    phase,
    read_progress,
    read_timings,
    record_wall_seconds,
    recording,
    timed_notebook,
    timing_lines,
)

STEP_05_PHASES = [
    "setup",
    "grid generation",
    "toxicity scoring",
    "judge perplexity",
    "alpha search",
    "search passes",
    "searched units",
    "assembly",
    "KL pass",
]
TINY = {
    "n_prompts": 3,
    "n_pairs": 3,
    "samples_per_prompt": 2,
    "max_new_tokens": 6,
    "layers": [1],
    "alphas": [0.0, 0.5],
    "kl_texts": 2,
    "batch_size": 16,
}


# -- the recorder --------------------------------------------------------------------------------
def test_a_phase_leaves_out_the_phases_inside_it(tmp_path):
    paths = RunPaths.for_run("timed", tmp_path)
    with phase("outside any recording"):  # does nothing, writes nothing
        pass
    assert not paths.root.exists()
    with recording(paths, "05_sweep"):
        with phase("outer", total=2):
            time.sleep(0.05)
            with phase("inner", detail="layer 1"):
                now = read_progress(paths)
                assert now is not None
                assert (now.stage, now.phase, now.detail, now.done, now.total) == (
                    "outer",
                    "inner",
                    "layer 1",
                    0,
                    2,
                )
                time.sleep(0.2)
            advance()
            assert read_progress(paths).done == 1
    assert not (paths.root / PROGRESS_FILE).exists()  # the step is over
    record = read_timings(paths)["05_sweep"]
    outer, inner = record["phases"]["outer"]["seconds"], record["phases"]["inner"]["seconds"]
    assert inner >= 0.19 and 0.04 <= outer < 0.19  # the outer phase without the inner one
    assert record["recorded_seconds"] >= outer + inner


def test_a_failed_step_keeps_its_phases_and_the_runner_forgets_old_ones(tmp_path):
    paths = RunPaths.for_run("failed", tmp_path)
    with pytest.raises(RuntimeError), recording(paths, "05_sweep"), phase("grid generation"):
        raise RuntimeError("out of memory")
    first = read_timings(paths)["05_sweep"]
    assert list(first["phases"]) == ["grid generation"]
    record_wall_seconds(paths, "05_sweep", 12.345, since=first["started"])
    assert read_timings(paths)["05_sweep"] == {**first, "wall_seconds": 12.35}
    # Started again later, the step recorded no phases (torchrun workers made its units):
    record_wall_seconds(paths, "05_sweep", 3.0, since=time.time())
    assert read_timings(paths)["05_sweep"] == {"wall_seconds": 3.0}


def test_the_runner_times_a_notebook_that_ran_and_not_one_it_skipped(tmp_path):
    from steerlib._io import atomic_write_text

    paths = RunPaths.for_run("timed", tmp_path)
    executed = paths.notebooks / "01_data.ipynb"
    atomic_write_text(executed, "{}")
    ran: set[str] = set()
    with timed_notebook(paths, "01_data", executed, ran):  # skipped: its copy stays
        pass
    assert ran == set() and "01_data" not in read_timings(paths)
    with timed_notebook(paths, "01_data", executed, ran):  # ran: a new copy is put in place
        time.sleep(0.05)
        atomic_write_text(executed, "{}")
    assert ran == {"01_data"} and read_timings(paths)["01_data"]["wall_seconds"] >= 0.05


def test_the_table_adds_up_and_says_what_was_skipped():
    records = {
        "01_data": {"wall_seconds": 10.0},
        "05_sweep": {
            "wall_seconds": 90.0,
            "phases": {"grid generation": {"seconds": 50.0, "count": 1}},
        },
    }
    lines = timing_lines(records, ["01_data", "02_baseline", "05_sweep"], skipped={"02_baseline"})
    text = "\n".join(lines)
    assert "02_baseline" in text and "skipped" in text
    rest = next(line for line in lines if "rest of the step" in line)
    assert rest.split()[-2] == "40.0"  # 90 s of the step, 50 s of them in its one phase
    assert lines[-1].split()[-1] == "100.0"  # the total: steps that ran


# -- step 05 records every phase; the runner prints them under every step --------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory, tokenizer, llama) -> tuple[RunPaths, dict[str, float]]:
    """A tiny run (test Llama) through step 05 in this process, each step's seconds."""
    from steerlib.experiment.steps import (
        build_vectors,
        capture_activations,
        prepare_data,
        run_baseline,
    )
    from steerlib.experiment.sweep import sweep_step

    root = tmp_path_factory.mktemp("timings")
    model = root / "tiny-llama"
    llama.save_pretrained(model)
    tokenizer.save_pretrained(model)
    run = Run.open("timed", runs_dir=str(root / "runs"), model=str(model), **TINY)
    seconds = {}
    steps = [prepare_data, run_baseline, capture_activations, build_vectors, sweep_step]
    for name, step in zip(
        ["01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep"], steps, strict=True
    ):
        started = time.perf_counter()
        step(run)
        seconds[name] = time.perf_counter() - started
    return run.paths, seconds


def test_step_05_records_each_of_its_phases(swept):
    paths, seconds = swept
    record = read_timings(paths)["05_sweep"]
    assert list(record["phases"]) == STEP_05_PHASES
    assert all(r["seconds"] >= 0 for r in record["phases"].values())
    # Scoring runs once per unit; the phases and the rest make up the step.
    assert record["phases"]["toxicity scoring"]["count"] >= 2
    # each figure is rounded to 0.01 s on its own: the sum may pass the step by their rounding
    rounding = 0.005 * (len(record["phases"]) + 1)
    assert sum(r["seconds"] for r in record["phases"].values()) <= (
        record["recorded_seconds"] + rounding
    )
    assert record["recorded_seconds"] <= seconds["05_sweep"]
    assert not (paths.root / PROGRESS_FILE).exists()


def test_the_runner_prints_every_step_and_every_phase(swept, capsys):
    from steerlib.experiment.chain import NOTEBOOKS
    from steerlib.experiment.timings import print_timings

    paths, seconds = swept
    for step, value in seconds.items():
        record_wall_seconds(paths, step, value)
    steps = [notebook.stem for notebook in NOTEBOOKS]
    print_timings(paths, steps, ran=set(steps) - {"06_analysis"})
    out = capsys.readouterr().out
    lines = out.splitlines()
    shown = {line.split()[0]: line.split()[1] for line in lines if line.split()[0] in steps}
    for step, value in seconds.items():
        assert float(shown[step]) == pytest.approx(value, abs=0.06), step
    assert "06_analysis" in out and "skipped" in out
    for name in STEP_05_PHASES:
        assert any(line.strip().startswith(name) for line in lines), name
    assert "rest of the step" in out


def test_status_shows_the_timings_of_a_finished_run(swept):
    from steerlib.apps import status

    paths, _ = swept
    text = status.report(paths.name, str(paths.root.parent))
    assert "timings" in text
    for name in STEP_05_PHASES:
        assert f"    {name}" in text or f"  {name} (x" in text, name


# -- the console: every stage the step reports gets a bar ---------------------------------------
def test_the_watcher_shows_each_stage_with_its_count(tmp_path):
    from steerlib.experiment.progress import SweepWatcher

    paths = RunPaths.for_run("watched", tmp_path)
    out = io.StringIO()
    with SweepWatcher(paths, interval=0.05, file=out) as watcher:
        with recording(paths, "05_sweep"):
            with phase("alpha search", total=2):
                for layer in (12, 18):
                    with phase("search passes", detail=f"layer {layer}, caa"):
                        time.sleep(0.3)
                    advance()
                time.sleep(0.3)
            with phase("KL pass"):
                time.sleep(0.3)
    drawn = out.getvalue()
    assert watcher.stages == ["alpha search", "KL pass"]
    assert "[steerlib] alpha search" in drawn and "2/2" in drawn
    assert "search passes: layer 18, caa" in drawn
    assert "[steerlib] KL pass" in drawn


def test_the_watcher_counts_the_grid_units_between_its_stages(tmp_path):
    import pandas as pd

    from steerlib._io import atomic_write_parquet
    from steerlib.experiment.progress import SweepWatcher
    from steerlib.experiment.sweep import sweep_plan
    from steerlib.experiment.timings import GRID_PHASE

    run = Run.open("grid", runs_dir=str(tmp_path), layers=[3], alphas=[0.0, 1.0])
    paths = run.paths
    prompts = pd.DataFrame(
        {"prompt_id": ["a", "b"], "prompt": ["one", "two"], "role": ["challenging", "benign"]}
    )
    prompts.to_parquet(paths.prompts)
    paths.vectors.with_suffix(".json").write_text('{"num_layers": 8}')
    units = sweep_plan(run.params, 8).units(prompts, run.params)
    assert len(units) == 2  # caa and random, one bucket
    out = io.StringIO()
    with SweepWatcher(paths, interval=0.05, file=out) as watcher:
        time.sleep(0.3)  # the kernel starts: no stage yet, the units' bar shows
        with recording(paths, "05_sweep"):
            with phase("setup"):
                time.sleep(0.3)
            with phase(GRID_PHASE):
                for unit in units:
                    time.sleep(0.2)
                    atomic_write_parquet(
                        paths.sweep_parts / f"{unit.key}.parquet", pd.DataFrame({"x": [1]})
                    )
                time.sleep(0.2)
            with phase("assembly"):
                time.sleep(0.3)
    drawn = out.getvalue()
    assert watcher.stages == ["setup", "assembly"]
    # Each bar is closed before the next opens: setup's, the units', then assembly's.
    assert drawn.rindex("[steerlib] setup") < drawn.index("sweep: 100%")
    assert drawn.rindex("sweep:") < drawn.index("[steerlib] assembly")
    assert (watcher.done, watcher.total) == (len(units), len(units))
    assert "sweep: 100%" in drawn and f"{len(units)}/{len(units)}" in drawn


def test_the_watcher_ignores_a_progress_file_of_an_earlier_attempt(tmp_path):
    from steerlib.experiment.progress import SweepWatcher

    paths = RunPaths.for_run("old", tmp_path)
    left = threading.Event()

    def earlier_attempt() -> None:  # killed mid-phase: its progress.json stays behind
        with recording(paths, "05_sweep"), phase("KL pass"):
            left.wait(5)

    thread = threading.Thread(target=earlier_attempt)
    thread.start()
    while not (Path(paths.root) / PROGRESS_FILE).exists():
        time.sleep(0.01)
    progress = (Path(paths.root) / PROGRESS_FILE).read_bytes()
    left.set()
    thread.join()
    (Path(paths.root) / PROGRESS_FILE).write_bytes(progress)
    time.sleep(0.05)
    with SweepWatcher(paths, interval=0.05, file=io.StringIO()) as watcher:
        time.sleep(0.3)
    assert watcher.stages == []


def test_status_says_which_phase_a_running_step_is_in(tmp_path):
    from steerlib.apps import status

    run = Run.open("running", runs_dir=str(tmp_path), layers=[3])
    paths = run.paths
    with recording(paths, "05_sweep"), phase("alpha search", total=2):
        with phase("search passes", detail="layer 3, caa"):
            paths.set_status("05_sweep", "running")  # by this process: alive
            text = status.report("running", str(tmp_path))
            assert "now             alpha search 0/2 (search passes: layer 3, caa)" in text
            paths.set_status("05_sweep", "running", pid=2**22 + 12345)  # a process gone
            assert "now " not in status.report("running", str(tmp_path))
