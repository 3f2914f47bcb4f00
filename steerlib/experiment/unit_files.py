"""The sweep's unit files on disk: their settings, alphas, checksums and sizes.

Step 05 writes its units to ``sweep_parts/`` as they finish, with the generation settings
they were made with (``sweep_parts/settings.json``): a resumed or extended sweep refuses
units made with other settings (:func:`check_unit_settings`) or other alphas
(:func:`saved_units`), and every unit is read with its checksum verified (:func:`read_unit`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet, read_checked_parquet
from steerlib.errors import ConfigError
from steerlib.experiment.config import RunParams, short_repr
from steerlib.experiment.run import Run
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.steps import eval_prompts
from steerlib.generate.generation import DecodingSettings

__all__ = [
    "check_unit_settings",
    "generation_settings",
    "prepare_units",
    "read_unit",
    "saved_units",
    "stamp_old_units",
    "starts_afresh",
    "unit_sizes",
]


def generation_settings(params: RunParams) -> dict[str, Any]:
    """What shapes a sweep unit's rows besides its direction, layer and alphas."""
    values = params.notebook_parameters()
    return {
        "model": values["model"],
        **DecodingSettings.of(params).as_kwargs(),
        "scorer": values["scorer"],
        "perplexity_model": values["perplexity_model"],
    }


def check_unit_settings(paths: RunPaths, params: RunParams) -> None:
    """Refuse to resume units made with other generation settings; record them otherwise.

    A sweep whose units predate the record (made before settings were stored) adopts the
    current settings.

    Raises:
        ConfigError: One line naming each differing setting, with both values.
    """
    wanted = generation_settings(params)
    recorded = paths.read_unit_settings()
    if recorded is not None:
        differ = [k for k in wanted if k in recorded and recorded[k] != wanted[k]]
        if differ:
            listed = ", ".join(
                f"{k} {short_repr(recorded[k], 60)} -> {short_repr(wanted[k], 60)}" for k in differ
            )
            raise ConfigError(
                f"the saved sweep units of run {paths.name!r} were made with other settings "
                f"({listed}): rerun the sweep with force=True (`python -m steerlib run "
                "--force`) or use a new run_name."
            )
    if recorded != wanted:
        paths.sweep_parts.mkdir(parents=True, exist_ok=True)
        paths.write_unit_settings(wanted)


def starts_afresh(run: Run, *, force: bool = False) -> bool:
    """Whether the saved units must go: ``force``, or a stale sweep that may not resume."""
    record = run.paths.read_status().get("05_sweep", {})
    return force or (record.get("state") == "stale" and not record.get("resume", False))


def prepare_units(run: Run, *, fresh: bool) -> None:
    """Remove the saved units when ``fresh``; check (or record) the settings of the rest."""
    if fresh and run.paths.sweep_parts.exists():
        shutil.rmtree(run.paths.sweep_parts)
    check_unit_settings(run.paths, run.params)


def unit_sizes(run: Run, model: Any, tokenizer: Any, prompts: pd.DataFrame) -> Any:
    """The step's unit and batch sizes (:func:`steerlib.generate.engine.sweep_sizes`), chosen once.

    Every engine call of the step gets them, so its units are named alike however many calls
    (or workers) make them; on a CPU they are the engine's fixed defaults.
    """
    from steerlib.generate.engine import sweep_sizes

    return sweep_sizes(
        model,
        tokenizer,
        eval_prompts(prompts),
        max_new_tokens=run.params.max_new_tokens,
        prompt_format=run.params.prompt_format,
    )


def saved_units(folder: Path, alphas: list[float]) -> dict[str, pd.DataFrame]:
    """The sweep units already on disk, by key; refuse units generated with other alphas.

    Unit keys name the direction, layer and prompt bucket, not the alphas, so a unit saved
    under other alphas would otherwise be taken as done.
    """
    saved = {path.stem: read_unit(path) for path in sorted(folder.glob("*.parquet"))}
    for key, table in saved.items():
        found = sorted(set(table["alpha"].astype(float)))
        if found != sorted(float(a) for a in alphas):
            raise ConfigError(
                f"sweep unit {key} in {folder} was generated with alphas {found}, but the run "
                f"asks for {sorted(alphas)} (alpha 0 aside): rerun the sweep with force=True "
                "(`python -m steerlib run --force`) or use a new run_name."
            )
    return saved


def read_unit(path: Path, *, required: bool = True) -> pd.DataFrame:
    """A saved sweep unit, its checksum verified (:func:`~steerlib._io.read_checked_parquet`).

    Args:
        path: The unit.
        required: Refuse a unit without a checksum; False for the units of a run made before
            units carried one (:meth:`~steerlib.experiment.runs.RunPaths.made_before_checksums`).

    Raises:
        DamagedRunError: The unit is truncated, edited, or has no checksum; one line saying to
            delete it (only that unit is generated again).
    """
    return read_checked_parquet(
        path,
        "sweep unit",
        "delete it and run the same command again (only that unit is generated again)",
        required=required,
    )


def stamp_old_units(paths: RunPaths) -> int:
    """Give the saved units of a run made before units carried checksums their checksum.

    Called by the chain runner, holding the run's lock, before the run's steps: afterwards the
    run's units are checked like any other run's. Nothing happens to a run recorded with
    checksums (:meth:`~steerlib.experiment.runs.RunPaths.made_before_checksums`).

    Returns:
        How many units were stamped.

    Raises:
        DamagedRunError: A unit is not a readable parquet file (truncated).
    """
    import pyarrow.parquet as pq

    from steerlib._io import CHECKSUM_KEY

    if not paths.made_before_checksums() or not paths.sweep_parts.is_dir():
        return 0
    stamped = 0
    for part in sorted(paths.sweep_parts.rglob("*.parquet")):
        table = read_unit(part, required=False)
        if CHECKSUM_KEY not in (pq.read_schema(part).metadata or {}):
            atomic_write_parquet(part, table)
            stamped += 1
    return stamped
