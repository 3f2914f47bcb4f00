"""The package as users get it: a regular (non-editable) wheel, and the top-level API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from steerlib.experiment.runs import PROJECT_ROOT


def test_import_steerlib_is_cheap_and_gives_the_public_api():
    code = (
        "import sys, steerlib\n"
        "assert 'torch' not in sys.modules, 'import steerlib loaded torch'\n"
        "names = ['load_model', 'SteeringVector', 'caa_from_texts', 'steering', 'run_sweep']\n"
        "print(all(callable(getattr(steerlib, n)) for n in names))\n"
        "from steerlib.generate.engine import run_sweep\n"
        "print(steerlib.run_sweep is run_sweep)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_a_wheel_installed_elsewhere_finds_its_prompts_and_passes_doctor(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(
        PROJECT_ROOT / "steerlib", source / "steerlib", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run([*build, "-w", str(tmp_path / "dist")], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("steerlib-*.whl"))
    # A fresh environment that sees the project's dependencies but not its checkout.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, str(wheel)], check=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "STEERLIB_RUNS_DIR"}}
    env["HF_HUB_OFFLINE"] = "1"
    code = (
        "import steerlib, steerlib.data.prompts as d, steerlib.experiment.runs as r\n"
        "print(steerlib.__file__)\n"
        "print(len(d.load_prompts('bundled')))\n"
        "print(r.runs_root())\n"
    )
    result = subprocess.run(
        [python, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    where, n_prompts, runs = result.stdout.split("\n")[:3]
    assert where.startswith(str(venv)) and int(n_prompts) > 100
    assert runs == str(elsewhere / "steerlib-runs")
    doctor = subprocess.run(
        [python, "-m", "steerlib", "doctor"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "ready" in doctor.stdout


def _imported_modules(files: list[Path]) -> set[str]:
    """Top-level modules imported by ``files`` (Python sources, or notebooks' code cells)."""
    import ast
    import json

    names: set[str] = set()
    for path in files:
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        else:
            source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    local = {"steerlib", "conftest"} | {p.stem for p in (PROJECT_ROOT / "tests").glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def _requirement_closure(extras: set[str]) -> set[str]:
    """Distributions (normalized names) that installing steerlib[extras] brings in.

    steerlib's own requirements are read from this checkout's pyproject.toml; the rest from
    the installed distributions' metadata.
    """
    import re
    import tomllib
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    wanted, seen = set(extras), set()
    while True:  # the extras, following steerlib[...] self-references
        more = {
            extra
            for name in wanted
            for r in map(Requirement, project["optional-dependencies"][name])
            if norm(r.name) == "steerlib"
            for extra in r.extras
        }
        if more <= wanted:
            break
        wanted |= more
    for name in wanted:
        todo += [r for r in map(Requirement, project["optional-dependencies"][name])]
    while todo:
        requirement = todo.pop()
        name = norm(requirement.name)
        if name == "steerlib" or name in seen:
            continue
        seen.add(name)
        try:
            for text in requires(requirement.name) or []:
                dep = Requirement(text)
                if dep.marker is None or any(
                    dep.marker.evaluate({"extra": e}) for e in ["", *sorted(requirement.extras)]
                ):
                    todo.append(dep)
        except PackageNotFoundError:
            pass  # not installed here; its own dependencies cannot be followed
    return seen


def test_the_extras_hold_everything_the_code_tests_and_notebooks_import():
    import re
    from importlib.metadata import packages_distributions

    providers = packages_distributions()

    def distributions(modules: set[str]) -> dict[str, set[str]]:
        return {
            m: {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(m, [])} for m in modules
        }

    run_files = [*(PROJECT_ROOT / "steerlib").rglob("*.py")]
    run_files += sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
    for files, extras in (
        (run_files, {"notebooks"}),  # what `make setup` installs for `make run`
        ([*run_files, *(PROJECT_ROOT / "tests").glob("*.py")], {"dev"}),  # `make test`
    ):
        closure = _requirement_closure(extras)
        missing = {
            module: sorted(dists)
            for module, dists in distributions(_imported_modules(files)).items()
            if not dists & closure
        }
        assert not missing, f"imported but not installed by steerlib[{extras}]: {missing}"
    # The split itself: the notebook stack is an extra, not a dependency of the library.
    core = _requirement_closure(set())
    assert "papermill" not in core and "pytest" not in core
    assert {"papermill", "jupyterlab", "ipywidgets", "kaleido"} <= _requirement_closure(
        {"notebooks"}
    )
