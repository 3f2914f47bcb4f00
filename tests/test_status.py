"""``python -m steerlib status``: sweep progress read from a run directory alone."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from steerlib.apps import status
from steerlib.apps.cli import main as cli_main
from steerlib.generate.engine import sweep_units
from steerlib.pipeline import Run


@pytest.fixture()
def run(tmp_path):
    made = Run.open(
        "long",
        runs_dir=str(tmp_path),
        layers=[3, 6],
        alphas=[0.0, 1.0],
        samples_per_prompt=2,
        max_new_tokens=4,
        random_control=True,
    )
    paths, params = made.paths, made.params
    paths.sweep_parts.mkdir(parents=True)
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(6)],
            "prompt": [f"prompt number {i}" for i in range(6)],
            "role": ["challenging"] * 3 + ["benign"] * 2 + ["pair_toxic"],
        }
    )
    prompts.to_parquet(paths.prompts)
    # The vector's sidecar, as SteeringVector.save writes it (only its layer count is read).
    paths.vectors.with_suffix(".json").write_text(json.dumps({"num_layers": 8}))
    return paths, params


def test_progress_counts_units_layers_and_time_left(run):
    paths, params = run
    prompts = pd.read_parquet(paths.prompts).iloc[:5]
    # The run's own partition uses the default unit size: every prompt in one bucket.
    expected = sweep_units(
        prompts, layers=[3, 6], directions=["caa", "random"], alphas=[1.0], samples_per_prompt=2
    )
    keys = [unit.key for unit in expected]
    assert keys == ["caa-L3-b000", "random-L3-b000", "caa-L6-b000", "random-L6-b000"]
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for i, key in enumerate(keys[:3]):  # written 60 s apart, after a 1-hour pause
        path = paths.sweep_parts / f"{key}.parquet"
        path.write_bytes(b"")
        os.utime(path, (start + 60 * i + (3600 if i else 0),) * 2)
    (paths.sweep_parts / "caa-L9-b000.parquet").write_bytes(b"")  # a layer not asked for
    now = datetime(2026, 1, 1, 2, tzinfo=UTC)
    progress = status.sweep_progress(paths, params, now=now)
    assert (progress.done, progress.total, progress.left) == (3, 4, 1)
    assert progress.complete_layers == [3]
    assert progress.seconds_per_unit == pytest.approx((3660 + 60) / 2)  # median of 2 intervals
    assert progress.eta == now + timedelta(seconds=1860)


def test_status_command_prints_each_run(run, capsys):
    paths, _ = run
    paths.set_status("05_sweep", "partial", rows=10)
    assert cli_main(["status", "--runs-dir", str(paths.root.parent)]) == 0
    out = capsys.readouterr().out
    assert "long" in out and "05_sweep        partial" in out
    assert "01_data         not run" in out and out.index("01_data") < out.index("06_analysis")
    assert "sweep units     0/4" in out and "complete layers none yet" in out
    assert status.main(["missing", "--runs-dir", str(paths.root.parent)]) == 2  # issue 26
    assert "no run 'missing' at" in capsys.readouterr().err


def test_status_counts_the_units_of_the_sweeps_own_plan(run):
    from steerlib.experiment.config import RunParams
    from steerlib.experiment.sweep import sweep_plan

    paths, params = run
    plan = sweep_plan(params, 8)
    assert (plan.layers, plan.directions, plan.alphas) == ([3, 6], ["caa", "random"], [1.0])
    prompts = pd.read_parquet(paths.prompts)
    keys = [unit.key for unit in plan.units(prompts, params)]
    assert keys == [unit.key for unit in status._units(paths, params)]
    alone = sweep_plan(RunParams(layers=[-1], random_control=False, alphas=[0.0, -2.0]), 8)
    assert (alone.layers, alone.directions, alone.alphas) == ([7], ["caa"], [-2.0])


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_says_whether_a_running_steps_process_is_alive(run, capsys, monkeypatch):
    import socket

    from steerlib.experiment import runs

    paths, _ = run
    paths.set_status("03_activations", "running")
    record = paths.read_status()["03_activations"]
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert "owner_pid" not in record
    assert runs.process_state(record) == ("alive", os.getpid())
    # A notebook kernel writes for the chain runner that holds the lock: both are recorded.
    monkeypatch.setenv("STEERLIB_LOCK_OWNER", str(os.getpid() + 1))
    paths.set_status("05_sweep", "partial", rows=10)
    assert paths.read_status()["05_sweep"]["owner_pid"] == os.getpid() + 1
    paths.set_status("05_sweep", "done")
    assert "pid" not in paths.read_status()["05_sweep"]  # a finished step names no process
    monkeypatch.delenv("STEERLIB_LOCK_OWNER")

    assert status.main(["long", "--runs-dir", str(paths.root.parent)]) == 0
    out = capsys.readouterr().out
    assert f"03_activations  running  process {os.getpid()} is running" in out

    gone = _dead_pid()
    paths.set_status("03_activations", "running", pid=gone)
    assert runs.process_state(paths.read_status()["03_activations"]) == ("gone", gone)
    assert status.main(["long", "--runs-dir", str(paths.root.parent)]) == 0
    out = capsys.readouterr().out
    assert f"stale: process {gone} is gone, rerun the same command to resume" in out

    paths.set_status("03_activations", "running", host="another-host")
    assert "(not checkable from this host)" in status.report("long", str(paths.root.parent))
    # A record without a process (an older version): the lock says who holds the run.
    paths.set_status("03_activations", "running", pid=None, host=None)
    assert "stale: no process holds the run" in status.report("long", str(paths.root.parent))
    with runs.run_lock(paths):
        assert f"process {os.getpid()} is running" in status.report("long", str(paths.root.parent))
