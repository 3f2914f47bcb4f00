"""The alpha explorer notebook in a real browser: JupyterLab + headless Chromium (Playwright).

Builds a run on the embedded SmolLM2 (a CAA vector from 10 toxic and 10 non-toxic bundled
texts), starts JupyterLab on a free local port with a random token, opens a parameterized copy
of ``notebooks/07_alpha_explorer.ipynb``, runs all cells, moves the alpha slider with the
keyboard, presses Generate and checks that the steered completion changes. A screenshot is
saved in the test's ``tmp_path``. JupyterLab (and its kernel) is stopped however the test ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_alpha_explorer.ipynb"
RUN_NAME = "browser"
LAYER = 18
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium to run the browser test",
        allow_module_level=True,
    )
pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
pytest.importorskip("jupyterlab_widgets", reason="ipywidgets' JupyterLab extension is missing")


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare_run(runs_dir: Path) -> None:
    """A run folder with params.json and a CAA vector built on the embedded SmolLM2."""
    from steerlib.data.prompts import load_prompts
    from steerlib.data.subsets import pair_texts
    from steerlib.models.loading import EMBEDDED_MODEL, load_model
    from steerlib.pipeline import Run
    from steerlib.steer.vectors import caa_from_texts

    model, tokenizer = load_model(EMBEDDED_MODEL, device="cpu")
    prompts = load_prompts("bundled")
    toxic = pair_texts(prompts[prompts["challenging"]].head(10))
    nontoxic = pair_texts(prompts[~prompts["challenging"]].head(10))
    vector = caa_from_texts(
        model, tokenizer, toxic, nontoxic, last_n=16, source="bundled", progress=False
    )
    run = Run.open(RUN_NAME, runs_dir=str(runs_dir), model=EMBEDDED_MODEL, layers=[LAYER])
    paths = run.paths
    vector.select([LAYER - 1, LAYER, LAYER + 1]).save(paths.vectors)


def _prepare_notebook(root: Path, runs_dir: Path) -> Path:
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))  # adds the empty tag lists papermill expects
    parameters = {
        "run_name": RUN_NAME,
        "runs_dir": str(runs_dir),
        "layer": LAYER,
        "max_new_tokens": 12,
    }
    nb = parameterize_notebook(nb, parameters)
    dest = root / NOTEBOOK.name
    nbformat.write(nb, dest)
    return dest


def _shutdown_kernels(url: str, token: str) -> None:
    """Ask the server to shut its kernels down (by id), so none outlives the test."""
    headers = {"Authorization": f"token {token}"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/api/kernels", headers=headers), timeout=5
        ) as response:
            kernels = json.loads(response.read())
        for kernel in kernels:
            request = urllib.request.Request(
                f"{url}/api/kernels/{kernel['id']}", headers=headers, method="DELETE"
            )
            urllib.request.urlopen(request, timeout=15).close()
    except (urllib.error.URLError, OSError, ValueError):
        pass  # the server is gone already; its own shutdown stops its kernels


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop JupyterLab (SIGTERM shuts its kernels down too), killing it if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _quiet_settings(settings: Path) -> None:
    """User settings that keep JupyterLab from asking about news (a toast over the page)."""
    folder = settings / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True)
    (folder / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "lab"
    runs_dir = tmp_path / "runs"
    home = tmp_path / "jupyter"
    for folder in (root, runs_dir, home):
        folder.mkdir()
    _prepare_run(runs_dir)
    _prepare_notebook(root, runs_dir)
    _quiet_settings(home / "settings")

    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STEERLIB_RUNS_DIR": str(runs_dir),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p
        ),
    }
    log = tmp_path / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers often run as root
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Lab(url=url, token=token, root=root, log=log)
    finally:
        if proc.poll() is None:
            _shutdown_kernels(f"http://127.0.0.1:{port}", token)
        _stop(proc)


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def _wait_kernel_idle(page) -> None:
    """Wait until the notebook's kernel is connected and idle.

    The execution indicator alone says ``idle`` while the status bar still reads
    "No Kernel | Initializing", so the status bar is what counts.
    """
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-Widget')]"
        ".some(el => /Python 3[^|]*\\| Idle/.test(el.textContent))",
        timeout=90_000,
    )
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(state="attached")


def _run_all_cells(page) -> None:
    """Run > Run All Cells; if JupyterLab asks for a kernel (a start-up race), accept, retry."""
    for _attempt in range(2):
        _wait_kernel_idle(page)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))
        dialog = page.locator(".jp-Dialog")
        started.or_(dialog).first.wait_for(state="visible", timeout=30_000)
        if dialog.count() == 0:
            return
        dialog.locator(".jp-mod-accept").click()
        dialog.wait_for(state="detached")
    pytest.fail("JupyterLab kept asking for a kernel instead of running the notebook")


def _wait_changed(page, selector: str, before: str) -> str:
    """Wait until the text of ``selector`` differs from ``before``; return it."""
    page.wait_for_function(
        "([selector, before]) => {"
        "  const el = document.querySelector(selector);"
        "  return el !== null && el.textContent.trim() !== before; }",
        arg=[selector, before],
        timeout=90_000,
    )
    return _text(page, selector)


def test_alpha_slider_changes_the_steered_completion(lab: Lab, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    screenshot = tmp_path / "alpha_explorer.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
                page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(state="visible")
                _run_all_cells(page)
                explorer = page.locator(".steerlib-explorer")
                explorer.wait_for(state="visible", timeout=120_000)
                generate = page.locator(".steerlib-generate button, button.steerlib-generate")

                # The run has no summary yet: alpha 0 with a one-line hint, and the layer menu
                # marks the swept layer.
                readout = page.locator(".steerlib-alpha .widget-readout")
                assert readout.inner_text().strip() == "0.00"
                assert "No recommended point" in _text(page, ".steerlib-status")
                options = page.locator(".steerlib-layer select option").all_inner_texts()
                labels = [text.replace("\xa0", " ") for text in options]  # spaces as &nbsp;
                assert f"{LAYER} (swept)" in labels and str(LAYER + 1) in labels
                # The model warms up when the widget opens ("Warming up…", disabled), then
                # Generate is ready.
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.steerlib-generate')].some("
                    "el => !el.disabled && el.textContent.trim() === 'Generate')",
                    timeout=180_000,
                )
                # First press at alpha = 0: steered == unsteered.
                generate.first.click()
                page.locator(".steerlib-result[data-run='1']").wait_for(timeout=90_000)
                unsteered_0 = _text(page, ".steerlib-unsteered-text")
                steered_0 = _text(page, ".steerlib-steered-text")
                score_0 = float(_text(page, ".steerlib-steered-score"))
                assert steered_0 == unsteered_0 and steered_0

                # Move the slider with the keyboard: 10 steps of 0.1, from 0 to 1.
                handle = page.locator(".steerlib-alpha .noUi-handle")
                handle.focus()
                for _ in range(10):
                    handle.press("ArrowRight")
                page.wait_for_function(
                    "() => document.querySelector('.steerlib-alpha .widget-readout')"
                    ".textContent.trim() === '1.00'"
                )
                # The browser sends the slider's last value on its own; the kernel's echo in
                # the status bar says it arrived (a press before it would steer at 0.90).
                page.wait_for_function(
                    "() => document.querySelector('.steerlib-status')"
                    ".textContent.includes('alpha = 1.00')",
                    timeout=30_000,
                )

                generate.first.click()
                steered_1 = _wait_changed(page, ".steerlib-steered-text", steered_0)
                page.locator(".steerlib-result[data-run='2']").wait_for()
                score_1 = float(_text(page, ".steerlib-steered-score"))
                assert "alpha = 1.00" in _text(page, ".steerlib-result")
                assert _text(page, ".steerlib-unsteered-text") == unsteered_0
                assert steered_1 != steered_0
                assert 0.0 <= score_0 <= 1.0 and 0.0 <= score_1 <= 1.0
                # The fluency signal sits next to each score.
                perplexity = _text(page, ".steerlib-steered-perplexity").replace(",", "")
                assert perplexity == "n/a" or float(perplexity) > 0
                flag = page.locator(".steerlib-steered-repetition").first
                assert flag.get_attribute("data-flagged") in {"0", "1"}
                assert page.locator(".steerlib-error").count() == 0
                print(
                    f"\nalpha 0: {score_0:.3f} {steered_0!r}\nalpha 1: {score_1:.3f} {steered_1!r}"
                )
                page.locator(".steerlib-output").scroll_into_view_if_needed()
            finally:
                page.screenshot(path=str(screenshot))
                print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("STEERLIB_BROWSER_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
