"""Torchrun workers: a step's generation units shared out over N processes, on one or many hosts.

``python -m steerlib worker --run-name R --step sweep`` runs once per process under
``torchrun`` (``python -m steerlib run ... --workers N`` starts torchrun itself, on one
machine). Each worker joins the process group (gloo on the CPU, nccl on CUDA; rank, world size
and ``LOCAL_RANK`` come from torchrun's environment), opens the run from its directory, loads the
model on its own device (``cuda:LOCAL_RANK``, or the CPU where there is no GPU), and generates,
scores and writes its share of the units exactly as one process does. After a barrier, rank 0
assembles the step's products (:func:`steerlib.experiment.sweep.sweep_step`, which finds every
unit on disk and only adds the tables, the alpha search's trace and the benign KL).

Sharing: the units are those of one process (:mod:`steerlib.experiment.sweep` makes them
with the same helpers): every steering variant's grid units, then the units at each (variant,
layer)'s searched alpha, under the same keys and with the same ``variant`` column. Rank 0 lists
the units not on disk yet, and each worker takes every N-th of that list (the units of a layer
are of similar size). Seeds derive from the unit keys, and the workers use one set of unit and
batch sizes (the smallest any of them chose), so the rows do not depend on which worker made a
unit, nor on N. The alpha searches are shared by (variant, layer): the edges are gathered, their
units shared out like the grid's, and rank 0 takes the gathered searches as found.

Lock: a worker writes only while the run's lock holds the token of its launch
(:func:`steerlib.experiment.runs.admit_worker`), checked at the start and before each unit is
written.
``run --workers`` hands its token to the workers in ``$STEERLIB_LAUNCH_TOKEN``; a launch
started with torchrun directly has none, and its rank 0 takes the lock and sends the token to
the others. A unit is written to a temporary file and published with a hard link, never over an
existing file, so it is neither written twice nor seen half-written; a worker killed mid-unit
leaves at most a temporary file (removed when the lock is next taken), and the next launch
generates that unit again.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from steerlib._io import atomic_write_parquet
from steerlib.errors import EXIT_INTERRUPTED, ConfigError, SteerlibError, exit_code, report_error
from steerlib.experiment.run import Run
from steerlib.experiment.runs import (
    LAUNCH_TOKEN_ENV,
    RunLockedError,
    RunPaths,
    admit_worker,
    run_lock,
)

__all__ = ["WORKER_STEPS", "Group", "launch_workers", "main", "work", "worker_device"]

T = TypeVar("T")

WORKER_STEPS = {"sweep": "05_sweep"}
"""The steps workers can share, by ``--step`` name, with the chain's step name."""
COLLECTIVE_TIMEOUT = timedelta(hours=6)
"""How long a worker waits at a barrier for the slowest one (a unit takes seconds to minutes)."""
EXIT_HOOK_ENV = "STEERLIB_TEST_WORKER_EXIT"
"""Tests only: the rank named here ends (``os._exit``) before writing its first unit, as a
killed worker would."""


@dataclass(frozen=True)
class Group:
    """This worker's place in the launch, and the few collectives the steps use.

    Attributes:
        rank: Global rank (0 assembles the products).
        world_size: Number of workers over all hosts.
        local_rank: Rank on this host (picks the GPU).
        local_world_size: Workers on this host (shares the CPU cores).
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_env(cls) -> Group:
        """The group torchrun describes in the environment.

        Raises:
            ConfigError: Not started by torchrun.
        """
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        missing = [name for name in names if name not in os.environ]
        if missing:
            raise ConfigError(
                f"`python -m steerlib worker` runs under torchrun ({', '.join(missing)} unset): "
                "use `python -m steerlib run ... --workers N`, or `torchrun --nproc-per-node N "
                "-m steerlib worker ...` (see the README, section Many workers)."
            )
        return cls(*(int(os.environ[name]) for name in names))

    def share(self, items: list[T]) -> list[T]:
        """This worker's share of ``items`` (the same list on every worker): every N-th."""
        return items[self.rank :: self.world_size]

    def agree(self, value: T) -> T:
        """Rank 0's ``value``, on every worker."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every worker's ``value``, in rank order."""
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def on_rank0(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0; its result, or its SteerlibError raised, on every worker."""
        result: Any = None
        error: SteerlibError | None = None
        if self.rank == 0:
            try:
                result = compute()
            except SteerlibError as exc:
                error = exc
        result, error = self.agree((result, error))
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        """Wait for every worker."""
        import torch.distributed as dist

        dist.barrier()


def worker_device(requested: str | None, local_rank: int) -> str:
    """The device of the worker with ``local_rank``: ``cuda:LOCAL_RANK`` where GPUs exist.

    A run whose device is ``cpu`` stays on the CPU; any other asks for the worker's own GPU,
    or the CPU without one (MPS has no torch.distributed backend of its own).
    """
    import torch

    if requested == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def launch_workers(
    paths: RunPaths,
    step: str,
    workers: int,
    *,
    token: str,
    force: bool = False,
    progress: bool = True,
) -> int:
    """Run ``step`` of the run at ``paths`` with ``workers`` processes under torchrun.

    The caller holds the run lock with ``token`` (see :func:`steerlib.experiment.runs.run_lock`).

    Returns:
        torchrun's exit status (0 when every worker finished).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={workers}",
        "-m",
        "steerlib",
        "worker",
        "--run-name",
        paths.name,
        "--runs-dir",
        str(paths.root.parent),
        "--step",
        step,
        *(["--force"] if force else []),
        *([] if progress else ["--no-progress"]),
    ]
    print(f"[steerlib] {WORKER_STEPS[step]}: {workers} workers: {shlex.join(command)}", flush=True)
    env = {**os.environ, LAUNCH_TOKEN_ENV: token}
    return subprocess.run(command, env=env, check=False).returncode


def work(
    run_name: str,
    *,
    runs_dir: str | None = None,
    step: str = "sweep",
    force: bool = False,
    progress: bool = True,
) -> None:
    """Do this worker's share of ``step`` of run ``run_name`` (under torchrun).

    Raises:
        ConfigError: Not under torchrun, or the run has no parameters yet.
        RunLockedError: The run does not admit this launch.
        DataError: A step before ``step`` has not finished.
    """
    import torch
    import torch.distributed as dist

    group = Group.from_env()
    paths = RunPaths.for_run(run_name, runs_dir)
    if not paths.params.is_file():
        raise ConfigError(
            f"run {run_name!r} has no parameters in {paths.root}: start it with `python -m "
            "steerlib run` (workers share the generation of a run whose inputs are made)."
        )
    run = Run.open(run_name, runs_dir=str(paths.root.parent))
    device = worker_device(run.params.device, group.local_rank)
    run = replace(run, params=run.params.model_copy(update={"device": device}), writes_params=False)
    if device == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // group.local_world_size))
        backend = "gloo"
    else:
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        with _launch(paths, group) as token:
            if step == "sweep":
                _sweep(run, group, token=token, force=force, progress=progress)
    finally:
        dist.destroy_process_group()


@contextmanager
def _launch(paths: RunPaths, group: Group) -> Iterator[str]:
    """Admit this worker to the run; yields the launch's token.

    Without ``$STEERLIB_LAUNCH_TOKEN`` (torchrun started directly) rank 0 takes the run lock
    for the launch and holds it until it leaves. Every worker checks the lock, and all refuse
    when one does (so none waits at a barrier for a worker that left).
    """
    token = os.environ.get(LAUNCH_TOKEN_ENV, "")
    with ExitStack() as stack:
        if not token:

            def take() -> str:
                new = secrets.token_urlsafe(16)
                stack.enter_context(run_lock(paths, token=new))
                return new

            token = group.on_rank0(take)
            os.environ[LAUNCH_TOKEN_ENV] = token
        problems = group.gather(_admission_problem(paths, token))
        refused = next((problem for problem in problems if problem), None)
        if refused:
            raise RunLockedError(refused)
        yield token


def _admission_problem(paths: RunPaths, token: str) -> str | None:
    try:
        admit_worker(paths, token)
    except RunLockedError as exc:
        return str(exc)
    return None


def _sweep(run: Run, group: Group, *, token: str, force: bool, progress: bool) -> None:
    """Step 05 shared out; rank 0 assembles the step's products.

    Every variant's grid units first, then the alpha searches by (variant, layer), then the
    units at the searched alphas (each variant's CAA edge with its equal-alpha control, and
    with ``control_search`` the random control alone at its own searched edge).
    """
    from steerlib.experiment.sweep import (
        grid_family,
        prepare_units,
        saved_units,
        starts_afresh,
        sweep_inputs,
        sweep_plan,
        sweep_step,
        unit_sizes,
        variant_sweeps,
    )
    from steerlib.models.layers import num_layers

    paths, p = run.paths, run.params
    if group.agree(not force and run.done("05_sweep", paths.sweep, paths.kl)):
        return
    prompts, _, vectors = sweep_inputs(run)
    model, tokenizer = run.model()
    vectors["caa"].check_compatible(model)
    plan = sweep_plan(p, num_layers(model))

    def prepare() -> None:
        prepare_units(run, fresh=starts_afresh(run, force=force))
        saved_units(paths.sweep_parts, plan.alphas)  # refuses units made with other alphas
        variant_sweeps(run, plan, vectors)  # a missing probe is fitted and saved once, here
        # "partial": the assembly at the end resumes these units instead of starting afresh.
        paths.set_status("05_sweep", "partial", workers=group.world_size)

    group.on_rank0(prepare)
    sweeps = variant_sweeps(run, plan, vectors)
    # The smallest sizes of any worker: the same unit keys everywhere, a batch fits every device.
    own = unit_sizes(run, model, tokenizer, prompts)
    chosen = group.gather(own)
    sizes = replace(
        own,
        tokens_per_unit=min(s.tokens_per_unit for s in chosen),
        max_batch_rows=min(s.max_batch_rows for s in chosen),
    )
    share = _Share(run, group, token, model, tokenizer, prompts, sizes, progress)
    if plan.alphas:
        share.generate([grid_family(run, plan, sweep) for sweep in sweeps])
    edges: dict[tuple[str, int], Any] = {}
    if p.alpha_search:
        edges = share.search_edges(plan, sweeps)
    group.barrier()
    if group.rank == 0:
        sweep_step(run, edges=edges)  # every unit is on disk: the tables, the trace and the KL


@dataclass(frozen=True)
class _Share:
    """One worker's part of step 05: the model it loaded and the sizes every worker agreed on."""

    run: Run
    group: Group
    token: str
    model: Any
    tokenizer: Any
    prompts: pd.DataFrame
    sizes: Any
    progress: bool

    def generate(self, families: list[Any]) -> None:
        """This worker's share of the units of ``families`` not on disk yet."""
        from steerlib.experiment.families import family_keys, generate_family

        run, group = self.run, self.group
        # A key two families share (the control's own edge at the variant's alpha) counts once.
        keys, seen = [], set()
        listed = [
            family_keys(run, self.tokenizer, self.prompts, family, self.sizes)
            for family in families
        ]
        for index, family in enumerate(families):
            for key in listed[index]:
                if (family.folder, key) not in seen:
                    seen.add((family.folder, key))
                    keys.append((index, key))
        todo = group.agree(
            [(i, key) for i, key in keys if not (families[i].folder / f"{key}.parquet").is_file()]
        )
        mine = set(group.share(todo))
        writer = _UnitWriter(run, group, self.token)
        for index, family in enumerate(families):
            ours = {key for i, key in mine if i == index}
            if ours:
                generate_family(
                    run,
                    self.model,
                    self.tokenizer,
                    self.prompts,
                    family,
                    self.sizes,
                    done=set(listed[index]) - ours,
                    write=writer,
                    progress=self.progress and group.rank == 0,
                )

    def search_edges(self, plan: Any, sweeps: list[Any]) -> dict[tuple[str, int], Any]:
        """Share out the alpha searches, then generate the units at the searched alphas.

        Returns:
            Every search's edge, by :func:`~steerlib.experiment.alpha_search.edge_key`.
        """
        from steerlib.experiment.alpha_search import (
            edge_key,
            search_edge,
            search_texts,
            searched_directions,
        )
        from steerlib.experiment.families import direction_only, searched_family

        run, group = self.run, self.group
        kl_texts = search_texts(self.prompts, run.params.seed)  # the held-out search half
        # Each variant's CAA edge, and its random control's own edge (control_search).
        searches = [
            (sweep, layer, direction)
            for sweep in sweeps
            for direction in searched_directions(run, sweep)
            for layer in plan.layers
        ]
        found = {
            edge_key(sweep.name, layer, direction): search_edge(
                run, self.model, self.tokenizer, kl_texts, sweep, layer, direction
            )
            for sweep, layer, direction in group.share(searches)
        }
        edges = {key: edge for part in group.gather(found) for key, edge in part.items()}
        families = [
            searched_family(
                run,
                sweep if direction == "caa" else direction_only(sweep, direction),
                layer,
                edges[edge_key(sweep.name, layer, direction)].alpha,
            )
            for sweep, layer, direction in searches
        ]
        self.generate([family for family in families if family is not None])
        return edges


@dataclass
class _UnitWriter:
    """Writes a unit this worker made, once, while the launch still holds the run."""

    run: Run
    group: Group
    token: str

    def __call__(self, path: Path, table: pd.DataFrame) -> None:
        if os.environ.get(EXIT_HOOK_ENV) == str(self.group.rank):
            os._exit(137)  # tests: a worker killed mid-unit, its unit generated but not written
        admit_worker(self.run.paths, self.token)  # the launch still holds the run
        try:
            atomic_write_parquet(path, table, replace=False)
        except FileExistsError:
            print(
                f"[steerlib] worker {self.group.rank}: unit {path.stem} is on disk already; kept",
                file=sys.stderr,
            )


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (torchrun stopping its workers) unwinds, so a lock this worker took is freed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib worker --run-name NAME [--runs-dir DIR] --step sweep``."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib worker",
        description="One torchrun worker of a run's generation step (see the README).",
    )
    parser.add_argument("--run-name", required=True, help="run folder name")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    parser.add_argument(
        "--step",
        choices=sorted(WORKER_STEPS),
        default="sweep",
        help="the step whose units the workers share (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="recompute the step")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        work(
            args.run_name,
            runs_dir=args.runs_dir,
            step=args.step,
            force=args.force,
            progress=not args.no_progress,
        )
    except SteerlibError as exc:
        report_error(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0
