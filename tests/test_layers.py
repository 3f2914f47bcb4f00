"""The package's floors (issue 24): every import points down or sideways, and none is a cycle.

The import graph is read from the source with :mod:`ast` (every ``import``, at module level or
inside a function, ``TYPE_CHECKING`` blocks included), so an import hidden in a function body
cannot bring a cycle back.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import warnings
from pathlib import Path

import pytest

import steerlib
from steerlib._moved import MOVED

PACKAGE = Path(steerlib.__file__).resolve().parent

FLOORS = [
    {"errors", "_io", "resources", "_moved"},
    {"models"},
    {"data"},
    {"steer"},
    {"generate"},
    {"evaluate"},
    {"figures"},
    {"experiment"},
    {"apps"},
]
"""From the ground up; a module's floor is the first part of its name below ``steerlib``."""

FRONTS = {"steerlib", "steerlib.pipeline", "steerlib.__main__"}
"""The public fronts re-export from every floor (lazily) and sit above the house."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the steerlib modules it imports (a package counts as its ``__init__``)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for candidate in candidates:
                if candidate in paths and candidate != name:
                    targets.add(candidate)
                    break  # `from pkg import module` counts the module, not also its package
        graph[name] = targets
    return graph


def _floor(module: str) -> int:
    first = module.split(".")[1]
    for level, members in enumerate(FLOORS):
        if first in members:
            return level
    raise AssertionError(f"{module} is on no floor: add its subpackage to FLOORS")


GRAPH = _imports()


def test_every_module_sits_on_a_floor():
    for module in GRAPH:
        if module not in FRONTS:
            _floor(module)


def test_no_import_points_up():
    upward = [
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in GRAPH.items()
        if module not in FRONTS
        for target in targets
        if target not in FRONTS and _floor(target) > _floor(module)
    ]
    assert not upward, "\n".join(upward)
    assert not any(t in FRONTS for m, ts in GRAPH.items() if m not in FRONTS for t in ts)


def test_no_import_cycle():
    sorter = graphlib.TopologicalSorter({m: t - FRONTS for m, t in GRAPH.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_check_sees_an_upward_import_and_a_cycle():
    """The two checks above can fail: on a graph with one upward edge and one cycle."""
    assert _floor("steerlib.steer.hooks") < _floor("steerlib.experiment.runs")
    bad = {"a": {"b"}, "b": {"a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(bad).prepare()


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_work_with_a_warning(old):
    new = importlib.import_module(MOVED[old])
    importlib.import_module("sys").modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is new


@pytest.mark.parametrize(
    ("package", "name", "home"),
    [
        ("steerlib.models", "load_model", "steerlib.models.loading"),
        ("steerlib.data", "load_prompts", "steerlib.data.prompts"),
    ],
)
def test_old_modules_that_became_packages_forward_their_names(package, name, home):
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved"):
        value = getattr(importlib.import_module(package), name)
    assert value is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError), warnings.catch_warnings():
        warnings.simplefilter("error")
        _ = importlib.import_module(package).no_such_name
