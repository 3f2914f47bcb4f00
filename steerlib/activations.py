"""Capture the residual stream after every decoder layer, mean-pooled over the last tokens.

One forward pass per batch serves every layer: a forward hook on each decoder layer pools its
output on the spot, so the full ``(batch, tokens, hidden)`` activations of 30 layers are never
held at once. Pooling counts real tokens only: with left (or right) padding, the pooled window
is the last ``last_n`` positions where the attention mask is 1.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib._io import load_tensors, save_tensors
from steerlib.errors import ConfigError, DataError
from steerlib.layers import get_decoder_layers

__all__ = [
    "ResidualActivations",
    "capture_residuals",
    "last_n_mask",
    "texts_sha256",
]


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (order matters), for provenance."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def last_n_mask(attention_mask: torch.Tensor, last_n: int) -> torch.Tensor:
    """Float mask of the last ``last_n`` real tokens of each row.

    Args:
        attention_mask: ``(batch, seq)`` tensor of 1 (token) and 0 (padding), left or right
            padded.
        last_n: Window length; rows with fewer real tokens use all of them.

    Returns:
        ``(batch, seq)`` float tensor with 1 where a position is pooled.

    Example:
        >>> last_n_mask(torch.tensor([[0, 1, 1, 1]]), 2).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """
    real = attention_mask.to(torch.long)
    from_end = real.flip(-1).cumsum(-1).flip(-1)  # 1 at the last real token, 2 before it, ...
    return ((real == 1) & (from_end <= last_n)).to(torch.float32)


@dataclass
class ResidualActivations:
    """Pooled residual-stream activations of a set of texts.

    Attributes:
        pooled: ``(n_texts, n_layers, hidden)`` float32 tensor, on the CPU.
        token_norm: ``(n_texts, n_layers)`` mean L2 norm of the pooled token activations.
        layers: Layer index of each entry of dimension 1.
        last_n: Pooling window.
        provenance: Where the activations came from (model, texts hash, ...).
    """

    pooled: torch.Tensor
    token_norm: torch.Tensor
    layers: list[int]
    last_n: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def mean(self) -> torch.Tensor:
        """Mean pooled activation per layer, ``(n_layers, hidden)``."""
        return self.pooled.mean(dim=0)

    def mean_norms(self) -> dict[int, float]:
        """Mean residual-stream norm per layer (the unit of ``units="norm"`` steering)."""
        means = self.token_norm.mean(dim=0)
        return {layer: float(means[i]) for i, layer in enumerate(self.layers)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as safetensors with the provenance in its metadata and a JSON sidecar."""
        meta = {**self.provenance, "layers": self.layers, "last_n": self.last_n}
        tensors = {"pooled": self.pooled.contiguous(), "token_norm": self.token_norm.contiguous()}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ResidualActivations:
        """Load activations written by :meth:`save` (safetensors only; nothing is unpickled)."""
        tensors, meta = load_tensors(path, "activations")
        layers = [int(x) for x in meta.pop("layers")]
        last_n = int(meta.pop("last_n"))
        return cls(tensors["pooled"], tensors["token_norm"], layers, last_n, meta)


@torch.inference_mode()
def capture_residuals(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    last_n: int = 32,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = True,
    layers_attribute: str | None = None,
) -> ResidualActivations:
    """Residual stream after every decoder layer, mean-pooled over the last ``last_n`` tokens.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (any padding side).
        texts: Texts to encode; each is truncated on the left to ``max_length`` tokens so its
            end, which is pooled, is kept.
        last_n: Pooling window (32 in the reference experiment).
        batch_size: Texts per forward pass.
        max_length: Longest tokenized text.
        progress: Show a tqdm progress bar.
        layers_attribute: Dotted path of the layer list for unusual model layouts.

    Returns:
        :class:`ResidualActivations` with one row per text.

    Example:
        >>> acts = capture_residuals(model, tokenizer, ["You idiot"], last_n=32)  # doctest: +SKIP
        >>> acts.pooled.shape  # doctest: +SKIP
        torch.Size([1, 30, 576])
    """
    if not texts:
        raise DataError("capture_residuals got no texts.")
    if last_n < 1:
        raise ConfigError(f"last_n must be at least 1, got {last_n}.")
    modules = get_decoder_layers(model, layers_attribute)
    device = next(model.parameters()).device
    n_layers = len(modules)
    pooled_batches: list[torch.Tensor] = []
    norm_batches: list[torch.Tensor] = []
    current: dict[str, torch.Tensor] = {}
    pooled_now: list[torch.Tensor | None] = [None] * n_layers
    norm_now: list[torch.Tensor | None] = [None] * n_layers

    def make_hook(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            hidden = (output[0] if isinstance(output, tuple) else output).float()
            weights = current["weights"].to(hidden.device)
            counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
            pooled_now[index] = ((hidden * weights.unsqueeze(-1)).sum(dim=1) / counts).cpu()
            norms = hidden.norm(dim=-1)
            norm_now[index] = ((norms * weights).sum(dim=1) / counts.squeeze(1)).cpu()

        return hook

    old_side = tokenizer.truncation_side
    handles = [modules[i].register_forward_hook(make_hook(i)) for i in range(n_layers)]
    try:
        tokenizer.truncation_side = "left"
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="activations", disable=not progress, leave=False):
            batch = list(texts[start : start + batch_size])
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length
            ).to(device)
            current["weights"] = last_n_mask(enc["attention_mask"], last_n)
            model(**enc, use_cache=False)
            pooled_batches.append(torch.stack(pooled_now, dim=1))  # type: ignore[arg-type]
            norm_batches.append(torch.stack(norm_now, dim=1))  # type: ignore[arg-type]
    finally:
        tokenizer.truncation_side = old_side
        for handle in handles:
            handle.remove()
    provenance = {
        "n_texts": len(texts),
        "texts_sha256": texts_sha256(texts),
        "pooling": "mean_last_n",
    }
    return ResidualActivations(
        pooled=torch.cat(pooled_batches),
        token_norm=torch.cat(norm_batches),
        layers=list(range(n_layers)),
        last_n=last_n,
        provenance=provenance,
    )
