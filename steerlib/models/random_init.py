"""Randomly initialised models of real architectures, offline: ``random:phi-4-mini``.

``load_random_model("random:phi-4-mini")`` builds a ``Phi3ForCausalLM`` of Phi-4-mini-instruct's
exact shape from a config shipped in the package (``steerlib/resources/model_configs``), with
seeded random weights and the embedded SmolLM2 tokenizer, so the speed of a large model can be
measured without the hub (``python -m steerlib bench --model random:phi-4-mini``). Also
``random:smollm2-135m`` and ``random:<path to a config.json>``. The tokenizer's ids all lie
below the model's vocabulary size; the model may emit ids past the tokenizer's, which decode
to nothing.

The weights are allocated on the ``meta`` device first and materialised once, on the target
device, in the target dtype (no float32 copy on the host). Random weights give nearly flat
next-token distributions, which make nucleus sampling far costlier than on a trained model;
:func:`scale_logits` multiplies the logits by a constant (through the final norm's weight, so no
hook is needed) and :func:`calibrate_logit_scale` picks the constant that gives a realistic
nucleus.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ModelError
from steerlib.resources import MODEL_CONFIGS_DIR

__all__ = [
    "RANDOM_PREFIX",
    "RANDOM_SHAPES",
    "calibrate_logit_scale",
    "is_random_model",
    "load_random_model",
    "nucleus_sizes",
    "random_config",
    "scale_logits",
]

RANDOM_PREFIX = "random:"
RANDOM_SHAPES = ("phi-4-mini", "smollm2-135m")
"""Shapes shipped in the package (``random:<shape>``)."""


def is_random_model(name: Any) -> bool:
    """Whether ``name`` asks for a randomly initialised model (``"random:..."``)."""
    return isinstance(name, str) and name.startswith(RANDOM_PREFIX)


def _config_dict(name: str) -> dict[str, Any]:
    spec = name[len(RANDOM_PREFIX) :]
    if spec in RANDOM_SHAPES:
        text = (MODEL_CONFIGS_DIR / f"{spec}.json").read_text()
        return json.loads(text)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelError(
            f"{name!r}: no shipped shape {spec!r} and no config file there; use one of "
            f"{', '.join(RANDOM_PREFIX + s for s in RANDOM_SHAPES)} "
            "or random:<path to config.json>."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); give a model's config.json.") from None


def random_config(name: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Any:
    """The transformers config of a ``random:`` model (special token ids from ``tokenizer``).

    Raises:
        ModelError: Unknown shape, unreadable file, or a vocabulary smaller than the tokenizer's.
    """
    values = _config_dict(name)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ModelError(f"{name!r}: the config has no model_type; give a model's config.json.")
    for key in ("architectures", "auto_map", "torch_dtype", "dtype", "transformers_version"):
        values.pop(key, None)
    if tokenizer is not None:
        if values.get("vocab_size", 0) < len(tokenizer):
            raise ModelError(
                f"{name!r} has a vocabulary of {values.get('vocab_size')} ids but the embedded "
                f"tokenizer uses {len(tokenizer)}; give a config with a larger vocab_size."
            )
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            values[key] = getattr(tokenizer, key)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{name!r}: transformers cannot build this config ({exc}).") from None
    config._name_or_path = name
    return config


@torch.no_grad()
def load_random_model(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A seeded, randomly initialised model of the named shape, with the embedded tokenizer.

    Args:
        name: ``"random:phi-4-mini"``, ``"random:smollm2-135m"`` or ``"random:<config.json>"``.
        device: Where the weights are materialised.
        dtype: Weight dtype.
        seed: Seed of the weights (the same seed gives the same weights on the same device).
        tokenizer: The tokenizer (:func:`steerlib.models.loading.load_model` gives the
            embedded SmolLM2 one); its ids must lie below the config's vocabulary size.

    Returns:
        ``(model, tokenizer)`` prepared as :func:`steerlib.models.loading.load_model` prepares them.
    """
    config = random_config(name, tokenizer)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        for module in model.modules():
            for param in module.parameters(recurse=False):
                param._is_hf_initialized = False
            for buffer in module.buffers(recurse=False):
                buffer._is_hf_initialized = False
            model._init_weights(module)
    model.tie_weights()
    model.eval()
    model.requires_grad_(False)
    model._steerlib_model_id = name
    return model, tokenizer


def _final_norm(model: PreTrainedModel) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None)
    if norm is None or getattr(norm, "weight", None) is None:
        raise ModelError(
            f"{type(model).__name__} has no final norm with a weight to scale; run without "
            "--logit-scale."
        )
    return norm


@torch.no_grad()
def scale_logits(model: PreTrainedModel, scale: float) -> None:
    """Multiply every logit of ``model`` by ``scale`` (its final norm's weight, in place).

    The final norm feeds only the output head, so its weight scales the logits exactly, tied
    embeddings or not.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ModelError(f"the logit scale must be a positive number, got {scale}.")
    _final_norm(model).weight.mul_(scale)


def nucleus_sizes(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Tokens in each row's top-p nucleus at ``temperature`` (``TopPLogitsWarper`` rule)."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    ordered = probs.sort(dim=-1, descending=True).values
    above = ordered.cumsum(-1) - ordered
    return (above < top_p).sum(-1).clamp(min=1)


def calibrate_logit_scale(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    target: float = 20.0,
    low: float = 1.0,
    high: float = 1e4,
) -> float:
    """The logit scale at which the median nucleus of ``logits`` holds about ``target`` tokens.

    The logits scale linearly with the final norm's weight, so the search runs on the given
    (unscaled) logits alone: a bisection on the logarithm of the scale.

    Args:
        logits: ``(rows, vocab)`` next-token logits of the unscaled model.
        temperature: Sampling temperature.
        top_p: Nucleus threshold.
        target: Median nucleus size aimed at (trained chat models: a few to a few tens).
        low: Smallest scale considered.
        high: Largest scale considered.
    """
    if float(nucleus_sizes(logits * low, temperature, top_p).median()) <= target:
        return low
    lo, hi = math.log(low), math.log(high)
    for _ in range(30):
        mid = (lo + hi) / 2
        median = float(nucleus_sizes(logits * math.exp(mid), temperature, top_p).median())
        lo, hi = (mid, hi) if median > target else (lo, mid)
    return math.exp(hi)
