"""Run directories: named products of each step, step status, and a lock per run.

A run lives in ``<runs root>/<run_name>/`` (root: ``$STEERLIB_RUNS_DIR`` or ``data/runs`` in
the project). Each step of the analysis DAG writes named products there (see :class:`RunPaths`)
and records its state in ``status.json``: ``running``, ``done``, ``failed`` (with the error),
``partial`` (with row counts) or ``stale`` (done, but an input changed since: it runs
again). A second process on the same run directory is refused by a lock file that names its
holder; different run names run side by side.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from steerlib._io import atomic_write_json
from steerlib.errors import ConfigError

__all__ = [
    "PROJECT_ROOT",
    "RunLockedError",
    "RunPaths",
    "StepState",
    "figures_root",
    "run_lock",
    "runs_root",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout that holds ``steerlib/``, ``notebooks/``, ``data/`` and ``figures/``."""

StepState = Literal["running", "done", "failed", "partial", "stale"]


def runs_root() -> Path:
    """``$STEERLIB_RUNS_DIR`` or ``<project>/data/runs``."""
    value = os.environ.get("STEERLIB_RUNS_DIR")
    return Path(value).expanduser() if value else PROJECT_ROOT / "data" / "runs"


def figures_root() -> Path:
    """``$STEERLIB_FIGURES_DIR`` or ``<project>/figures``."""
    value = os.environ.get("STEERLIB_FIGURES_DIR")
    return Path(value).expanduser() if value else PROJECT_ROOT / "figures"


class RunLockedError(ConfigError):
    """Another process holds the run directory."""


@dataclass(frozen=True)
class RunPaths:
    """Named products of one run.

    Attributes:
        root: The run directory.
    """

    root: Path

    @classmethod
    def for_run(cls, run_name: str, root: str | os.PathLike[str] | None = None) -> RunPaths:
        """Paths of run ``run_name`` under ``root`` (default :func:`runs_root`)."""
        if not run_name or "/" in run_name or run_name in {".", ".."}:
            raise ConfigError(f"run_name must be a plain folder name, not {run_name!r}.")
        return cls(Path(root) / run_name if root else runs_root() / run_name)

    @property
    def name(self) -> str:
        """The run name."""
        return self.root.name

    params = property(lambda self: self.root / "params.json", doc="Resolved parameters.")
    status = property(lambda self: self.root / "status.json", doc="Step states.")
    lock = property(lambda self: self.root / ".lock", doc="Lock file of a running process.")
    prompts = property(lambda self: self.root / "prompts.parquet", doc="Step 01: prompts.")
    baseline = property(lambda self: self.root / "baseline.parquet", doc="Step 02: baseline.")
    activations_toxic = property(
        lambda self: self.root / "activations_toxic.safetensors", doc="Step 03."
    )
    activations_nontoxic = property(
        lambda self: self.root / "activations_nontoxic.safetensors", doc="Step 03."
    )
    vectors = property(lambda self: self.root / "vectors.safetensors", doc="Step 04: CAA vector.")
    control_vectors = property(
        lambda self: self.root / "vectors_random.safetensors", doc="Step 04: random control."
    )
    sweep_parts = property(lambda self: self.root / "sweep_parts", doc="Step 05: batches.")
    search_parts = property(
        lambda self: self.root / "sweep_parts" / "search",
        doc="Step 05: batches at the searched alphas (one per layer).",
    )
    alpha_search = property(
        lambda self: self.root / "alpha_search.parquet",
        doc="Step 05: the alpha search's trace, one row per (layer, alpha) measured.",
    )
    sweep = property(lambda self: self.root / "sweep.parquet", doc="Step 05: all completions.")
    kl = property(lambda self: self.root / "kl_benign.parquet", doc="Step 05: benign KL.")
    summary = property(lambda self: self.root / "summary.json", doc="Step 06: summary.")
    summary_table = property(lambda self: self.root / "summary.parquet", doc="Step 06.")
    report = property(lambda self: self.root / "report.html", doc="Step 06 rendered.")
    notebooks = property(lambda self: self.root / "notebooks", doc="Executed notebooks.")

    def figures(self) -> Path:
        """``figures/<run_name>/``."""
        return figures_root() / self.name

    # -- status -----------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """``status.json`` as a dict of step name to state record ({} when absent)."""
        if not self.status.is_file():
            return {}
        return json.loads(self.status.read_text(encoding="utf-8"))

    def set_status(self, step: str, state: StepState, **details: Any) -> None:
        """Record ``step``'s state (atomically), with details such as ``error`` or row counts."""
        status = self.read_status()
        status[step] = {
            "state": state,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            **details,
        }
        atomic_write_json(self.status, status)

    def step_state(self, step: str) -> str | None:
        """The recorded state of ``step``, or ``None``."""
        return self.read_status().get(step, {}).get("state")


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


@contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold the run directory for this process; refuse when a live process holds it.

    A lock left by a process that died (same host, pid gone) is taken over.

    Raises:
        RunLockedError: Another live process holds the run; the message names it.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    me = _holder()
    while True:
        try:
            fd = os.open(paths.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(paths.lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            owner = os.environ.get("STEERLIB_LOCK_OWNER", "")
            if same_host and str(holder.get("pid")) in {str(me["pid"]), owner}:
                # Re-entrant: this process, or a notebook kernel started by the chain runner
                # that holds the lock (it exports STEERLIB_LOCK_OWNER to its kernels).
                yield
                return
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                paths.lock.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"run {paths.name!r} is in use by process {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('started')}; wait for it, or use "
                f"another run_name (remove {paths.lock} only if that process is gone)."
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me))
        break
    try:
        yield
    finally:
        paths.lock.unlink(missing_ok=True)
