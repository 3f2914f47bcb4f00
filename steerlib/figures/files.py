"""Figure files: ``save_figure`` writes HTML (and PNG/PDF through kaleido and a browser).

Static export needs Chrome or Chromium (kaleido drives it); without one only the HTML is
written, with one warning per process. :func:`find_browser` looks for one,
:func:`ensure_browser` also installs one where it can (``make setup`` runs it as
``python -m steerlib browser --install``), and :func:`static_export_status` says in one line
what a run's figures will be. :func:`use_offline_notebook_renderer` makes notebook figures
render offline, in JupyterLab and in exported HTML alike.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from steerlib._io import atomic_write_bytes, atomic_write_text
from steerlib.errors import ConfigError

__all__ = [
    "FIGURE_SIZES",
    "STATIC_SCALE",
    "ensure_browser",
    "find_browser",
    "save_figure",
    "static_export_status",
    "use_offline_notebook_renderer",
]

STATIC_SCALE = 3
"""Pixel density of PNG exports: 3 device pixels per layout pixel (a 7 in page width at 360 dpi)."""
FIGURE_SIZES: dict[str, tuple[int, int]] = {
    "column": (420, 330),
    "page": (840, 480),
    "page_tall": (840, 640),
}
"""Static export sizes in layout pixels (width, height). At plotly's default 12 px font a
``column`` figure printed 3.5 in wide, and a ``page`` figure printed 7 in wide (a paper's
single and double column), both set their text at about 7 pt."""
_STATIC_FORMATS = ("png", "pdf", "svg", "jpeg", "webp")
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_warned_static = False
_server_lock = threading.Lock()
_server_started = False


def find_browser() -> str | None:
    """Return the path of a Chrome/Chromium executable kaleido can drive, or None.

    Looks at ``$BROWSER_PATH``, then ``/usr/bin/chromium``, then ``chromium``,
    ``chromium-browser``, ``google-chrome`` and ``google-chrome-stable`` on ``PATH``, then the
    Chrome that ``plotly_get_chrome`` (kaleido's downloader) installed.
    """
    candidates = [os.environ.get("BROWSER_PATH", ""), "/usr/bin/chromium"]
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return _downloaded_chrome()


def _executable(path: str | None) -> bool:
    """Whether ``path`` names an executable file."""
    return bool(path) and os.path.isfile(str(path)) and os.access(str(path), os.X_OK)


def _downloaded_chrome() -> str | None:
    """The Chrome that ``plotly_get_chrome`` downloaded (choreographer's folder), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False, skip_typical=True)
    except Exception:  # an absent or changed choreographer: no downloaded browser to use
        return None
    return found if found and _executable(found) else None


def _kaleido_installed() -> bool:
    """Whether kaleido (plotly's static exporter) can be imported."""
    import importlib.util

    return importlib.util.find_spec("kaleido") is not None


def static_export_status(run_name: str | None = None) -> str:
    """One line saying whether figures get PNG/PDF files, and how to add them if not.

    For the end of a run's summary and for ``make setup``: either where the browser kaleido
    drives is, or that figures are HTML only with the exact commands that add the static ones.

    Args:
        run_name: Named in the command that re-renders a finished run's figures.
    """
    again = f"python -m steerlib figures {run_name or 'RUN'}"
    if not _kaleido_installed():
        return (
            "figures: HTML only (kaleido is not installed); for PNG/PDF run "
            f"`pip install kaleido && python -m steerlib browser --install && {again}`"
        )
    browser = find_browser()
    if browser is None:
        return (
            "figures: HTML only (no Chrome/Chromium found); for PNG/PDF run "
            f"`python -m steerlib browser --install && {again}` "
            "(or install chromium, or set BROWSER_PATH to a Chrome/Chromium)"
        )
    return f"figures: HTML, PNG and PDF (browser for static export: {browser})"


Runner = Callable[[list[str], float], bool]


def _run_quietly(command: list[str], timeout: float) -> bool:
    """Run ``command`` with its output captured; whether it succeeded in ``timeout`` s."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _apt_possible() -> bool:
    """Whether this is root on Debian with apt-get.

    Debian's ``chromium`` package is a real browser; Ubuntu's only installs a snap, which
    containers cannot run.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    try:
        release = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.strip() in {"ID=debian", 'ID="debian"'} for line in release.splitlines())


def ensure_browser(
    *, install: bool = True, runner: Runner = _run_quietly
) -> tuple[str | None, str]:
    """Find a Chrome/Chromium for kaleido, installing one where possible.

    In order: one already there (:func:`find_browser`); Debian's ``chromium`` through
    ``apt-get`` when running as root on Debian; Chrome for Testing through plotly's
    ``plotly_get_chrome`` (needs the network). Installers run quietly; each failure falls
    through to the next.

    Args:
        install: Try the installers when none is found (False: only look).
        runner: Runs an installer command with a timeout and says whether it worked (tests
            replace it).

    Returns:
        The browser's path (None when none could be had) and one line saying which.
    """
    found = find_browser()
    if found:
        return found, f"static figures: using the browser at {found}"
    if install and _apt_possible():
        if runner(["apt-get", "update", "-qq"], 600) and runner(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], 900
        ):
            found = find_browser()
            if found:
                return found, f"static figures: installed Debian's chromium ({found})"
    if install and _kaleido_installed():
        script = "import plotly.io as pio; pio.get_chrome()"
        if runner([sys.executable, "-c", script], 900):
            found = find_browser()
            if found:
                return found, f"static figures: downloaded Chrome with plotly_get_chrome ({found})"
    return None, static_export_status()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m steerlib browser [--install]``: say (and get) the browser for PNG/PDF."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib browser",
        description="Find a Chrome/Chromium for static figure export (PNG/PDF) and say which.",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="when none is found, install Debian's chromium (as root) or download Chrome "
        "with plotly_get_chrome (needs the network)",
    )
    args = parser.parse_args(argv)
    _, line = ensure_browser(install=args.install)
    print(f"[steerlib] {line}")
    return 0


def _warn_static_once(reason: str) -> None:
    """Warn (once per process) that only HTML could be written."""
    global _warned_static
    if _warned_static:
        return
    _warned_static = True
    warnings.warn(
        f"Static figure export (PNG/PDF) is off: {reason}. Only HTML files are written; "
        "run `python -m steerlib browser --install` (Debian: apt-get install chromium) or set "
        "BROWSER_PATH to a Chrome/Chromium executable.",
        RuntimeWarning,
        stacklevel=3,
    )


def _ensure_kaleido_server() -> None:
    """Start kaleido's shared browser once, so later exports take a fraction of a second."""
    global _server_started
    with _server_lock:
        if _server_started:
            return
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _server_started = True


def _standalone_html(fig: go.Figure) -> str:
    """Full HTML page loading ``plotly.min.js`` beside it, else plotly's CDN copy.

    The shared copy keeps a run's figures offline without 4 MB of JavaScript in every file; the
    fallback makes a file moved out of its folder (or sent alone) still render where the
    network is reachable.
    """
    from plotly.io._html import plotly_cdn_url

    html = fig.to_html(include_plotlyjs="directory", full_html=True)
    local = '<script charset="utf-8" src="plotly.min.js"></script>'
    fallback = (
        '<script>if (typeof window.Plotly === "undefined") {document.write('
        f'\'<script charset="utf-8" src="{plotly_cdn_url()}"><\\/script>\');}}</script>'
    )
    if local not in html:  # plotly changed its markup: embed the library rather than guess
        return fig.to_html(include_plotlyjs=True, full_html=True)
    return html.replace(local, local + fallback, 1)


def _size(size: str | tuple[int, int]) -> tuple[int, int]:
    """Layout pixels of a named size (:data:`FIGURE_SIZES`) or of a (width, height) pair."""
    if isinstance(size, str):
        if size not in FIGURE_SIZES:
            raise ConfigError(
                f"save_figure got size={size!r}; use one of {sorted(FIGURE_SIZES)} or a "
                "(width, height) pair in pixels."
            )
        return FIGURE_SIZES[size]
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise ConfigError(f"save_figure got size={size!r}; pass positive pixel sizes.")
    return width, height


def _static_bytes(fig: go.Figure, fmt: str, width: int, height: int, scale: float) -> bytes:
    """Render ``fig`` to ``fmt`` bytes with kaleido."""
    _ensure_kaleido_server()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return fig.to_image(format=fmt, width=width, height=height, scale=scale)


def save_figure(
    fig: go.Figure,
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    formats: Sequence[str] = ("html", "png", "pdf"),
    size: str | tuple[int, int] = "page",
    scale: float = STATIC_SCALE,
) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<format>`` files, atomically.

    HTML is always written; it loads ``plotly.min.js`` from the same folder (written there
    once), so the figures work offline without embedding 4 MB of JavaScript in each file, and
    falls back to plotly's CDN when that file is missing (an HTML file moved alone).
    Static formats are rendered by kaleido when a Chrome/Chromium is found (see
    :func:`find_browser`; its path is exported as ``BROWSER_PATH`` for kaleido), at ``size``
    layout pixels times ``scale``. Without a browser, or when static export fails, a warning
    is issued once per process and only the HTML path is returned.

    Args:
        fig: The figure.
        out_dir: Destination folder (created if needed).
        name: File stem without extension or folders.
        formats: Formats among ``html``, ``png``, ``pdf``, ``svg``, ``jpeg``, ``webp``.
        size: Static size: a name of :data:`FIGURE_SIZES` (``"column"``: a paper's single
            column, ``"page"``: its full width) or ``(width, height)`` in layout pixels.
        scale: Device pixels per layout pixel of raster exports (at least 3 for print).

    Returns:
        Paths written, HTML first.

    Raises:
        ConfigError: If ``name`` contains a folder, a format is unknown or ``size`` is bad.
    """
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ConfigError(f"save_figure got name={name!r}; pass a file stem without folders.")
    wanted = [fmt.lower().lstrip(".") for fmt in formats]
    unknown = [fmt for fmt in wanted if fmt != "html" and fmt not in _STATIC_FORMATS]
    if unknown:
        raise ConfigError(
            f"save_figure got unknown format(s) {unknown}; use html, {', '.join(_STATIC_FORMATS)}."
        )
    width, height = _size(size)
    folder = Path(out_dir)
    if not (folder / "plotly.min.js").is_file():
        atomic_write_text(folder / "plotly.min.js", get_plotlyjs())
    paths = [atomic_write_text(folder / f"{name}.html", _standalone_html(fig))]
    static = [fmt for fmt in dict.fromkeys(wanted) if fmt != "html"]
    if not static:
        return paths
    browser = find_browser()
    if browser is None:
        _warn_static_once("no Chrome/Chromium was found")
        return paths
    os.environ["BROWSER_PATH"] = browser
    for fmt in static:
        try:
            data = _static_bytes(fig, fmt, width, height, scale)
        except Exception as error:  # kaleido raises many kinds; any failure means HTML only
            _warn_static_once(f"kaleido failed with {type(error).__name__}: {error}")
            return paths
        paths.append(atomic_write_bytes(folder / f"{name}.{fmt}", data))
    return paths


def use_offline_notebook_renderer() -> None:
    """Render figures in notebooks both for JupyterLab and for exported HTML, offline.

    Sets plotly's renderer to ``"plotly_mimetype+notebook"``: JupyterLab uses the mimetype
    output, while the ``notebook`` output embeds plotly.js once per notebook, so an executed
    notebook converted to HTML (the run's ``report.html``) shows its figures without a network.
    """
    import plotly.io as pio

    if pio.renderers.default != "plotly_mimetype+notebook":
        pio.renderers.default = "plotly_mimetype+notebook"
