"""Figure files: ``save_figure`` writes HTML (and PNG/PDF through kaleido and a browser).

Static export needs Chrome or Chromium (kaleido drives it); without one only the HTML is
written, with one warning per process. :func:`use_offline_notebook_renderer` makes notebook
figures render offline, in JupyterLab and in exported HTML alike.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from steerlib._io import atomic_write_bytes, atomic_write_text
from steerlib.errors import ConfigError

__all__ = ["find_browser", "save_figure", "use_offline_notebook_renderer"]

_STATIC_FORMATS = ("png", "pdf", "svg", "jpeg", "webp")
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_warned_static = False
_server_lock = threading.Lock()
_server_started = False


def find_browser() -> str | None:
    """Return the path of a Chrome/Chromium executable kaleido can drive, or None.

    Looks at ``$BROWSER_PATH``, then ``/usr/bin/chromium``, then ``chromium``,
    ``chromium-browser``, ``google-chrome`` and ``google-chrome-stable`` on ``PATH``.
    """
    candidates = [os.environ.get("BROWSER_PATH", ""), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _warn_static_once(reason: str) -> None:
    """Warn (once per process) that only HTML could be written."""
    global _warned_static
    if _warned_static:
        return
    _warned_static = True
    warnings.warn(
        f"Static figure export (PNG/PDF) is off: {reason}. Only HTML files are written; "
        "install Chromium (Debian: apt-get install chromium) or set BROWSER_PATH to a "
        "Chrome/Chromium executable.",
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


def _static_bytes(fig: go.Figure, fmt: str) -> bytes:
    """Render ``fig`` to ``fmt`` bytes with kaleido."""
    _ensure_kaleido_server()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return fig.to_image(format=fmt)


def save_figure(
    fig: go.Figure,
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    formats: Sequence[str] = ("html", "png", "pdf"),
) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<format>`` files, atomically.

    HTML is always written; it loads ``plotly.min.js`` from the same folder (written there
    once), so the figures work offline without embedding 4 MB of JavaScript in each file.
    Static formats
    are rendered by kaleido when a Chrome/Chromium is found (see :func:`find_browser`; its path
    is exported as ``BROWSER_PATH`` for kaleido). Without a browser, or when static export
    fails, a warning is issued once per process and only the HTML path is returned.

    Args:
        fig: The figure.
        out_dir: Destination folder (created if needed).
        name: File stem without extension or folders.
        formats: Formats among ``html``, ``png``, ``pdf``, ``svg``, ``jpeg``, ``webp``.

    Returns:
        Paths written, HTML first.

    Raises:
        ConfigError: If ``name`` contains a folder or a format is unknown.
    """
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ConfigError(f"save_figure got name={name!r}; pass a file stem without folders.")
    wanted = [fmt.lower().lstrip(".") for fmt in formats]
    unknown = [fmt for fmt in wanted if fmt != "html" and fmt not in _STATIC_FORMATS]
    if unknown:
        raise ConfigError(
            f"save_figure got unknown format(s) {unknown}; use html, {', '.join(_STATIC_FORMATS)}."
        )
    folder = Path(out_dir)
    if not (folder / "plotly.min.js").is_file():
        atomic_write_text(folder / "plotly.min.js", get_plotlyjs())
    html = fig.to_html(include_plotlyjs="directory", full_html=True)
    paths = [atomic_write_text(folder / f"{name}.html", html)]
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
            data = _static_bytes(fig, fmt)
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
