"""Old flat import paths (``steerlib.hooks``, ``steerlib.engine``…) for one release.

Until the layered layout, every module sat directly in ``steerlib/``. Code that still imports
an old path gets the module at its new home and a :class:`DeprecationWarning` naming it; the
module object is the same, so state and monkeypatching behave as before. Two old modules
became subpackages (``steerlib.data``, ``steerlib.models``); their packages forward the old
names the same way (see :func:`forward`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, str] = {
    "steerlib.random_models": "steerlib.models.random_init",
    "steerlib.layers": "steerlib.models.layers",
    "steerlib.subsets": "steerlib.data.subsets",
    "steerlib.perspective": "steerlib.data.perspective",
    "steerlib.vectors": "steerlib.steer.vectors",
    "steerlib.hooks": "steerlib.steer.hooks",
    "steerlib.variants": "steerlib.steer.variants",
    "steerlib.activations": "steerlib.steer.activations",
    "steerlib.probe": "steerlib.steer.probe",
    "steerlib.diagnostics": "steerlib.steer.diagnostics",
    "steerlib.engine": "steerlib.generate.engine",
    "steerlib.generation": "steerlib.generate.generation",
    "steerlib.sampling": "steerlib.generate.sampling",
    "steerlib.sizing": "steerlib.generate.sizing",
    "steerlib.partition": "steerlib.generate.partition",
    "steerlib.kvcache": "steerlib.generate.kvcache",
    "steerlib.scoring": "steerlib.evaluate.scoring",
    "steerlib.embedding_scorer": "steerlib.evaluate.embedding_scorer",
    "steerlib.scorer_training": "steerlib.evaluate.scorer_training",
    "steerlib.fluency": "steerlib.evaluate.fluency",
    "steerlib.metrics": "steerlib.evaluate.metrics",
    "steerlib.controls": "steerlib.evaluate.controls",
    "steerlib.admissibility": "steerlib.evaluate.admissibility",
    "steerlib.operating_point": "steerlib.evaluate.operating_point",
    "steerlib.search": "steerlib.evaluate.search",
    "steerlib.plotting": "steerlib.figures.plotting",
    "steerlib.figure_files": "steerlib.figures.files",
    "steerlib.config": "steerlib.experiment.config",
    "steerlib.config_files": "steerlib.experiment.config_files",
    "steerlib.runs": "steerlib.experiment.runs",
    "steerlib.preflight": "steerlib.experiment.preflight",
    "steerlib.cli": "steerlib.apps.cli",
    "steerlib.widgets": "steerlib.apps.widgets",
    "steerlib.status": "steerlib.apps.status",
    "steerlib.export": "steerlib.apps.export",
    "steerlib.tools": "steerlib.apps",
    "steerlib.tools.bench": "steerlib.apps.bench",
    "steerlib.tools.doctor": "steerlib.apps.doctor",
}
"""Old module path -> its new home."""


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; import it from there ({old} stops working in the next release).",
        DeprecationWarning,
        stacklevel=3,
    )


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new home (the same object)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at its new home is already imported."""


class _OldPaths(importlib.abc.MetaPathFinder):
    """Finds the old flat paths listed in :data:`MOVED`."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        _warn(fullname, new)
        spec = importlib.machinery.ModuleSpec(fullname, _Alias(new))
        if fullname == "steerlib.tools":
            spec.submodule_search_locations = []
        return spec


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())  # before the path finder: see steerlib.tools


def forward(package: str, module: str, name: str) -> Any:
    """``package.name`` for a package that replaced a flat module of the same name.

    Used by the ``__getattr__`` of ``steerlib.data`` and ``steerlib.models``: the old module's
    public names are found in ``module`` (its new home), with a deprecation warning.

    Raises:
        AttributeError: ``module`` has no such name either.
    """
    target = importlib.import_module(module)
    if name.startswith("__") or not hasattr(target, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    _warn(f"{package}.{name}", f"{module}.{name}")
    return getattr(target, name)
