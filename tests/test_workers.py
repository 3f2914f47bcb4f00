"""Torchrun workers (issue 17): two CPU workers (gloo) write exactly the rows of one process.

The tiny run sweeps two steering variants (``caa`` and ``clamp``, each with its own random
control; clamp's control is clamped to the random direction's own level), so the workers share
out every variant's grid and searched-alpha units.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from steerlib.experiment.run import Run
from steerlib.experiment.runs import (
    LAUNCH_TOKEN_ENV,
    RunLockedError,
    RunPaths,
    admit_worker,
    run_lock,
)
from steerlib.experiment.workers import EXIT_HOOK_ENV, Group, launch_workers, worker_device

KEY = ["variant", "subset", "direction", "layer", "alpha", "prompt_id", "sample"]
ROWS = [*KEY, "completion", "toxicity"]
TINY = {
    "n_prompts": 3,
    "n_pairs": 3,
    "samples_per_prompt": 2,
    "max_new_tokens": 6,
    "layers": [1, 2],
    "alphas": [0.0, 0.5],  # clamp takes alpha in [0, 1]
    "kl_texts": 2,
    "batch_size": 16,
    "variants": ["caa", "clamp"],
}


# -- the lock admits the workers of one launch, and nothing else ------------------------------
def test_the_lock_admits_only_the_workers_of_its_launch(tmp_path, monkeypatch):
    paths = RunPaths(tmp_path / "run")
    with pytest.raises(RunLockedError, match="no process holds it"):
        admit_worker(paths, "any")
    with run_lock(paths, token="launch-a"):
        admit_worker(paths, "launch-a")
        for other in ("launch-b", None, ""):
            with pytest.raises(RunLockedError, match="another launch"):
                admit_worker(paths, other)
        # A plain second command is refused; a worker of this launch re-enters the lock.
        script = (
            "from pathlib import Path; from steerlib.experiment.runs import RunPaths, run_lock\n"
            f"with run_lock(RunPaths(Path({str(paths.root)!r}))): print('entered')\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in {LAUNCH_TOKEN_ENV}}
        env.pop("STEERLIB_LOCK_OWNER", None)
        plain = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
        assert plain.returncode != 0 and b"RunLockedError" in plain.stderr
        wrong = subprocess.run(
            [sys.executable, "-c", script], env={**env, LAUNCH_TOKEN_ENV: "launch-b"}
        )
        assert wrong.returncode != 0
        ours = subprocess.run(
            [sys.executable, "-c", script],
            env={**env, LAUNCH_TOKEN_ENV: "launch-a"},
            capture_output=True,
        )
        assert ours.returncode == 0 and b"entered" in ours.stdout
        assert paths.lock.is_file()  # a re-entering worker never frees the launch's lock
    assert not paths.lock.exists()


def test_group_shares_every_unit_once(monkeypatch):
    keys = [f"caa-L{layer}-b{b:03d}" for layer in (1, 2, 3) for b in range(5)]
    shares = [Group(rank, 4, rank, 4).share(keys) for rank in range(4)]
    assert sorted(key for share in shares for key in share) == sorted(keys)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(Exception, match="runs under torchrun"):
        Group.from_env()
    assert worker_device("cpu", 1) == "cpu"


def test_a_unit_is_published_once(tmp_path):
    from steerlib._io import atomic_write_parquet

    dest = tmp_path / "caa-L1-b000.parquet"
    atomic_write_parquet(dest, pd.DataFrame({"a": [1]}), replace=False)
    with pytest.raises(FileExistsError):
        atomic_write_parquet(dest, pd.DataFrame({"a": [2]}), replace=False)
    assert pd.read_parquet(dest)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]  # no temporary file left


# -- two gloo workers on the CPU --------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer, llama) -> Path:
    """A tiny run (test Llama, bundled prompts) with steps 01-04 done; the runs folder."""
    from steerlib.experiment.steps import (
        build_vectors,
        capture_activations,
        prepare_data,
        run_baseline,
    )

    root = tmp_path_factory.mktemp("workers")
    model = root / "tiny-llama"
    llama.save_pretrained(model)
    tokenizer.save_pretrained(model)
    run = Run.open("base", runs_dir=str(root / "runs"), model=str(model), **TINY)
    for step in (prepare_data, run_baseline, capture_activations, build_vectors):
        step(run)
    return root / "runs"


def _copy(runs: Path, name: str) -> RunPaths:
    shutil.copytree(runs / "base", runs / name)
    return RunPaths(runs / name)


def _rows(paths: RunPaths) -> pd.DataFrame:
    table = pd.read_parquet(paths.sweep)
    return table.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def one_process(prepared) -> pd.DataFrame:
    from steerlib.experiment.sweep import sweep_step

    paths = _copy(prepared, "one")
    sweep_step(Run.open("one", runs_dir=str(prepared)))
    return _rows(paths)


def _torchrun(runs: Path, name: str, env: dict[str, str] | None = None):
    """``torchrun --nproc-per-node 2 -m steerlib worker`` started directly (no launch token)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "steerlib",
        "worker",
        "--run-name",
        name,
        "--runs-dir",
        str(runs),
        "--no-progress",
    ]
    base = {k: v for k, v in os.environ.items() if k != LAUNCH_TOKEN_ENV}
    return subprocess.run(
        command, env={**base, **(env or {})}, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_two_workers_write_the_rows_of_one_process(prepared, one_process):
    paths = _copy(prepared, "two")
    with run_lock(paths, token="the-launch"):
        assert launch_workers(paths, "sweep", 2, token="the-launch", progress=False) == 0
    assert paths.step_state("05_sweep") == "done" and paths.kl.is_file()
    two = _rows(paths)
    pd.testing.assert_frame_equal(two[ROWS], one_process[ROWS])
    pd.testing.assert_series_equal(two["perplexity"], one_process["perplexity"], rtol=1e-4)
    assert not two.duplicated(KEY).any()
    assert set(two["variant"]) == {"caa", "clamp"}
    # Every variant has its matched control, steered at its own alphas.
    steered = two[two["alpha"] != 0]
    assert set(steered.loc[steered["variant"] == "clamp", "direction"]) == {"caa", "random"}
    caa = steered[steered["direction"] == "caa"][["variant", "layer", "alpha"]].drop_duplicates()
    paired = caa.merge(steered[steered["direction"] == "random"], on=["variant", "layer", "alpha"])
    assert len(paired.drop_duplicates(["variant", "layer", "alpha"])) == len(caa)  # equal alpha
    # ... and each control at its own searched edge too (control_search), once per unit key.
    trace = pd.read_parquet(paths.alpha_search)
    assert set(trace["direction"]) == {"caa", "random"}
    assert any("random-L" in u and "search-" in u for u in os.listdir(paths.search_parts))
    assert float(steered.loc[steered["variant"] == "clamp", "alpha"].max()) <= 1.0
    units = sorted(p.name for p in paths.sweep_parts.rglob("*.parquet"))
    one = prepared / "one" / "sweep_parts"
    assert units == sorted(p.name for p in one.rglob("*.parquet"))
    # Grid: 2 layers x (caa, random) for each of caa and clamp, one length bucket.
    assert len([u for u in units if "search-" not in u]) == 8
    # The tiny run's edges fall off the grid: both variants have units at a searched alpha.
    assert {u.split("search-")[0] for u in units if "search-" in u} == {"", "clamp-"}
    searched = pd.read_parquet(paths.alpha_search)
    expected = pd.read_parquet(prepared / "one" / "alpha_search.parquet")
    pd.testing.assert_frame_equal(
        searched.sort_values(["variant", "layer", "alpha"]).reset_index(drop=True),
        expected.sort_values(["variant", "layer", "alpha"]).reset_index(drop=True),
        rtol=1e-4,
    )


@pytest.mark.slow
def test_a_killed_worker_then_the_same_command_gives_the_same_rows(prepared, one_process):
    paths = _copy(prepared, "killed")
    first = _torchrun(prepared, "killed", {EXIT_HOOK_ENV: "1"})
    assert first.returncode != 0, first.stderr[-3000:]
    assert not paths.sweep.exists() and paths.step_state("05_sweep") != "done"
    written = {p.name for p in paths.sweep_parts.glob("*.parquet")}
    assert len(written) < 8  # rank 1 never wrote its unit
    assert not paths.lock.exists() or not _holder_alive(paths)

    again = _torchrun(prepared, "killed")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert written < {p.name for p in paths.sweep_parts.glob("*.parquet")}
    assert not paths.lock.exists()
    pd.testing.assert_frame_equal(_rows(paths)[ROWS], one_process[ROWS])


@pytest.mark.slow
def test_workers_of_another_launch_are_refused(prepared):
    paths = _copy(prepared, "taken")
    with run_lock(paths, token="someone-else"):
        result = _torchrun(prepared, "taken")
        assert result.returncode != 0
        assert "is in use by process" in result.stderr, result.stderr[-4000:]
        wrong = _torchrun(prepared, "taken", {LAUNCH_TOKEN_ENV: "not-the-launch"})
        assert wrong.returncode != 0 and "another launch" in wrong.stderr
    assert not paths.sweep_parts.exists()  # refused before anything was written


def _holder_alive(paths: RunPaths) -> bool:
    import json

    pid = json.loads(paths.lock.read_text())["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_the_chain_with_two_workers_writes_the_rows_of_one_worker(
    prepared, one_process, monkeypatch, capsys
):
    """The issue's acceptance, on notebook 05: the chain launches two workers, then the
    notebook finds every unit and the step's products (the full CLI chain is test_chain's)."""
    from steerlib.experiment.chain import NOTEBOOKS, run_chain
    from steerlib.experiment.config import RunParams

    paths = _copy(prepared, "chain")
    monkeypatch.delenv("STEERLIB_LOCK_OWNER", raising=False)
    monkeypatch.setenv("STEERLIB_RUNS_DIR", "elsewhere")
    params = RunParams.validate_mapping({**paths.stored_params(), "run_name": "chain"})
    sweep_notebook = tuple(n for n in NOTEBOOKS if n.stem == "05_sweep")
    code = run_chain(
        params, runs_dir=str(prepared), notebooks=sweep_notebook, progress=False, workers=2
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "05_sweep: 2 workers" in out and "05_sweep: done" in out
    assert paths.step_state("05_sweep") == "done" and (paths.notebooks / "05_sweep.ipynb").is_file()
    assert paths.stored_params()["device"] is None  # the workers' devices are not recorded
    assert not paths.lock.exists()
    # The chain exported its lock owner to its kernels only while it ran: a caller left with
    # it would re-enter any lock this process once held (a worker test then fails to be
    # refused).
    assert "STEERLIB_LOCK_OWNER" not in os.environ
    assert os.environ["STEERLIB_RUNS_DIR"] == "elsewhere"
    pd.testing.assert_frame_equal(_rows(paths)[ROWS], one_process[ROWS])


def test_run_takes_a_number_of_workers(monkeypatch, capsys):
    from steerlib.experiment import chain

    seen = {}
    monkeypatch.setattr(chain, "run_chain", lambda params, **kw: seen.update(kw) or 0)
    assert chain.main(["--run-name", "w", "--workers", "3"]) == 0
    assert seen["workers"] == 3
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            chain.main(["--workers", bad])
        assert "at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_clamps_control_is_clamped_to_the_random_directions_own_level(prepared):
    from steerlib.experiment.sweep import sweep_inputs, sweep_plan, variant_sweeps
    from steerlib.steer.activations import ResidualActivations

    run = Run.open("base", runs_dir=str(prepared))
    _, _, vectors = sweep_inputs(run)
    plan = sweep_plan(run.params, 4)
    clamp = {s.name: s for s in variant_sweeps(run, plan, vectors)}["clamp"]
    assert set(clamp.vectors) == {"caa", "random"}
    nontoxic = ResidualActivations.load(run.paths.activations_nontoxic)
    means, layers = nontoxic.mean(), nontoxic.layers
    for name, vector in clamp.vectors.items():
        for i, layer in enumerate(layers):
            if layer in vector.directions:
                unit = vector[layer] / vector[layer].norm()
                assert vector.nontoxic_projections[layer] == pytest.approx(
                    float(means[i] @ unit), rel=1e-5
                ), name
    random, caa = clamp.vectors["random"], clamp.vectors["caa"]
    assert random.nontoxic_projections != pytest.approx(caa.nontoxic_projections)
