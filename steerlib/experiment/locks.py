"""A lock per run: one process (with its notebook kernels and torchrun workers) at a time.

A second process on the same run directory is refused by a lock file that names its holder;
different run names run side by side. A holder that launches torchrun workers records a launch
token in the lock and hands it to them (``$STEERLIB_LAUNCH_TOKEN``): the run admits those
workers, on any host, and nothing else (:func:`admit_worker`). A lock left by a dead process,
even an empty or unreadable one, is taken over, and temporary files left by writes that were
killed (``.<name>.*.tmp``) are removed when the lock is taken. :func:`process_state` tells a
live process named by a record from one that is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from steerlib.errors import ConfigError, DamagedRunError
from steerlib.experiment.run_files import RunPaths

__all__ = [
    "LAUNCH_TOKEN_ENV",
    "RunLockedError",
    "admit_worker",
    "clean_temporary_files",
    "lock_holder",
    "process_state",
    "run_lock",
]

ProcessState = Literal["alive", "gone", "elsewhere", "unknown"]
LOCK_GRACE_S = 5.0
"""An empty or unreadable lock older than this is a crash's leftover (a holder writes at once)."""
LAUNCH_TOKEN_ENV = "STEERLIB_LAUNCH_TOKEN"
"""Environment variable that carries a launch's token from the lock holder to its workers."""
TMP_GRACE_S = 60.0
"""A temporary file older than this, found when the lock is taken, was left by a killed write."""


class RunLockedError(ConfigError):
    """Another process holds the run directory."""


def _holder(token: str | None = None) -> dict[str, Any]:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return {**holder, "token": token} if token else holder


def process_state(record: dict[str, Any]) -> tuple[ProcessState, int | None]:
    """Whether the process a status record (or lock holder) names is still alive.

    Args:
        record: A ``running``/``partial`` step record, or a lock's holder: ``pid``, ``host``,
            optionally ``owner_pid``.

    Returns:
        ``(state, pid)``: ``"alive"``; ``"gone"`` with the pid that is gone (this host);
        ``"elsewhere"`` (another host, which this process cannot check); ``"unknown"`` (the
        record names no process: written by an older version).
    """
    pids = [record.get(key) for key in ("pid", "owner_pid")]
    pids = [pid for pid in pids if type(pid) is int and 0 < pid < 2**31]
    if not pids:
        return "unknown", None
    if record.get("host") != socket.gethostname():
        return "elsewhere", pids[0]
    for pid in pids:
        if not _alive(pid):
            return "gone", pid
    return "alive", pids[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def _create_lock(lock: Path, holder: dict[str, Any]) -> bool:
    """Create ``lock`` holding ``holder``, complete or not at all; False when it exists.

    The holder is written to a temporary file that is then hard-linked to the lock's name
    (atomic, and refused when the name exists), so no reader ever sees an empty lock.
    """
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(holder))
    try:
        os.link(tmp, lock)
    except FileExistsError:
        return False
    except OSError:  # pragma: no cover - a file system without hard links
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(holder))
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _read_holder(lock: Path) -> dict[str, Any] | None:
    """The holder recorded in ``lock``; None when it is empty or unreadable."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def lock_holder(paths: RunPaths) -> dict[str, Any] | None:
    """The process recorded in the run's lock (``pid``, ``host``, ``started``); None if none."""
    return _read_holder(paths.lock) if paths.lock.is_file() else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def clean_temporary_files(paths: RunPaths, older_than: float = TMP_GRACE_S) -> list[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) that killed writes left in the run.

    Only files older than ``older_than`` seconds go: a write in progress is never touched.

    Returns:
        The files removed.
    """
    removed = []
    for path in paths.root.rglob(".*.tmp"):
        if path.is_file() and _age(path) > older_than:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def run_lock(paths: RunPaths, *, token: str | None = None) -> Iterator[None]:
    """Hold the run directory for this process; refuse when a live process holds it.

    A lock left by a process that died (same host, pid gone) is taken over, and so is an
    empty or unreadable lock older than :data:`LOCK_GRACE_S` (a crash, or a full disk, between
    creating it and writing it). Taking the lock removes the temporary files that killed
    writes left behind (:func:`clean_temporary_files`).

    The lock is re-entrant for the process that holds it, for the notebook kernels the chain
    runner starts (``$STEERLIB_LOCK_OWNER``) and for the workers of its launch
    (``$STEERLIB_LAUNCH_TOKEN`` equal to the holder's ``token``).

    Args:
        paths: The run.
        token: A launch token to record in the lock (see :func:`admit_worker`).

    Raises:
        RunLockedError: Another live process holds the run; the message names it.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.lock.is_dir():
        raise DamagedRunError(
            f"run {paths.name!r}: its lock {paths.lock} is a folder, not a lock file; remove it "
            f"(rmdir {paths.lock}) if no steerlib process is running, and try again."
        )
    me = _holder(token)
    while not _create_lock(paths.lock, me):
        holder = _read_holder(paths.lock)
        if holder is None:
            if _age(paths.lock) > LOCK_GRACE_S:
                paths.lock.unlink(missing_ok=True)  # a crash left it empty or garbled
                continue
            raise RunLockedError(
                f"run {paths.name!r} is being locked by another process right now; wait a "
                f"moment and try again (remove {paths.lock} if no steerlib process is running)."
            )
        same_host = holder.get("host") == me["host"]
        owner = os.environ.get("STEERLIB_LOCK_OWNER", "")
        launch = os.environ.get(LAUNCH_TOKEN_ENV, "")
        if (same_host and str(holder["pid"]) in {str(me["pid"]), owner}) or (
            launch and holder.get("token") == launch
        ):
            # Re-entrant: this process, a notebook kernel started by the chain runner that
            # holds the lock (it exports STEERLIB_LOCK_OWNER to its kernels), or a worker of
            # its torchrun launch (given the lock's token).
            yield
            return
        if same_host and not _alive(holder["pid"]):
            paths.lock.unlink(missing_ok=True)
            continue
        raise RunLockedError(
            f"run {paths.name!r} is in use by process {holder['pid']} on "
            f"{holder.get('host')} since {holder.get('started')}; wait for it, or use "
            f"another run_name (remove {paths.lock} only if that process is gone)."
        ) from None
    try:
        clean_temporary_files(paths)
        yield
    finally:
        paths.lock.unlink(missing_ok=True)


def admit_worker(paths: RunPaths, token: str | None) -> None:
    """Refuse a torchrun worker unless the run's lock holds the token of its launch.

    Every worker checks this before it starts and again before it writes each unit, so a
    worker whose launch ended (its lock released, or taken over by another command) writes
    nothing more.

    Raises:
        RunLockedError: No lock, or a lock of another launch or process; the message says how
            workers are started.
    """
    holder = _read_holder(paths.lock)
    if token and holder is not None and holder.get("token") == token:
        return
    if holder is None:
        why = "no process holds it"
    else:
        why = f"it is held by process {holder['pid']} on {holder.get('host')} for another launch"
    raise RunLockedError(
        f"run {paths.name!r} does not admit this worker ({why}): start workers with "
        "`python -m steerlib run ... --workers N`, or with torchrun and no "
        f"${LAUNCH_TOKEN_ENV} (rank 0 then takes the lock for the launch)."
    )
