"""Checks of an existing run's files before a command works on it.

:func:`check_run_files` reads the run's records and the headers of its products and saved
sweep units, and names any damaged file and what to delete.
"""

from __future__ import annotations

from pathlib import Path

from steerlib.errors import DamagedRunError
from steerlib.experiment.runs import STEP_PRODUCTS, RunPaths

__all__ = ["check_run_files"]


def _header_problem(path: Path) -> str | None:
    """Why ``path`` (a parquet, safetensors or JSON product) cannot be read, or None."""
    import json

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.metadata()
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # each reader raises its own error types
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def _unit_problems(paths: RunPaths) -> list[str]:
    """One line per saved sweep unit (grid or search) that is damaged or fails its checksum."""
    from steerlib.experiment.unit_files import read_unit

    problems = []
    required = not paths.made_before_checksums()  # a pre-checksum run's units have none
    for part in sorted(paths.sweep_parts.rglob("*.parquet")):
        try:
            read_unit(part, required=required)
        except DamagedRunError as exc:
            problems.append(f"run {paths.name!r}: {exc}".rstrip("."))
    return problems


def check_run_files(paths: RunPaths, *, force: bool = False, rerun_missing: bool = False) -> None:
    """Refuse to start on a run whose records or products are damaged; say what to delete.

    ``params.json`` and ``status.json`` must parse, and the lock must be a file. The products
    of the steps marked done must have readable headers and match the checksums recorded when
    their step was recorded whole, and every saved sweep unit (grid and search) must match the
    checksum written inside it; with ``force`` they are all recomputed, so only the records
    are checked. With ``rerun_missing`` (the chain runner) a product or a listed sweep unit
    that is gone is no problem: its step runs again (the sweep resumes, keeping its other
    units).

    Raises:
        DamagedRunError: One line per damaged file, naming it and the way out.
    """
    if not paths.root.is_dir():
        return
    problems = []
    if paths.lock.is_dir():
        problems.append(
            f"run {paths.name!r}: its lock {paths.lock} is a folder, not a lock file; remove it "
            f"(rmdir {paths.lock}) if no steerlib process is running, and run the same command "
            "again"
        )
    for read in (paths.read_params, paths.read_status):
        try:
            read()
        except DamagedRunError as exc:
            problems.append(str(exc))
    if not force and not problems:
        status = paths.read_status()
        unreadable: set[Path] = set()
        for step, products in STEP_PRODUCTS.items():
            if status.get(step, {}).get("state") != "done":
                continue
            for product in products(paths):
                reason = product.is_file() and _header_problem(product)
                if reason:
                    unreadable.add(product)
                    problems.append(
                        f"run {paths.name!r}: {product} is damaged ({reason}); delete it and run "
                        f"the same command again (step {step} and the ones after it run again)"
                    )
        problems += paths.product_problems(skip=frozenset(unreadable), missing=not rerun_missing)
        problems += _unit_problems(paths)
    if problems:
        raise DamagedRunError("\n".join(problems))
