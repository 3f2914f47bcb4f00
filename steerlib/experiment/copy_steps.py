"""``--from-run``: start a run from the finished steps of another, checked before copying."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from steerlib._io import atomic_write
from steerlib.errors import ConfigError, DamagedRunError
from steerlib.experiment.changes import check_changes
from steerlib.experiment.config import short_repr
from steerlib.experiment.run import provenance
from steerlib.experiment.run_checks import check_run_files
from steerlib.experiment.runs import STEP_PRODUCTS, RunPaths
from steerlib.experiment.table import STEP_NAMES

__all__ = ["copy_finished_steps"]


def copy_finished_steps(
    source: RunPaths,
    dest: RunPaths,
    *,
    through: str = "04_vectors",
    values: dict[str, Any] | None = None,
) -> list[str]:
    """Start run ``dest`` from the finished steps of ``source`` up to ``through``.

    Everything is checked before anything is copied: ``source``'s records and the checksums of
    the products to copy, and (with ``values``, the new run's parameters) that the steps to
    copy were made with the same values of the parameters they depend on. The steps' products
    (with their JSON sidecars) are then copied, each atomically, the parameters recorded as
    ``dest``'s, and each copied step recorded ``done`` with ``copied_from`` and ``source``'s
    identity and checksums, last. A copy that was interrupted is resumed by the same command
    (the steps already recorded are kept; the others are copied again); a run that already
    holds the copied steps is left as it is.

    Returns:
        The steps copied now (empty when ``dest`` already had them all).

    Raises:
        ConfigError: ``dest`` has steps of its own, ``source`` has no finished step to copy,
            or its steps were made with other values than ``values``.
        DamagedRunError: A product of ``source`` to copy is damaged or differs from its
            checksum.
    """
    if not source.root.is_dir():
        raise ConfigError(
            f"--from-run {source.name!r}: there is no run {source.root}; the runs there are "
            f"listed by `python -m steerlib status --runs-dir {source.root.parent}`."
        )
    status = source.read_status()
    wanted = STEP_NAMES[: STEP_NAMES.index(through) + 1]
    copied = [name for name in wanted if status.get(name, {}).get("state") == "done"]
    copied = [name for i, name in enumerate(copied) if name == wanted[i]]
    if not copied:
        raise ConfigError(f"run {source.name!r} has no finished step to copy (from 01_data on).")
    held = dest.read_status() if dest.root.is_dir() else {}
    own = [name for name, record in held.items() if record.get("copied_from") != source.name]
    if own and set(own) & set(copied):
        raise ConfigError(
            f"run {dest.name!r} already has steps of its own ({', '.join(sorted(own))}); "
            "--from-run only starts a new run (choose another run_name)."
        )
    check_run_files(source)
    problems = source.product_problems(tuple(copied))
    if problems:
        raise DamagedRunError("\n".join(problems))
    if values is not None:
        changes = check_changes(source, {**values, "run_name": source.name}, force=True)
        clash = [name for name in changes.reruns if name in copied]
        if clash:
            listed = ", ".join(
                f"{k} {short_repr(old, 40)} -> {short_repr(new, 40)}"
                for k, (old, new) in changes.changed.items()
            )
            raise ConfigError(
                f"run {source.name!r} made {clash[0]} with other values ({listed}); --from-run "
                "copies only steps made with the new run's values: drop those --set values or "
                "run without --from-run."
            )
    todo = [name for name in copied if held.get(name, {}).get("state") != "done"]
    if not todo:
        return []
    dest.root.mkdir(parents=True, exist_ok=True)

    def copy(path: Path) -> None:
        atomic_write(dest.root / path.name, lambda tmp: shutil.copyfile(path, tmp))

    for name in todo:
        for product in STEP_PRODUCTS[name](source):
            for path in (product, product.with_suffix(".json")):
                if path.is_file() and path != source.params:
                    copy(path)
    if source.probe.is_file():
        for path in (source.probe, source.probe.with_suffix(".json")):
            if path.is_file():
                copy(path)
    dest.write_params({**source.stored_params(), "run_name": dest.name}, **provenance())
    for name in todo:
        record = {k: v for k, v in status[name].items() if k not in ("state", "updated")}
        dest.set_status(name, "done", **{**record, "copied_from": source.name})
    return todo
