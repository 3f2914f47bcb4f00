"""Load causal language models and their tokenizers, including the embedded offline default.

``load_model("microsoft/Phi-4-mini-instruct")`` loads any Hugging Face causal LM (hub id or
local folder); ``load_model("smollm2-135m-instruct")`` and ``load_model("gemma-3-270m")`` load
the embedded models (:mod:`steerlib.models.embedded`, converted once into the cache). A model's
shape read from its config alone is :mod:`steerlib.models.shape`. Every name of those two
modules stays importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from steerlib.errors import ModelError as ModelError
from steerlib.models.embedded import (
    EMBEDDED_GGUF_FILE,
    EMBEDDED_MODEL,
    EMBEDDED_MODELS,
    EMBEDDED_PACKAGE,
    GEMMA_MODEL,
    INSTALL_HINT,
    EmbeddedModel,
    cache_dir,
    cache_dir_problem,
    convert_embedded,
    converted_folder,
    embedded_gguf_path,
    embedded_installed,
    embedded_part_paths,
    is_embedded,
    load_error,
)
from steerlib.models.embedded import _embedded as _embedded
from steerlib.models.embedded import _file_fingerprint as _file_fingerprint
from steerlib.models.embedded import _sha256 as _sha256
from steerlib.models.random_init import is_random_model, load_random_model
from steerlib.models.shape import (
    ModelShape,
    model_folder_problems,
    model_num_layers,
    model_shape,
)

__all__ = [
    "EMBEDDED_GGUF_FILE",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "EMBEDDED_PACKAGE",
    "GEMMA_MODEL",
    "INSTALL_HINT",
    "EmbeddedModel",
    "ModelShape",
    "cache_dir",
    "cache_dir_problem",
    "convert_embedded",
    "converted_folder",
    "default_dtype",
    "embedded_gguf_path",
    "embedded_installed",
    "embedded_part_paths",
    "is_embedded",
    "load_model",
    "model_folder_problems",
    "model_id",
    "model_num_layers",
    "model_revision",
    "model_shape",
    "resolve_device",
]


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


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
            ``"smollm2-135m-instruct"`` (the embedded offline default), ``"gemma-3-270m"``
            (embedded Gemma 3 270M, the base model), or ``"random:<shape>"``
            (a randomly initialised model of a real shape, see :mod:`steerlib.models.random_init`).
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
        return load_random_model(name, target, torch_dtype, tokenizer=load_tokenizer(name))
    source: str | Path = name
    if is_embedded(name):
        source = convert_embedded(name)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_tokenizer_kwargs(kwargs))
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error("model", name, exc) from exc
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
    source: str | Path = convert_embedded(name) if is_embedded(name) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise load_error("the tokenizer of", name, exc) from exc
    return _prepare_tokenizer(tokenizer)


def _tokenizer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}


def model_id(model: PreTrainedModel) -> str:
    """The name the model was loaded by (alias, hub id or folder)."""
    loaded = getattr(model, "_steerlib_model_id", None)
    return str(loaded or getattr(model.config, "_name_or_path", "") or type(model).__name__)


def model_revision(model: PreTrainedModel) -> str | None:
    """The hub commit the weights came from, where transformers recorded it."""
    return getattr(model.config, "_commit_hash", None)
