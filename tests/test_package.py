"""The package as users get it: a regular (non-editable) wheel, and the top-level API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from steerlib.runs import PROJECT_ROOT


def test_import_steerlib_is_cheap_and_gives_the_public_api():
    code = (
        "import sys, steerlib\n"
        "assert 'torch' not in sys.modules, 'import steerlib loaded torch'\n"
        "names = ['load_model', 'SteeringVector', 'caa_from_texts', 'steering', 'run_sweep']\n"
        "print(all(callable(getattr(steerlib, n)) for n in names))\n"
        "from steerlib.engine import run_sweep\n"
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
        "import steerlib, steerlib.data as d, steerlib.runs as r\n"
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
